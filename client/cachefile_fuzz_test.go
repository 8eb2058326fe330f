package client

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"
)

// FuzzCacheFile feeds the cache file reader arbitrary files, and arbitrary
// bodies sealed under the right key (what only a holder of the client's
// credentials could write): neither may panic, and whatever is accepted
// stays within the bounds.
func FuzzCacheFile(f *testing.F) {
	p := mustPKI(f)
	cfg := DefaultConfig()
	cfg.Endpoints, cfg.TLS = []string{"127.0.0.1:1"}, p.clientTLS
	cfg.CacheFile = filepath.Join(f.TempDir(), "cache")
	c, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	file := c.cache.file

	pol, _ := json.Marshal(fileBody{Identity: file.identity, CertHash: file.certHash})
	f.Add([]byte(cacheFileMagic+"\x01"), false)
	f.Add(pol, true)
	f.Add([]byte(`{"identity":"x","entries":[{"gkid":"a","material":"AAAA"}]}`), true)
	f.Fuzz(func(t *testing.T, data []byte, sealBody bool) {
		raw := data
		if sealBody {
			hdr := append([]byte(cacheFileMagic), cacheFileVersion)
			sealed, err := sealWith(file.aead, data, hdr)
			if err != nil {
				t.Fatal(err)
			}
			raw = append(hdr, sealed...)
		}
		body, err := file.open(raw)
		if err != nil {
			return
		}
		kc, err := newKeyCache(time.Now)
		if err != nil {
			t.Fatal(err)
		}
		kc.file = file
		if err := kc.restore(body); err != nil {
			return
		}
		if kc.lru.Len() > kc.limit() {
			t.Fatalf("%d entries restored, limit %d", kc.lru.Len(), kc.limit())
		}
	})
}
