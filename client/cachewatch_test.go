package client

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func isCached(c *Client, gkid string) bool {
	c.cache.mu.Lock()
	defer c.cache.mu.Unlock()
	el, ok := c.cache.entries[gkid]
	return ok && el.Value.(*cacheEntry).dead == ""
}

func cachedCount(c *Client) int {
	c.cache.mu.Lock()
	defer c.cache.mu.Unlock()
	return len(c.cache.entries)
}

func TestCacheWatch_Events(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", nil)
	c := mustClient(t, p, nil, srv.addr)
	for _, g := range []string{"a", "b", "c"} {
		mustGetKey(t, c, g)
	}
	eventually(t, "the watch stream", func() bool { return srv.cacheSvc.watching() == 1 })

	srv.cacheSvc.push(&cofferv1.CacheEvent{Event: &cofferv1.CacheEvent_DropKey{DropKey: "a"}})
	eventually(t, "drop_key", func() bool { return !isCached(c, "a") })
	if !isCached(c, "b") || !isCached(c, "c") {
		t.Fatal("drop_key dropped other keys")
	}
	if n := getN(t, c, srv, "a", 1); n != 1 {
		t.Fatal("dropped key served from the cache")
	}

	stricter := permissivePolicy()
	stricter.MaxEntries = 1
	srv.cacheSvc.push(&cofferv1.CacheEvent{Event: &cofferv1.CacheEvent_Policy{Policy: stricter}})
	eventually(t, "the policy event", func() bool { return c.CachePolicy().GetMaxEntries() == 1 })
	if n := cachedCount(c); n > 1 {
		t.Fatalf("%d entries under max_entries 1", n)
	}

	mustGetKey(t, c, "d")
	srv.cacheSvc.push(&cofferv1.CacheEvent{Event: &cofferv1.CacheEvent_DropAll{DropAll: true}})
	eventually(t, "drop_all", func() bool { return cachedCount(c) == 0 })
	if c.cache.seq() != 3 {
		t.Fatalf("last seq %d, want 3", c.cache.seq())
	}
	// Close stops the stream.
	_ = c.Close()
	eventually(t, "the stream to end", func() bool { return srv.cacheSvc.watching() == 0 })
}

// TestCacheWatch_Resumes: when the node of the stream goes, the client
// watches another, after the last event it applied.
func TestCacheWatch_Resumes(t *testing.T) {
	p := mustPKI(t)
	n1 := mustCacheServer(t, p, "n1", nil)
	n2 := mustCacheServer(t, p, "n2", nil)
	c := mustClient(t, p, nil, n1.addr, n2.addr)
	mustGetKey(t, c, "a")
	var w, other *fakeServer
	eventually(t, "the watch stream", func() bool {
		switch {
		case n1.cacheSvc.watching() == 1:
			w, other = n1, n2
		case n2.cacheSvc.watching() == 1:
			w, other = n2, n1
		}
		return w != nil
	})
	w.cacheSvc.push(&cofferv1.CacheEvent{Event: &cofferv1.CacheEvent_DropKey{DropKey: "x"}})
	w.cacheSvc.push(&cofferv1.CacheEvent{Event: &cofferv1.CacheEvent_DropKey{DropKey: "a"}})
	eventually(t, "the events", func() bool { return c.cache.seq() == 2 })
	w.srv.Stop()
	eventually(t, "a stream to the other node after seq 2", func() bool {
		other.cacheSvc.mu.Lock()
		defer other.cacheSvc.mu.Unlock()
		return slices.Contains(other.cacheSvc.afterSeqs, 2)
	})
}

// TestCacheWatch_RefreshDropsOlderGeneration: the periodic refresh applies
// a new policy; a higher generation (FlushCaches) drops everything.
func TestCacheWatch_RefreshDropsOlderGeneration(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", nil)
	c := mustClient(t, p, nil, srv.addr)
	c.gov.interval = 20 * time.Millisecond
	mustGetKey(t, c, "a")
	if !isCached(c, "a") {
		t.Fatal("not cached")
	}
	flushed := permissivePolicy()
	flushed.Generation = 2
	srv.cacheSvc.setPolicy(flushed)
	eventually(t, "the refreshed policy", func() bool { return c.CachePolicy().GetGeneration() == 2 })
	if isCached(c, "a") {
		t.Fatal("key of an older generation kept")
	}
	mustGetKey(t, c, "a")
	if !isCached(c, "a") {
		t.Fatal("not cached under the new generation")
	}
}

// TestCacheWatch_DropsReachTheFile: a dropped key is gone from the file
// too, and drop_all removes the file.
func TestCacheWatch_DropsReachTheFile(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", persistPolicy(nil))
	path := filepath.Join(t.TempDir(), "cache")
	c := mustClient(t, p, withCacheFile(path, nil), srv.addr)
	mustGetKey(t, c, "a")
	mustGetKey(t, c, "b")
	eventually(t, "the watch stream", func() bool { return srv.cacheSvc.watching() == 1 })
	srv.cacheSvc.push(&cofferv1.CacheEvent{Event: &cofferv1.CacheEvent_DropKey{DropKey: "a"}})
	eventually(t, "drop_key", func() bool { return !isCached(c, "a") })
	_ = c.Close()

	r := mustClient(t, p, withCacheFile(path, nil), srv.addr)
	if r.cache.seq() != 1 {
		t.Fatalf("the file's watch seq is %d, want 1", r.cache.seq())
	}
	if isCached(r, "a") || !isCached(r, "b") {
		t.Fatal("the file does not reflect drop_key")
	}
	eventually(t, "the watch stream", func() bool { mustGetKey(t, r, "b"); return srv.cacheSvc.watching() == 1 })
	srv.cacheSvc.push(&cofferv1.CacheEvent{Event: &cofferv1.CacheEvent_DropAll{DropAll: true}})
	eventually(t, "drop_all", func() bool {
		_, err := os.Stat(path)
		return cachedCount(r) == 0 && errors.Is(err, os.ErrNotExist)
	})
}
