package client

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// mustCacheServer is a fake node whose keys' own cache policy allows an
// hour and 100 keys, with client policy pol (nil: the permissive default).
func mustCacheServer(t testing.TB, p *testPKI, name string, pol *cofferv1.ClientCachePolicy) *fakeServer {
	t.Helper()
	srv := mustServer(t, p, name)
	srv.mu.Lock()
	srv.cachePolicy = &cofferv1.KeyCachePolicy{Cacheable: true, Ttl: durationpb.New(time.Hour), MaxKeys: 100}
	srv.mu.Unlock()
	if pol != nil {
		srv.cacheSvc.setPolicy(pol)
	}
	return srv
}

// offlineClient is a client that gives up on an unreachable node quickly.
func offlineClient(extra func(*Config)) func(*Config) {
	return func(c *Config) {
		c.MaxAttempts, c.RetryDeadline, c.Cooldown = 2, 2*time.Second, 0
		if extra != nil {
			extra(c)
		}
	}
}

func fetches(srv *fakeServer) int {
	n := 0
	for _, c := range srv.seen() {
		if c.method == "GetKey" {
			n++
		}
	}
	return n
}

func mustGetKey(t *testing.T, c *Client, gkid string) *cofferv1.GetKeyResponse {
	t.Helper()
	resp, err := c.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: gkid})
	if err != nil {
		t.Fatalf("GetKey %s: %v", gkid, err)
	}
	if len(resp.GetMaterial()) != 32 || resp.GetKey().GetGkid() != gkid {
		t.Fatalf("GetKey %s: %v", gkid, resp)
	}
	return resp
}

// getN gets gkid n times and returns how many of them reached the node.
func getN(t *testing.T, c *Client, srv *fakeServer, gkid string, n int) int {
	t.Helper()
	before := fetches(srv)
	for range n {
		mustGetKey(t, c, gkid)
	}
	return fetches(srv) - before
}

func policyWith(fn func(*cofferv1.ClientCachePolicy)) *cofferv1.ClientCachePolicy {
	p := permissivePolicy()
	fn(p)
	return p
}

func TestCache_PolicyFetchedBeforeCaching(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", nil)
	c := mustClient(t, p, nil, srv.addr)
	if c.CachePolicy() != nil {
		t.Fatal("policy known before any call")
	}
	if n := getN(t, c, srv, "g1", 5); n != 1 {
		t.Fatalf("%d fetches for 5 gets, want 1", n)
	}
	if got := c.CachePolicy(); got.GetMaxEntries() != 100 || got.GetGeneration() != 1 {
		t.Fatalf("CachePolicy = %v", got)
	}
	if n := srv.cacheSvc.getCount(); n != 1 {
		t.Fatalf("GetCachePolicy called %d times", n)
	}
	// A key whose own policy does not allow caching never asks.
	srv.mu.Lock()
	srv.cachePolicy = nil
	srv.mu.Unlock()
	if n := getN(t, c, srv, "g2", 2); n != 2 {
		t.Fatalf("uncacheable key: %d fetches for 2 gets", n)
	}
}

// TestCache_NoPolicyNoCache: a node without CacheService (Unimplemented):
// nothing is cached, and the policy is not asked for on every call.
func TestCache_NoPolicyNoCache(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", nil)
	srv.cacheSvc.setPolicy(nil)
	c := mustClient(t, p, offlineClient(nil), srv.addr)
	if n := getN(t, c, srv, "g1", 3); n != 3 {
		t.Fatalf("%d fetches for 3 gets, want 3 (nothing cached)", n)
	}
	if c.CachePolicy() != nil {
		t.Fatal("a policy without CacheService")
	}
	if n := srv.cacheSvc.getCount(); n != 1 {
		t.Fatalf("GetCachePolicy asked %d times, want once per refresh interval", n)
	}
	// Offline, the error is the call's alone: there is no cache in use.
	srv.setFail(unavailable)
	ctx := testCtx(t)
	_, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g1"})
	if errors.Is(err, ErrCacheMiss) || status.Code(err) != codes.Unavailable {
		t.Fatalf("offline without a cache in use: %v", err)
	}
}

func TestCache_ClientPolicyApplied(t *testing.T) {
	for _, tc := range []struct {
		name string
		pol  *cofferv1.ClientCachePolicy
		run  func(t *testing.T, c *Client, srv *fakeServer, clk *fakeClock)
	}{
		{"ttl0", policyWith(func(p *cofferv1.ClientCachePolicy) { p.Ttl = durationpb.New(0) }),
			func(t *testing.T, c *Client, srv *fakeServer, _ *fakeClock) {
				if n := getN(t, c, srv, "g", 3); n != 3 {
					t.Fatalf("client TTL 0: %d fetches for 3 gets", n)
				}
			}},
		{"shorter-ttl-wins", policyWith(func(p *cofferv1.ClientCachePolicy) { p.Ttl = durationpb.New(time.Minute) }),
			func(t *testing.T, c *Client, srv *fakeServer, clk *fakeClock) {
				if n := getN(t, c, srv, "g", 2); n != 1 {
					t.Fatalf("%d fetches", n)
				}
				clk.advance(61 * time.Second) // the key's own TTL is an hour
				if n := getN(t, c, srv, "g", 1); n != 1 {
					t.Fatal("served past the client policy's TTL")
				}
			}},
		{"max-entries", policyWith(func(p *cofferv1.ClientCachePolicy) { p.MaxEntries = 2 }),
			func(t *testing.T, c *Client, srv *fakeServer, _ *fakeClock) {
				for _, g := range []string{"a", "b", "c"} {
					mustGetKey(t, c, g)
				}
				if n := getN(t, c, srv, "c", 1) + getN(t, c, srv, "b", 1); n != 0 {
					t.Fatal("recent keys not cached")
				}
				if n := getN(t, c, srv, "a", 1); n != 1 {
					t.Fatal("cache grew past max_entries")
				}
			}},
		{"max-uses", policyWith(func(p *cofferv1.ClientCachePolicy) { p.MaxUses = 2 }),
			func(t *testing.T, c *Client, srv *fakeServer, _ *fakeClock) {
				// fetch, hit, hit, fetch (exhausted: dropped and fetched again), hit.
				if n := getN(t, c, srv, "g", 5); n != 2 {
					t.Fatalf("max_uses 2: %d fetches for 5 gets, want 2", n)
				}
			}},
		{"get-not-allowed", policyWith(func(p *cofferv1.ClientCachePolicy) { p.AllowedOperations = []string{"encrypt", "decrypt"} }),
			func(t *testing.T, c *Client, srv *fakeServer, _ *fakeClock) {
				if n := getN(t, c, srv, "g", 3); n != 3 {
					t.Fatalf("\"get\" not allowed: %d fetches for 3 gets", n)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustPKI(t)
			srv := mustCacheServer(t, p, "n1", tc.pol)
			c := mustClient(t, p, nil, srv.addr)
			clk := newFakeClock()
			c.now = clk.Now
			tc.run(t, c, srv, clk)
		})
	}
}

// TestCache_Offline: with every node down, GetKey serves cached keys within
// policy, and fails with a clear error once the cache cannot serve.
func TestCache_Offline(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", policyWith(func(p *cofferv1.ClientCachePolicy) { p.Ttl = durationpb.New(10 * time.Minute) }))
	c := mustClient(t, p, offlineClient(nil), srv.addr)
	clk := newFakeClock()
	c.now = clk.Now
	want := mustGetKey(t, c, "g1")
	srv.srv.Stop()

	for range 3 {
		if got := mustGetKey(t, c, "g1"); !bytes.Equal(got.GetMaterial(), want.GetMaterial()) {
			t.Fatal("offline hit returned other material")
		}
	}
	_, err := c.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: "never"})
	if !errors.Is(err, ErrCacheMiss) || status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not cached") {
		t.Fatalf("uncached key offline: %v", err)
	}
	clk.advance(11 * time.Minute)
	_, err = c.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: "g1"})
	var ce *Error
	if !errors.Is(err, ErrCacheMiss) || !errors.As(err, &ce) || !strings.Contains(err.Error(), "expired at") || !strings.Contains(err.Error(), "could not be fetched") {
		t.Fatalf("expired key offline: %v", err)
	}
	t.Logf("offline error: %v", err)
}

// TestCache_OfflineEncryptDecrypt: with "encrypt" and "decrypt" allowed, a
// cached key encrypts and decrypts locally only while no node answers, in
// the service's format both ways.
func TestCache_OfflineEncryptDecrypt(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", policyWith(func(p *cofferv1.ClientCachePolicy) {
		p.AllowedOperations = []string{"get", "encrypt", "decrypt"}
	}))
	c := mustClient(t, p, offlineClient(nil), srv.addr)
	ctx := testCtx(t)
	encCtx := map[string]string{"tenant": "acme"}
	mustGetKey(t, c, "g1")

	// Online: the node does the work.
	onlineCT, err := c.EncryptBytes(ctx, "g1", []byte("from the node"), encCtx)
	if err != nil {
		t.Fatal(err)
	}
	if n := countMethod(srv, "Encrypt"); n != 1 {
		t.Fatalf("online EncryptBytes did not reach the node (%d)", n)
	}

	srv.setFail(unavailable)
	pt, err := c.DecryptBytes(ctx, onlineCT, encCtx)
	if err != nil || string(pt) != "from the node" {
		t.Fatalf("offline decrypt of the node's ciphertext: %q %v", pt, err)
	}
	if _, err := c.DecryptBytes(ctx, onlineCT, map[string]string{"tenant": "other"}); err == nil {
		t.Fatal("offline decrypt with another context succeeded")
	}
	localCT, err := c.EncryptBytes(ctx, "g1", []byte("from the client"), encCtx)
	if err != nil {
		t.Fatalf("offline encrypt: %v", err)
	}
	if _, err := c.EncryptBytes(ctx, "g-uncached", []byte("x"), nil); !errors.Is(err, ErrCacheMiss) || status.Code(err) != codes.Unavailable {
		t.Fatalf("offline encrypt with an uncached key: %v", err)
	}

	srv.setFail(nil)
	before := countMethod(srv, "Decrypt")
	pt, err = c.DecryptBytes(ctx, localCT, encCtx)
	if err != nil || string(pt) != "from the client" || countMethod(srv, "Decrypt") != before+1 {
		t.Fatalf("the node's decrypt of a local ciphertext: %q %v", pt, err)
	}
}

// TestCache_OfflineEncryptNotAllowed: without "encrypt" in the policy a
// cached key does not encrypt offline, and the error is the call's.
func TestCache_OfflineEncryptNotAllowed(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", nil)
	c := mustClient(t, p, offlineClient(nil), srv.addr)
	mustGetKey(t, c, "g1")
	srv.setFail(unavailable)
	_, err := c.EncryptBytes(testCtx(t), "g1", []byte("x"), nil)
	var ce *Error
	if errors.Is(err, ErrCacheMiss) || !errors.As(err, &ce) || status.Code(err) != codes.Unavailable {
		t.Fatalf("offline encrypt without \"encrypt\" allowed: %v", err)
	}
	// Other failures are not the cache's business.
	srv.setFail(func(context.Context, string) error { return status.Error(codes.PermissionDenied, "no") })
	if _, err := c.EncryptBytes(testCtx(t), "g1", []byte("x"), nil); errors.Is(err, ErrCacheMiss) || status.Code(err) != codes.PermissionDenied {
		t.Fatalf("PermissionDenied: %v", err)
	}
}

func countMethod(srv *fakeServer, method string) int {
	n := 0
	for _, c := range srv.seen() {
		if c.method == method {
			n++
		}
	}
	return n
}
