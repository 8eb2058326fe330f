package client

import (
	"bytes"
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/transport"
)

func persistPolicy(fn func(*cofferv1.ClientCachePolicy)) *cofferv1.ClientCachePolicy {
	return policyWith(func(p *cofferv1.ClientCachePolicy) {
		p.Persist = true
		p.AllowedOperations = []string{"get", "encrypt", "decrypt"}
		if fn != nil {
			fn(p)
		}
	})
}

func withCacheFile(path string, extra func(*Config)) func(*Config) {
	return offlineClient(func(c *Config) {
		c.CacheFile = path
		if extra != nil {
			extra(c)
		}
	})
}

// mustPersisted runs a client that caches gkids into path, then closes it.
func mustPersisted(t *testing.T, p *testPKI, srv *fakeServer, path string, gkids ...string) {
	t.Helper()
	c := mustClient(t, p, withCacheFile(path, nil), srv.addr)
	for _, g := range gkids {
		mustGetKey(t, c, g)
	}
	if err := c.CacheFileError(); err != nil {
		t.Fatalf("CacheFileError: %v", err)
	}
	_ = c.Close()
}

func TestCacheFile_PersistsAcrossClients(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", persistPolicy(nil))
	path := filepath.Join(t.TempDir(), "cache")
	mustPersisted(t, p, srv, path, "g1", "g2")

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file mode %v", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	if !bytes.HasPrefix(raw, []byte(cacheFileMagic)) || bytes.Contains(raw, []byte(`"g1"`)) {
		t.Fatal("cache file not in its encrypted format")
	}

	c := mustClient(t, p, withCacheFile(path, nil), srv.addr)
	if err := c.CacheFileError(); err != nil {
		t.Fatalf("CacheFileError: %v", err)
	}
	if !c.CachePolicy().GetPersist() {
		t.Fatalf("the file's policy not in force: %v", c.CachePolicy())
	}
	if n := getN(t, c, srv, "g1", 2) + getN(t, c, srv, "g2", 1); n != 0 {
		t.Fatalf("%d fetches of keys the file holds", n)
	}

	// Without persist in the policy, nothing is written (and a file
	// already there is removed once the policy says so).
	srv.cacheSvc.setPolicy(permissivePolicy())
	c.gov.confirmed.Store(false)
	c.applyCachePolicy(permissivePolicy())
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file kept after persist was turned off: %v", err)
	}
}

// TestCacheFile_Refused: a file that was altered, had entries swapped, or
// was written with other credentials is refused: the client starts empty,
// says why, and overwrites it.
func TestCacheFile_Refused(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", persistPolicy(nil))
	dir := t.TempDir()

	otherConf := p.issue(t, transport.Identity{Kind: transport.KindClient, Name: "other"})
	otherTLS, err := otherConf.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		change func(t *testing.T, path string) func(*Config)
		want   string
	}{
		{"bit-flip-header", flipAt(3), "not a Coffer cache file"},
		{"bit-flip-nonce", flipAt(cacheFileHeaderLen + 2), "does not authenticate"},
		{"bit-flip-body", flipAt(-100), "does not authenticate"},
		{"bit-flip-tag", flipAt(-1), "does not authenticate"},
		{"truncated", func(t *testing.T, path string) func(*Config) {
			raw, _ := os.ReadFile(path)
			if err := os.WriteFile(path, raw[:len(raw)-5], 0o600); err != nil {
				t.Fatal(err)
			}
			return nil
		}, "does not authenticate"},
		{"entries-swapped", func(t *testing.T, path string) func(*Config) {
			// Rewritten with this client's own key (as only a holder of
			// its credentials could): the entries' own binding still
			// refuses material moved to another GKID.
			c := mustClient(t, p, func(c *Config) { c.CacheFile = filepath.Join(dir, "scratch") }, srv.addr)
			f := c.cache.file
			f.path = path
			body, err := f.load()
			if err != nil || len(body.Entries) != 2 {
				t.Fatalf("load: %v", err)
			}
			body.Entries[0].Material, body.Entries[1].Material = body.Entries[1].Material, body.Entries[0].Material
			if err := f.write(body); err != nil {
				t.Fatal(err)
			}
			return nil
		}, "fails its integrity check"},
		{"other-client", func(t *testing.T, path string) func(*Config) {
			return func(c *Config) { c.TLS = otherTLS }
		}, "does not authenticate"},
		{"same-identity-other-certificate", func(t *testing.T, path string) func(*Config) {
			certPEM, keyPEM, err := p.cas[transport.KindClient].Issue(transport.IssueRequest{
				Identity: transport.Identity{Kind: transport.KindClient, Name: "tester"}, Validity: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			renewed := p.clientTLS.Clone()
			renewed.Certificates = []tls.Certificate{cert}
			return func(c *Config) { c.TLS = renewed }
		}, "does not authenticate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, tc.name)
			mustPersisted(t, p, srv, path, "g1", "g2")
			tweak := tc.change(t, path)
			c := mustClient(t, p, withCacheFile(path, tweak), srv.addr)
			err := c.CacheFileError()
			if !errors.Is(err, ErrCacheFile) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CacheFileError = %v, want ErrCacheFile saying %q", err, tc.want)
			}
			if c.CachePolicy() != nil {
				t.Fatal("policy taken from a refused file")
			}
			if n := getN(t, c, srv, "g1", 1); n != 1 {
				t.Fatal("key served from a refused file")
			}
			// The refused file was overwritten with this client's cache.
			again := mustClient(t, p, withCacheFile(path, tweak), srv.addr)
			if err := again.CacheFileError(); err != nil {
				t.Fatalf("the overwritten file: %v", err)
			}
		})
	}
}

// flipAt flips one bit at offset off (negative: from the end).
func flipAt(off int) func(t *testing.T, path string) func(*Config) {
	return func(t *testing.T, path string) func(*Config) {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if off < 0 {
			off += len(raw)
		}
		raw[off] ^= 0x10
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		return nil
	}
}

// opaqueSigner hides a private key behind crypto.Signer, as a token does.
type opaqueSigner struct{ crypto.Signer }

func TestCacheFile_KeyNotExportable(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", persistPolicy(nil))
	path := filepath.Join(t.TempDir(), "cache")
	tokenTLS := p.clientTLS.Clone()
	cert := tokenTLS.Certificates[0]
	cert.PrivateKey = opaqueSigner{cert.PrivateKey.(crypto.Signer)}
	tokenTLS.Certificates = []tls.Certificate{cert}

	cfg := DefaultConfig()
	cfg.Endpoints, cfg.TLS, cfg.CacheFile = []string{srv.addr}, tokenTLS, path
	if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "CacheFileKey") {
		t.Fatalf("non-exportable key without CacheFileKey: %v", err)
	}

	// An HMAC the token computes, here with a secret in memory.
	hmacKey := func(secret string) func([]byte) ([]byte, error) {
		return func(info []byte) ([]byte, error) {
			m := hmac.New(sha256.New, []byte(secret))
			m.Write(info)
			return m.Sum(nil), nil
		}
	}
	tweak := func(secret string) func(*Config) {
		return withCacheFile(path, func(c *Config) { c.TLS, c.CacheFileKey = tokenTLS, hmacKey(secret) })
	}
	c := mustClient(t, p, tweak("token secret"), srv.addr)
	mustGetKey(t, c, "g1")
	_ = c.Close()
	c = mustClient(t, p, tweak("token secret"), srv.addr)
	if err := c.CacheFileError(); err != nil {
		t.Fatal(err)
	}
	if n := getN(t, c, srv, "g1", 1); n != 0 {
		t.Fatal("the file written under CacheFileKey did not serve")
	}
	_ = c.Close()
	c = mustClient(t, p, tweak("another token"), srv.addr)
	if err := c.CacheFileError(); !errors.Is(err, ErrCacheFile) {
		t.Fatalf("file opened under another CacheFileKey: %v", err)
	}

	short := withCacheFile(path, func(c *Config) {
		c.TLS, c.CacheFileKey = tokenTLS, func([]byte) ([]byte, error) { return make([]byte, 16), nil }
	})
	cfg = DefaultConfig()
	cfg.Endpoints, cfg.TLS = []string{srv.addr}, tokenTLS
	short(&cfg)
	if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("16-byte CacheFileKey: %v", err)
	}
}

// TestCacheFile_OfflineAcrossRestart: with the node gone, a restarted
// client serves the file's keys within their expiry and the uses left: a
// crash or restart gives no uses back.
func TestCacheFile_OfflineAcrossRestart(t *testing.T) {
	p := mustPKI(t)
	srv := mustCacheServer(t, p, "n1", persistPolicy(func(p *cofferv1.ClientCachePolicy) {
		p.MaxUses = 100
		p.Ttl = durationpb.New(10 * time.Minute)
	}))
	path := filepath.Join(t.TempDir(), "cache")
	clk := newFakeClock()

	a := mustClient(t, p, withCacheFile(path, nil), srv.addr)
	a.now = clk.Now
	mustGetKey(t, a, "g1")
	mustGetKey(t, a, "g2")
	if n := getN(t, a, srv, "g1", 10); n != 0 {
		t.Fatal("not cached")
	}
	// What a crash would leave: the file as it is while a runs, with a
	// block of uses reserved.
	crashed := filepath.Join(t.TempDir(), "crashed")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crashed, data, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = a.Close() // writes the uses served, giving back the rest of the block
	srv.srv.Stop()

	serve := func(file string) (int, error) {
		b := mustClient(t, p, withCacheFile(file, nil), srv.addr)
		b.now = clk.Now
		defer b.Close()
		if err := b.CacheFileError(); err != nil {
			t.Fatal(err)
		}
		served := 0
		var err error
		for ; served < 200; served++ {
			if _, err = b.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: "g1"}); err != nil {
				break
			}
		}
		return served, err
	}
	// a crashed after 10 uses with a block of 16 reserved: 84 left.
	if served, err := serve(crashed); served != 100-int(reserveBlock(100)) || !errors.Is(err, ErrCacheMiss) || !strings.Contains(err.Error(), "max_uses") {
		t.Fatalf("after a crash: served %d uses, then %v", served, err)
	}
	// a closed after 10 uses: 90 left.
	if served, err := serve(path); served != 90 || !errors.Is(err, ErrCacheMiss) || !strings.Contains(err.Error(), "max_uses") {
		t.Fatalf("after Close: served %d uses, then %v", served, err)
	}

	c := mustClient(t, p, withCacheFile(path, nil), srv.addr)
	c.now = clk.Now
	if _, err := c.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: "g1"}); !errors.Is(err, ErrCacheMiss) {
		t.Fatalf("exhausted key served after a restart: %v", err)
	}
	mustGetKey(t, c, "g2")
	clk.advance(11 * time.Minute)
	if _, err := c.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: "g2"}); !errors.Is(err, ErrCacheMiss) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired key served offline: %v", err)
	}
	_ = c.Close()
	d := mustClient(t, p, withCacheFile(path, nil), srv.addr)
	d.now = clk.Now
	if _, err := d.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: "g2"}); !errors.Is(err, ErrCacheMiss) {
		t.Fatalf("expired key served after a restart: %v", err)
	}
}

// TestCacheFile_ConcurrentUses: hits from many goroutines on a persisted
// entry with max_uses serve exactly max_uses, reservations included.
func TestCacheFile_ConcurrentUses(t *testing.T) {
	p := mustPKI(t)
	const maxUses = 1000
	srv := mustCacheServer(t, p, "n1", persistPolicy(func(p *cofferv1.ClientCachePolicy) { p.MaxUses = maxUses }))
	path := filepath.Join(t.TempDir(), "cache")
	c := mustClient(t, p, withCacheFile(path, nil), srv.addr)
	mustGetKey(t, c, "g1")
	srv.srv.Stop()

	var served atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				if _, err := c.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: "g1"}); err == nil {
					served.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if served.Load() != maxUses {
		t.Fatalf("served %d uses, max_uses %d", served.Load(), maxUses)
	}
	if err := c.CacheFileError(); err != nil {
		t.Fatal(err)
	}
}

func TestCacheFile_Config(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Endpoints, cfg.TLS = []string{"a:1"}, mustPKI(t).clientTLS
	cfg.CacheFile, cfg.DisableKeyCache = "x", true
	if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("CacheFile with DisableKeyCache: %v", err)
	}
	cfg.DisableKeyCache = false
	cfg.TLS = &tls.Config{}
	if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("CacheFile without a client certificate: %v", err)
	}
}
