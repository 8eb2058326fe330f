package cluster

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	// memberlist binds TCP and UDP on the port: check both are free.
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		u, uerr := net.ListenPacket("udp", addr)
		_ = l.Close()
		if uerr == nil {
			_ = u.Close()
			return addr
		}
	}
	t.Fatal("no free port")
	return ""
}

func mustGossip(t *testing.T, id, site string, keys ...[]byte) *Gossip {
	t.Helper()
	g, err := StartGossip(GossipConfig{BindAddr: freeAddr(t), Keys: keys}, Meta{ID: id, Site: site, APIAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2", Role: "none"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

// Members with the cluster's key find each other and see each other's
// metadata; a node with another key cannot join; metadata updates spread.
func TestGossip_JoinWithKeyOnly(t *testing.T) {
	key := bytes.Repeat([]byte{7}, GossipKeyLen)
	a := mustGossip(t, "n1", "a", key)
	b := mustGossip(t, "n2", "b", key)
	if err := b.Join([]string{a.ml.LocalNode().Address()}); err != nil {
		t.Fatal(err)
	}
	waitMembers(t, a, map[string]string{"n1": "a", "n2": "b"})

	wrong := mustGossip(t, "n9", "c", bytes.Repeat([]byte{8}, GossipKeyLen))
	if err := wrong.Join([]string{a.ml.LocalNode().Address()}); !errors.Is(err, ErrJoin) {
		t.Fatalf("join with another key: %v; want ErrJoin", err)
	}
	for _, m := range a.Members() {
		if m.ID == "n9" {
			t.Fatal("a node with another key became a member")
		}
	}

	if err := b.SetMeta(Meta{ID: "n2", Site: "b", APIAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2", Role: "voter"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, m := range a.Members() {
			if m.ID == "n2" && m.Role == "voter" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("metadata update never reached n1: %+v", a.Members())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitMembers(t *testing.T, g *Gossip, want map[string]string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := map[string]string{}
		for _, m := range g.Members() {
			if m.State == "alive" {
				got[m.ID] = m.Site
			}
		}
		if len(got) == len(want) {
			ok := true
			for k, v := range want {
				ok = ok && got[k] == v
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("members %v, want %v", got, want)
		}
		select {
		case <-g.Changed():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func TestGossipConfig_Refuses(t *testing.T) {
	key := bytes.Repeat([]byte{7}, GossipKeyLen)
	for name, c := range map[string]GossipConfig{
		"no key":         {BindAddr: "127.0.0.1:0"},
		"short key":      {BindAddr: "127.0.0.1:0", Keys: [][]byte{key[:16]}},
		"bad bind":       {BindAddr: "nowhere", Keys: [][]byte{key}},
		"no advertise":   {BindAddr: "0.0.0.0:7946", Keys: [][]byte{key}},
		"name advertise": {BindAddr: "127.0.0.1:7946", AdvertiseAddr: "host:7946", Keys: [][]byte{key}},
	} {
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v; want ErrConfig", name, err)
		}
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gossip.key")
	key := bytes.Repeat([]byte{3}, GossipKeyLen)
	if err := WriteKeyFile(path, key); err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyFile(path, key); err == nil {
		t.Fatal("overwrote a key file")
	}
	got, err := ReadKeyFile(path)
	if err != nil || len(got) != 1 || !bytes.Equal(got[0], key) {
		t.Fatalf("read back %x, %v", got, err)
	}
	// A rotation: two keys, the first encrypts.
	two := filepath.Join(t.TempDir(), "two.key")
	next := bytes.Repeat([]byte{4}, GossipKeyLen)
	if err := os.WriteFile(two, []byte(base64.StdEncoding.EncodeToString(next)+"\n"+base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadKeyFile(two); err != nil || len(got) != 2 || !bytes.Equal(got[0], next) {
		t.Fatalf("two keys: %x, %v", got, err)
	}
	if err := os.WriteFile(two, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKeyFile(two); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("a bad line: %v", err)
	}
	if _, err := ReadKeyFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, ErrConfig) {
		t.Fatalf("missing file: %v", err)
	}
}

// During a key rotation nodes hold both keys in either order and still
// gossip; a node that holds only the retired key is left out.
func TestGossip_KeyRotation(t *testing.T) {
	oldKey, newKey := bytes.Repeat([]byte{1}, GossipKeyLen), bytes.Repeat([]byte{2}, GossipKeyLen)
	a := mustGossip(t, "n1", "a", oldKey, newKey)
	b := mustGossip(t, "n2", "b", newKey, oldKey)
	if err := b.Join([]string{a.ml.LocalNode().Address()}); err != nil {
		t.Fatal(err)
	}
	waitMembers(t, a, map[string]string{"n1": "a", "n2": "b"})
	c := mustGossip(t, "n3", "c", newKey)
	if err := c.Join([]string{b.ml.LocalNode().Address()}); err != nil {
		t.Fatal(err)
	}
	waitMembers(t, b, map[string]string{"n1": "a", "n2": "b", "n3": "c"})
}
