package transport

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestIdentity_StringURIParseRoundTrip(t *testing.T) {
	for _, id := range []Identity{
		{KindNode, "n1"},
		{KindClient, "admin"},
		{KindClient, "svc.payments_v2-eu"},
		{KindNode, strings.Repeat("a", MaxNameLen)},
	} {
		s := id.String()
		got, err := ParseIdentity(s)
		if err != nil || got != id {
			t.Fatalf("ParseIdentity(%q) = %v, %v; want %v", s, got, err, id)
		}
		u, err := url.Parse(id.URI().String())
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", id.URI(), err)
		}
		got, err = IdentityFromURI(u)
		if err != nil || got != id {
			t.Fatalf("IdentityFromURI(%q) = %v, %v; want %v", u, got, err, id)
		}
	}
	if got := (Identity{KindNode, "n1"}).String(); got != "node:n1" {
		t.Fatalf("String = %q", got)
	}
	if got := (Identity{KindClient, "admin"}).URI().String(); got != "coffer://client/admin" {
		t.Fatalf("URI = %q", got)
	}
}

func TestParseIdentity_Rejects(t *testing.T) {
	for _, s := range []string{
		"", "node", "node:", ":n1", "admin:x", "Node:n1", "node:n 1", "node:n/1",
		"node:n:1", "node:..", "node:.", "client:" + strings.Repeat("x", MaxNameLen+1),
		"node:é", "node:n1\x00",
	} {
		if id, err := ParseIdentity(s); !errors.Is(err, ErrInvalidIdentity) {
			t.Errorf("ParseIdentity(%q) = %v, %v; want ErrInvalidIdentity", s, id, err)
		}
	}
}

func TestIdentityFromURI_Rejects(t *testing.T) {
	for _, s := range []string{
		"spiffe://node/n1",
		"coffer://admin/x",
		"coffer://node/",
		"coffer://node",
		"coffer://node/a/b",
		"coffer://node/a%2Fb",
		"coffer://node:7201/n1",
		"coffer://u@node/n1",
		"coffer://node/n1?x=1",
		"coffer://node/n1?",
		"coffer://node/n1#f",
		"coffer:node/n1",
		"coffer:///n1",
		"coffer://NODE/n1",
	} {
		u, err := url.Parse(s)
		if err != nil {
			continue // not even a URL; certificates cannot carry it either
		}
		if id, err := IdentityFromURI(u); !errors.Is(err, ErrInvalidIdentity) {
			t.Errorf("IdentityFromURI(%q) = %v, %v; want ErrInvalidIdentity", s, id, err)
		}
	}
	if _, err := IdentityFromURI(nil); !errors.Is(err, ErrInvalidIdentity) {
		t.Errorf("IdentityFromURI(nil) = %v", err)
	}
}

func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{"node:n1", "client:admin", "node:", "x:y:z", "client:a.b_c-d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentity(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidIdentity) {
				t.Fatalf("error %v does not wrap ErrInvalidIdentity", err)
			}
			return
		}
		if id.String() != s {
			t.Fatalf("round trip %q -> %q", s, id.String())
		}
		u, err := url.Parse(id.URI().String())
		if err != nil {
			t.Fatalf("URI of %v does not parse: %v", id, err)
		}
		back, err := IdentityFromURI(u)
		if err != nil || back != id {
			t.Fatalf("URI round trip %v -> %v, %v", id, back, err)
		}
	})
}

func FuzzIdentityFromURI(f *testing.F) {
	for _, s := range []string{"coffer://node/n1", "coffer://client/a", "coffer://node/a/b", "coffer://node/%41"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		id, err := IdentityFromURI(u)
		if err != nil {
			if !errors.Is(err, ErrInvalidIdentity) {
				t.Fatalf("error %v does not wrap ErrInvalidIdentity", err)
			}
			return
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("accepted invalid identity %v: %v", id, err)
		}
		if got := id.URI().String(); !strings.EqualFold(got, u.String()) {
			t.Fatalf("accepted non-canonical URI %q (canonical %q)", u, got)
		}
	})
}
