package node

import (
	"bytes"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

func mustSoftwareKeystore(t *testing.T, master []byte) hsmwrap.Keystore {
	t.Helper()
	ks, err := hsmwrap.NewSoftwareFromKey(master)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// freeGossipAddr finds a loopback port free for TCP and UDP.
func freeGossipAddr(t *testing.T) string {
	t.Helper()
	for range 20 {
		addr := freeAddr(t)
		if u, err := net.ListenPacket("udp", addr); err == nil {
			_ = u.Close()
			return addr
		}
	}
	t.Fatal("no free gossip port")
	return ""
}

// withGossip gives every node of a test cluster gossip with one key.
func withGossip(t *testing.T, keyFile string) func(*Config) {
	return func(c *Config) {
		c.Gossip = GossipSettings{BindAddr: freeGossipAddr(t), KeyFile: keyFile}
	}
}

// joiner configures a node that joins tc over gossip; certFor is the
// identity its certificate carries (its own id, unless a test lies).
func (tc *testCluster) joiner(id, site, keyFile string, certFor string) Config {
	cfg := DefaultConfig()
	cfg.ID, cfg.Site = id, site
	cfg.APIAddr, cfg.RaftAddr = freeAddr(tc.t), freeAddr(tc.t)
	cfg.DataDir = filepath.Join(tc.dir, "join-"+id)
	// Joining through every member also joins the members' pools, which a
	// test cluster starts apart.
	var join []string
	for _, c := range tc.cfgs {
		join = append(join, c.Gossip.BindAddr)
	}
	cfg.Gossip = GossipSettings{BindAddr: freeGossipAddr(tc.t), KeyFile: keyFile, Join: join}
	cfg.TLS = tc.issue(transport.Identity{Kind: transport.KindNode, Name: certFor})
	return cfg
}

// TestNode_JoinOverGossip: a node started with only the gossip address of
// a member joins, is checked over mTLS, pinned with its site and addresses
// and added as a non-voter (three voters are enough), and serves reads; a
// node whose certificate names another id than it gossips is refused, and
// the refusal is audited; every change of the configuration is audited.
func TestNode_JoinOverGossip(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "gossip.key")
	if err := cluster.WriteKeyFile(keyFile, bytes.Repeat([]byte{9}, cluster.GossipKeyLen)); err != nil {
		t.Fatal(err)
	}
	tc := mustCluster(t, 3, withGossip(t, keyFile))
	gk := tc.mustGenerate(0, "join/app", "").GetGkid()

	cfg := tc.joiner("n4", "b", keyFile, "n4")
	ks := mustSoftwareKeystore(t, tc.masterKey)
	n4, err := New(cfg, ks, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n4.Close() })

	deadline := time.Now().Add(30 * time.Second)
	var srv raft.Server
	for {
		l := tc.waitLeader()
		for _, s := range tc.nodes[l].Raft().GetConfiguration().Configuration().Servers {
			if s.ID == "n4" {
				srv = s
			}
		}
		if srv.ID == "n4" && n4.FSM().AppliedIndex() >= tc.nodes[l].FSM().AppliedIndex() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n4 never joined and caught up: %+v", srv)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if srv.Suffrage != raft.Nonvoter || string(srv.Address) != cfg.RaftAddr {
		t.Fatalf("n4 in the configuration as %+v; want a non-voter at %s (three voters are enough)", srv, cfg.RaftAddr)
	}
	l := tc.waitLeader()
	rec := tc.nodes[l].FSM().NodePins()["n4"]
	if rec.GetSite() != "b" || rec.GetApiAddr() != n4.APIAddr() || rec.GetRaftAddr() != cfg.RaftAddr {
		t.Fatalf("n4's admission record %+v", rec)
	}
	// The joined node serves a linearizable, audited read.
	tlsConf, err := tc.issue(transport.Identity{Kind: transport.KindClient, Name: "app"}).ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := transport.Dial(n4.APIAddr(), tlsConf, testenv.Signing(t, tlsConf))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got, err := cofferv1.NewKeyServiceClient(conn).GetKey(ctxT(t), &cofferv1.GetKeyRequest{Gkid: gk})
	if err != nil || len(got.GetMaterial()) != 32 {
		t.Fatalf("get from n4: %v", err)
	}
	// The admission is in the pin's command; the configuration change is
	// recorded once the leader has seen it.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		entries, _, err := tc.nodes[l].FSM().AuditEntries(1, 100000, fsm.AuditFilter{Operation: "cluster.manage"})
		if err != nil {
			t.Fatal(err)
		}
		var admitted, added bool
		for _, e := range entries {
			admitted = admitted || (e.GetClient() == "node:n4" && strings.Contains(e.GetReason(), "admitted over gossip from site b"))
			added = added || (e.GetClient() == "node:n4" && strings.Contains(e.GetReason(), "added to the Raft configuration as a non-voter"))
		}
		if admitted && added {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("admission audited %v, configuration change audited %v", admitted, added)
		}
	}

	// A node with another gossip key never joins, and the members record
	// that its traffic did not decrypt.
	wrongKey, err := cluster.StartGossip(cluster.GossipConfig{BindAddr: freeGossipAddr(t), Keys: [][]byte{bytes.Repeat([]byte{7}, cluster.GossipKeyLen)}},
		cluster.Meta{ID: "n7", Site: "c", APIAddr: "127.0.0.1:1", RaftAddr: "127.0.0.1:2"})
	if err != nil {
		t.Fatal(err)
	}
	defer wrongKey.Close()
	if err := wrongKey.Join([]string{tc.cfgs[0].Gossip.BindAddr}); err == nil {
		t.Fatal("a node with another gossip key joined")
	}
	tc.waitDenied(0, doorJoin, "unauthenticated", "not encrypted with the cluster's gossip key")

	// A node that gossips the id n5 with a certificate for n6 is refused.
	liar := tc.joiner("n5", "c", keyFile, "n6")
	n5, err := New(liar, mustSoftwareKeystore(t, tc.masterKey), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n5.Close() })
	tc.waitDenied(tc.waitLeader(), doorJoin, "node:n5", "its certificate is node:n6")
	for _, s := range tc.nodes[tc.waitLeader()].Raft().GetConfiguration().Configuration().Servers {
		if s.ID == "n5" {
			t.Fatal("a node with another id's certificate was added")
		}
	}
}
