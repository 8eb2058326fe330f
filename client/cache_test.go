package client

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func cachedKey(gkid string, material []byte, cp *cofferv1.KeyCachePolicy, u *cofferv1.KeyUsePolicy) *cofferv1.GetKeyResponse {
	return &cofferv1.GetKeyResponse{Key: &cofferv1.KeyMetadata{Gkid: gkid, CachePolicy: cp, UsePolicy: u}, Material: material, Version: 1}
}

func mustKeyCache(t *testing.T, now *time.Time, p *cofferv1.ClientCachePolicy) *keyCache {
	t.Helper()
	c, err := newKeyCache(func() time.Time { return *now })
	if err != nil {
		t.Fatal(err)
	}
	if p != nil {
		c.setPolicy(p)
	}
	return c
}

func hit(c *keyCache, gkid string) bool {
	r, _ := c.get(gkid, cacheOpGet)
	return r != nil
}

func TestKeyCache(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	c := mustKeyCache(t, &now, permissivePolicy())
	pol := &cofferv1.KeyCachePolicy{Cacheable: true, Ttl: durationpb.New(time.Minute), MaxKeys: 2}
	m := bytes.Repeat([]byte{7}, 32)

	// Not cacheable: never kept.
	putNow(c, cachedKey("a", m, &cofferv1.KeyCachePolicy{Cacheable: false, Ttl: durationpb.New(time.Minute), MaxKeys: 9}, nil))
	putNow(c, cachedKey("b", m, nil, nil))
	if hit(c, "a") || hit(c, "b") {
		t.Fatal("non-cacheable key cached")
	}

	putNow(c, cachedKey("k1", m, pol, nil))
	r, miss := c.get("k1", cacheOpGet)
	if r == nil || !bytes.Equal(r.GetMaterial(), m) || r.GetKey().GetGkid() != "k1" || r.GetVersion() != 1 {
		t.Fatalf("cached key: %v %v", r, miss)
	}
	// Stored encrypted: the plaintext is not in the entry.
	e := c.entries["k1"].Value.(*cacheEntry)
	if bytes.Contains(e.sealed, m) {
		t.Fatal("cache holds plaintext material")
	}
	// Tampering is detected and the entry dropped.
	e.sealed[len(e.sealed)-1] ^= 1
	if r, miss := c.get("k1", cacheOpGet); r != nil || miss.why == "" {
		t.Fatalf("tampered entry served: %v %v", r, miss)
	}
	if _, ok := c.entries["k1"]; ok {
		t.Fatal("tampered entry kept")
	}
	// An entry moved to another GKID does not open.
	putNow(c, cachedKey("k2", m, pol, nil))
	c.entries["k3"] = c.entries["k2"]
	if r, miss := c.get("k3", cacheOpGet); r != nil || miss.why == "" {
		t.Fatal("entry moved to another gkid served")
	}

	// max_keys bounds the cache (oldest out first).
	putNow(c, cachedKey("x", m, pol, nil))
	putNow(c, cachedKey("y", m, pol, nil))
	putNow(c, cachedKey("z", m, pol, nil))
	if hit(c, "x") {
		t.Fatal("cache grew past max_keys")
	}
	if !hit(c, "z") {
		t.Fatal("newest key evicted")
	}
	// TTL, and the use policy's not_after when it comes first.
	putNow(c, cachedKey("short", m, pol, &cofferv1.KeyUsePolicy{NotAfter: timestamppb.New(now.Add(10 * time.Second))}))
	now = now.Add(20 * time.Second)
	if r, miss := c.get("short", cacheOpGet); r != nil || miss.why == "" {
		t.Fatal("key served past its not_after")
	}
	if !hit(c, "z") {
		t.Fatal("key dropped before its TTL")
	}
	now = now.Add(time.Minute)
	if _, miss := c.get("z", cacheOpGet); miss.why == "" || !bytes.Contains([]byte(miss.why), []byte("expired")) {
		t.Fatalf("key served past its TTL (%q)", miss.why)
	}
}

// TestKeyCache_ClientPolicy: a key is cached only as far as both policies
// allow it.
func TestKeyCache_ClientPolicy(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	m := bytes.Repeat([]byte{7}, 32)
	long := &cofferv1.KeyCachePolicy{Cacheable: true, Ttl: durationpb.New(time.Hour), MaxKeys: 100}

	// Unknown client policy: nothing cached.
	c := mustKeyCache(t, &now, nil)
	putNow(c, cachedKey("k", m, long, nil))
	if hit(c, "k") || c.lru.Len() != 0 {
		t.Fatal("cached without a client policy")
	}

	// Client TTL 0: nothing cacheable.
	p := permissivePolicy()
	p.Ttl = durationpb.New(0)
	c = mustKeyCache(t, &now, p)
	putNow(c, cachedKey("k", m, long, nil))
	if hit(c, "k") {
		t.Fatal("cached under a client TTL of 0")
	}

	// The shorter TTL wins: the client's here.
	p = permissivePolicy()
	p.Ttl = durationpb.New(time.Minute)
	c = mustKeyCache(t, &now, p)
	putNow(c, cachedKey("k", m, long, nil))
	if !hit(c, "k") {
		t.Fatal("not cached")
	}
	now = now.Add(61 * time.Second)
	if hit(c, "k") {
		t.Fatal("served past the client TTL")
	}

	// max_entries: the smaller bound.
	p = permissivePolicy()
	p.MaxEntries = 2
	c = mustKeyCache(t, &now, p)
	for _, g := range []string{"a", "b", "c"} {
		putNow(c, cachedKey(g, m, long, nil))
	}
	if hit(c, "a") || !hit(c, "b") || !hit(c, "c") || c.lru.Len() != 2 {
		t.Fatalf("max_entries 2: %d entries", c.lru.Len())
	}

	// max_uses: a hit is a use.
	p = permissivePolicy()
	p.MaxUses = 3
	c = mustKeyCache(t, &now, p)
	putNow(c, cachedKey("k", m, long, nil))
	for i := range 3 {
		if !hit(c, "k") {
			t.Fatalf("use %d refused", i+1)
		}
	}
	if _, miss := c.get("k", cacheOpGet); !bytes.Contains([]byte(miss.why), []byte("max_uses")) {
		t.Fatalf("fourth use: %q", miss.why)
	}

	// "get" not allowed: no hits (the key is still kept for encrypt).
	p = permissivePolicy()
	p.AllowedOperations = []string{"encrypt"}
	c = mustKeyCache(t, &now, p)
	putNow(c, cachedKey("k", m, long, nil))
	if hit(c, "k") {
		t.Fatal("get served though the policy does not allow it")
	}
	if r, _ := c.get("k", cacheOpEncrypt); r == nil {
		t.Fatal("encrypt not served")
	}

	// A stricter policy drops what it no longer allows; a higher
	// generation drops everything.
	p = permissivePolicy()
	c = mustKeyCache(t, &now, p)
	for _, g := range []string{"a", "b", "c"} {
		putNow(c, cachedKey(g, m, long, nil))
	}
	now = now.Add(10 * time.Minute)
	strict := permissivePolicy()
	strict.Ttl = durationpb.New(5 * time.Minute)
	strict.MaxEntries = 2
	c.setPolicy(strict)
	if c.lru.Len() != 0 {
		t.Fatalf("entries older than the new TTL kept: %d", c.lru.Len())
	}
	putNow(c, cachedKey("a", m, long, nil))
	putNow(c, cachedKey("b", m, long, nil))
	flushed := proto.CloneOf(strict)
	flushed.Generation = 2
	c.setPolicy(flushed)
	if c.lru.Len() != 0 {
		t.Fatal("entries of an older generation kept")
	}
}

func putNow(c *keyCache, r *cofferv1.GetKeyResponse) {
	c.mu.Lock()
	e := c.epoch
	c.mu.Unlock()
	c.put(r, e)
}

// TestKeyCache_StaleAnswerNotCached: a key fetched before a drop (or a
// policy change) is not cached after it: its answer may predate it.
func TestKeyCache_StaleAnswerNotCached(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	c := mustKeyCache(t, &now, permissivePolicy())
	long := &cofferv1.KeyCachePolicy{Cacheable: true, Ttl: durationpb.New(time.Hour), MaxKeys: 100}
	m := bytes.Repeat([]byte{7}, 32)
	_, miss := c.get("k", cacheOpGet) // the lookup before the fetch
	c.drop("k")                       // drop_key arrives while the fetch is in flight
	c.put(cachedKey("k", m, long, nil), miss.epoch)
	if hit(c, "k") {
		t.Fatal("an answer from before drop_key was cached")
	}
	_, miss = c.get("k", cacheOpGet)
	c.put(cachedKey("k", m, long, nil), miss.epoch)
	if !hit(c, "k") {
		t.Fatal("a fresh answer was not cached")
	}
}
