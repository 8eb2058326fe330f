package client

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// BenchmarkGetKey measures Client.GetKey against an in-process node over
// loopback mTLS gRPC: a cache hit (the key's cache policy allows caching:
// no round trip, the entry opened from the encrypted cache), and misses
// with the material sealed to the call (X25519, the hybrid KEM) and in the
// clear. The node side is a fake: the audit round of a real node is not in
// these figures.
func BenchmarkGetKey(b *testing.B) {
	p := mustPKI(b)
	srv := mustServer(b, p, "n1")
	srv.mu.Lock()
	srv.cachePolicy = &cofferv1.KeyCachePolicy{Cacheable: true, Ttl: durationpb.New(time.Hour), MaxKeys: 10}
	srv.mu.Unlock()
	ctx := context.Background()
	for _, c := range []struct {
		name string
		cfg  func(*Config)
	}{
		{"hit", nil},
		{"miss-sealed-x25519", func(c *Config) { c.DisableKeyCache = true }},
		{"miss-sealed-mlkem768x25519", func(c *Config) { c.DisableKeyCache, c.SealKEM = true, 0x647a }},
		{"miss-plain", func(c *Config) { c.DisableKeyCache, c.PlainKeys = true, true }},
	} {
		cl := mustClient(b, p, c.cfg, srv.addr)
		if _, err := cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				resp, err := cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"})
				if err != nil || len(resp.GetMaterial()) != 32 {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGetKeyCacheFile measures cache hits when the cache is kept in a
// file (Config.CacheFile, a persisting policy): without max_uses a hit
// writes nothing; with it, one hit per reserveBlock(max_uses) writes (and syncs)
// the file to reserve the next block of uses before serving.
func BenchmarkGetKeyCacheFile(b *testing.B) {
	p := mustPKI(b)
	srv := mustCacheServer(b, p, "n1", nil)
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		maxUses uint32
	}{
		{"hit", 0},
		{"hit-max-uses", 1<<32 - 1},
	} {
		srv.cacheSvc.setPolicy(persistPolicy(func(p *cofferv1.ClientCachePolicy) { p.MaxUses = c.maxUses }))
		cl := mustClient(b, p, func(cfg *Config) { cfg.CacheFile = filepath.Join(b.TempDir(), "cache") }, srv.addr)
		if _, err := cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				resp, err := cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"})
				if err != nil || len(resp.GetMaterial()) != 32 {
					b.Fatal(err)
				}
			}
		})
		if err := cl.CacheFileError(); err != nil {
			b.Fatal(err)
		}
	}
}
