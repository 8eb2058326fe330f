package client

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func cachedKey(gkid string, material []byte, cp *cofferv1.KeyCachePolicy, u *cofferv1.KeyUsePolicy) *cofferv1.GetKeyResponse {
	return &cofferv1.GetKeyResponse{Key: &cofferv1.KeyMetadata{Gkid: gkid, CachePolicy: cp, UsePolicy: u}, Material: material}
}

func TestKeyCache(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	c, err := newKeyCache(func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	pol := &cofferv1.KeyCachePolicy{Cacheable: true, Ttl: durationpb.New(time.Minute), MaxKeys: 2}
	m := bytes.Repeat([]byte{7}, 32)

	// Not cacheable: never kept.
	c.put(cachedKey("a", m, &cofferv1.KeyCachePolicy{Cacheable: false, Ttl: durationpb.New(time.Minute), MaxKeys: 9}, nil))
	c.put(cachedKey("b", m, nil, nil))
	if r, _ := c.get("a"); r != nil {
		t.Fatal("non-cacheable key cached")
	}

	c.put(cachedKey("k1", m, pol, nil))
	r, err := c.get("k1")
	if err != nil || r == nil || !bytes.Equal(r.GetMaterial(), m) || r.GetKey().GetGkid() != "k1" {
		t.Fatalf("cached key: %v %v", r, err)
	}
	// Stored encrypted: the plaintext is not in the entry.
	e := c.entries["k1"].Value.(*cacheEntry)
	if bytes.Contains(e.sealed, m) {
		t.Fatal("cache holds plaintext material")
	}
	// Tampering is detected and the entry dropped.
	e.sealed[len(e.sealed)-1] ^= 1
	if r, err := c.get("k1"); r != nil || err == nil {
		t.Fatalf("tampered entry served: %v %v", r, err)
	}
	if _, ok := c.entries["k1"]; ok {
		t.Fatal("tampered entry kept")
	}
	// An entry moved to another GKID does not open.
	c.put(cachedKey("k2", m, pol, nil))
	c.entries["k3"] = c.entries["k2"]
	if r, err := c.get("k3"); r != nil || err == nil {
		t.Fatal("entry moved to another gkid served")
	}

	// max_keys bounds the cache (oldest out first).
	c.put(cachedKey("x", m, pol, nil))
	c.put(cachedKey("y", m, pol, nil))
	c.put(cachedKey("z", m, pol, nil))
	if r, _ := c.get("x"); r != nil {
		t.Fatal("cache grew past max_keys")
	}
	if r, _ := c.get("z"); r == nil {
		t.Fatal("newest key evicted")
	}
	// TTL, and the use policy's not_after when it comes first.
	c.put(cachedKey("short", m, pol, &cofferv1.KeyUsePolicy{NotAfter: timestamppb.New(now.Add(10 * time.Second))}))
	now = now.Add(20 * time.Second)
	if r, _ := c.get("short"); r != nil {
		t.Fatal("key served past its not_after")
	}
	if r, _ := c.get("z"); r == nil {
		t.Fatal("key dropped before its TTL")
	}
	now = now.Add(time.Minute)
	if r, _ := c.get("z"); r != nil {
		t.Fatal("key served past its TTL")
	}
}
