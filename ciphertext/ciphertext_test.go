package ciphertext

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

const testGKID = "k1-q4zcmv2ypu-7x3kfm4r2dq6n5hwtjzscybvae"

var (
	key128 = seq(0x10, 16)
	key192 = seq(0x20, 24)
	key256 = seq(0x40, 32)
	testH  = Header{GKID: testGKID, KeyVersion: 7}
	testR  = "payments/db"
	testC  = map[string]string{"tenant": "acme", "purpose": "invoice", "env": "prod"}
)

// mustSeal is Seal that fails the test on error.
func mustSeal(t testing.TB, key []byte, h Header, resource string, ctx map[string]string, pt []byte) []byte {
	t.Helper()
	ct, err := Seal(key, h, resource, ctx, pt)
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return ct
}

// isOneOf reports whether err wraps one of targets.
func isOneOf(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

func TestRoundTrip(t *testing.T) {
	keys := []struct {
		name string
		key  []byte
	}{{"AES-128", key128}, {"AES-192", key192}, {"AES-256", key256}}
	contexts := []struct {
		name string
		ctx  map[string]string
	}{{"nil context", nil}, {"empty context", map[string]string{}}, {"three pairs", testC}}
	for _, k := range keys {
		for _, c := range contexts {
			for _, n := range []int{0, 1, 15, 16, 17, 1024} {
				t.Run(fmt.Sprintf("%s/%s/%d bytes", k.name, c.name, n), func(t *testing.T) {
					pt := seq(0x61, n)
					ct := mustSeal(t, k.key, testH, testR, c.ctx, pt)
					if len(ct) != n+Overhead(testGKID) {
						t.Fatalf("len = %d, want %d + %d", len(ct), n, Overhead(testGKID))
					}
					h, err := ParseHeader(ct)
					if err != nil || h != testH {
						t.Fatalf("ParseHeader = %+v, %v; want %+v", h, err, testH)
					}
					got, err := Open(k.key, testR, c.ctx, ct)
					if err != nil {
						t.Fatalf("Open: %v", err)
					}
					if got == nil || !bytes.Equal(got, pt) {
						t.Fatalf("Open = %q (nil %t), want %q", got, got == nil, pt)
					}
				})
			}
		}
	}
}

func TestSealDrawsFreshNonces(t *testing.T) {
	a := mustSeal(t, key256, testH, testR, testC, []byte("same"))
	b := mustSeal(t, key256, testH, testR, testC, []byte("same"))
	hl := headerFixedLen + len(testGKID)
	if bytes.Equal(a[hl:hl+nonceSize], b[hl:hl+nonceSize]) {
		t.Fatal("two seals used the same nonce")
	}
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext are equal")
	}
}

func TestOverhead(t *testing.T) {
	for _, gkid := range []string{"k", testGKID, strings.Repeat("z", MaxGKIDLen)} {
		if got, want := Overhead(gkid), 37+len(gkid); got != want {
			t.Errorf("Overhead(%d-byte GKID) = %d, want %d", len(gkid), got, want)
		}
		ct := mustSeal(t, key128, Header{GKID: gkid, KeyVersion: 1}, testR, nil, []byte("xyz"))
		if len(ct) != 3+Overhead(gkid) {
			t.Errorf("%d-byte GKID: ciphertext %d bytes, want %d", len(gkid), len(ct), 3+Overhead(gkid))
		}
	}
	if Overhead(testGKID) != 77 {
		t.Errorf("Overhead of a Coffer GKID = %d, want 77", Overhead(testGKID))
	}
}

func TestHeaderLimits(t *testing.T) {
	for _, h := range []Header{
		{GKID: "!", KeyVersion: 1},
		{GKID: "~", KeyVersion: ^uint32(0)},
		{GKID: strings.Repeat("a", MaxGKIDLen), KeyVersion: 1 << 31},
	} {
		ct := mustSeal(t, key128, h, testR, nil, nil)
		got, err := ParseHeader(ct)
		if err != nil || got != h {
			t.Errorf("ParseHeader(Seal(%+v)) = %+v, %v", h, got, err)
		}
		if _, err := Open(key128, testR, nil, ct); err != nil {
			t.Errorf("Open(Seal(%+v)): %v", h, err)
		}
	}
}

// TestEveryByteFlipFails changes every byte of a ciphertext in several ways.
func TestEveryByteFlipFails(t *testing.T) {
	ct := mustSeal(t, key256, testH, testR, testC, seq(0x30, 40))
	for i := range ct {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			bad := bytes.Clone(ct)
			bad[i] ^= mask
			pt, err := Open(key256, testR, testC, bad)
			if err == nil || pt != nil {
				t.Fatalf("byte %d ^ %#x: Open = %q, %v", i, mask, pt, err)
			}
			if !isOneOf(err, ErrAuthentication, ErrMalformed, ErrUnsupportedVersion) {
				t.Fatalf("byte %d ^ %#x: unexpected error %v", i, mask, err)
			}
		}
	}
}

func TestTruncationAndExtensionFail(t *testing.T) {
	ct := mustSeal(t, key128, testH, testR, testC, seq(0x30, 20))
	for n := range len(ct) {
		pt, err := Open(key128, testR, testC, ct[:n])
		if err == nil || pt != nil || !isOneOf(err, ErrAuthentication, ErrMalformed) {
			t.Fatalf("truncated to %d: Open = %q, %v", n, pt, err)
		}
		_, perr := ParseHeader(ct[:n])
		if n < len(ct)-len(seq(0x30, 20)) && !errors.Is(perr, ErrMalformed) {
			t.Fatalf("truncated to %d (inside header, nonce or tag): ParseHeader error %v", n, perr)
		}
	}
	for _, extra := range [][]byte{{0}, {0xff}, make([]byte, 16)} {
		if _, err := Open(key128, testR, testC, append(bytes.Clone(ct), extra...)); !errors.Is(err, ErrAuthentication) {
			t.Fatalf("extended by %d bytes: %v", len(extra), err)
		}
	}
}

// TestBindings opens one ciphertext with each input changed.
func TestBindings(t *testing.T) {
	ct := mustSeal(t, key256, testH, testR, testC, []byte("bound"))
	other256 := bytes.Clone(key256)
	other256[31] ^= 1
	withPair := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range testC {
			m[a] = b
		}
		if v == "\x00delete" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	cases := []struct {
		name     string
		key      []byte
		resource string
		ctx      map[string]string
		want     error // nil: must open
	}{
		{"same inputs", key256, testR, testC, nil},
		{"same context built in another order", key256, testR, map[string]string{"env": "prod", "purpose": "invoice", "tenant": "acme"}, nil},
		{"key differs in one bit", other256, testR, testC, ErrAuthentication},
		{"AES-128 key", key128, testR, testC, ErrAuthentication},
		{"first 16 bytes of the key", key256[:16], testR, testC, ErrAuthentication},
		{"15-byte key", key256[:15], testR, testC, ErrKey},
		{"no key", nil, testR, testC, ErrKey},
		{"other resource", key256, "payments/dc", testC, ErrAuthentication},
		{"resource prefix", key256, "payments", testC, ErrAuthentication},
		{"empty resource", key256, "", testC, ErrInvalidResource},
		{"value differs", key256, testR, withPair("env", "prod "), ErrAuthentication},
		{"value empty", key256, testR, withPair("env", ""), ErrAuthentication},
		{"extra pair", key256, testR, withPair("extra", "x"), ErrAuthentication},
		{"missing pair", key256, testR, withPair("env", "\x00delete"), ErrAuthentication},
		{"key renamed", key256, testR, map[string]string{"Env": "prod", "purpose": "invoice", "tenant": "acme"}, ErrAuthentication},
		{"nil context", key256, testR, nil, ErrAuthentication},
		{"invalid context", key256, testR, map[string]string{"": "x"}, ErrInvalidContext},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pt, err := Open(c.key, c.resource, c.ctx, ct)
			if c.want == nil {
				if err != nil || string(pt) != "bound" {
					t.Fatalf("Open = %q, %v; want success", pt, err)
				}
				return
			}
			if !errors.Is(err, c.want) || pt != nil {
				t.Fatalf("Open = %q, %v; want %v", pt, err, c.want)
			}
		})
	}
}

// TestAuthenticationErrorSaysNothing checks that every authentication
// failure reads the same, whichever input differed.
func TestAuthenticationErrorSaysNothing(t *testing.T) {
	ct := mustSeal(t, key128, testH, testR, testC, []byte("secret plaintext"))
	tampered := bytes.Clone(ct)
	tampered[len(tampered)-1] ^= 1
	var msgs []string
	for _, err := range []error{
		second(Open(key192, testR, testC, ct)),
		second(Open(key128, "other", testC, ct)),
		second(Open(key128, testR, nil, ct)),
		second(Open(key128, testR, testC, tampered)),
	} {
		if !errors.Is(err, ErrAuthentication) {
			t.Fatalf("want ErrAuthentication, got %v", err)
		}
		msgs = append(msgs, err.Error())
	}
	for _, m := range msgs[1:] {
		if m != msgs[0] {
			t.Fatalf("authentication errors differ: %q and %q", msgs[0], m)
		}
	}
}

func second(_ []byte, err error) error { return err }

// TestHeaderTamper rewrites header fields to other valid values; the result
// parses, names the new values, and does not open.
func TestHeaderTamper(t *testing.T) {
	ct := mustSeal(t, key256, testH, testR, testC, []byte("header"))
	hl := headerFixedLen + len(testGKID)
	rebuild := func(h Header, nonce []byte) []byte {
		out := appendHeader(nil, h)
		out = append(out, nonce...)
		return append(out, ct[hl+nonceSize:]...)
	}
	nonce := ct[hl : hl+nonceSize]
	otherNonce := bytes.Clone(nonce)
	otherNonce[0] ^= 0x40
	cases := []struct {
		name string
		ct   []byte
		want Header
	}{
		{"other GKID, same length", rebuild(Header{GKID: "k1-q4zcmv2ypu-7x3kfm4r2dq6n5hwtjzscybvaf", KeyVersion: 7}, nonce), Header{GKID: "k1-q4zcmv2ypu-7x3kfm4r2dq6n5hwtjzscybvaf", KeyVersion: 7}},
		{"shorter GKID", rebuild(Header{GKID: testGKID[:39], KeyVersion: 7}, nonce), Header{GKID: testGKID[:39], KeyVersion: 7}},
		{"longer GKID", rebuild(Header{GKID: testGKID + "x", KeyVersion: 7}, nonce), Header{GKID: testGKID + "x", KeyVersion: 7}},
		{"key version 8", rebuild(Header{GKID: testGKID, KeyVersion: 8}, nonce), Header{GKID: testGKID, KeyVersion: 8}},
		{"key version 6", rebuild(Header{GKID: testGKID, KeyVersion: 6}, nonce), Header{GKID: testGKID, KeyVersion: 6}},
		{"other nonce", rebuild(testH, otherNonce), testH},
	}
	if !bytes.Equal(rebuild(testH, nonce), ct) {
		t.Fatal("rebuild does not reproduce the ciphertext")
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := ParseHeader(c.ct)
			if err != nil || h != c.want {
				t.Fatalf("ParseHeader = %+v, %v; want %+v", h, err, c.want)
			}
			if pt, err := Open(key256, testR, testC, c.ct); !errors.Is(err, ErrAuthentication) || pt != nil {
				t.Fatalf("Open = %q, %v; want ErrAuthentication", pt, err)
			}
		})
	}
}

func TestParseHeaderRejects(t *testing.T) {
	valid := mustSeal(t, key128, testH, testR, nil, []byte("p"))
	hl := headerFixedLen + len(testGKID)
	with := func(i int, b byte) []byte {
		c := bytes.Clone(valid)
		c[i] = b
		return c
	}
	// minimal builds a ciphertext from a raw GKID field and key version,
	// followed by room for nonce and tag.
	minimal := func(gkidLen byte, gkid string, kv uint32) []byte {
		b := append([]byte{0x72, 0x87, 0xdf, 1, gkidLen}, gkid...)
		b = append(b, byte(kv>>24), byte(kv>>16), byte(kv>>8), byte(kv))
		return append(b, make([]byte, nonceSize+tagSize)...)
	}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"nil", nil, ErrMalformed},
		{"empty", []byte{}, ErrMalformed},
		{"magic only", []byte{0x72, 0x87, 0xdf}, ErrMalformed},
		{"text", []byte("hello, this is not a ciphertext at all"), ErrMalformed},
		{"base64 of a ciphertext", []byte("coffAShrMS1xNHpjbXYyeXB1LTd4M2tmbTRy"), ErrMalformed},
		{"first magic byte", with(0, 0x73), ErrMalformed},
		{"last magic byte", with(2, 0xde), ErrMalformed},
		{"version 0", with(3, 0), ErrUnsupportedVersion},
		{"version 2", with(3, 2), ErrUnsupportedVersion},
		{"version 255", with(3, 255), ErrUnsupportedVersion},
		{"version 2, nothing after", []byte{0x72, 0x87, 0xdf, 2}, ErrUnsupportedVersion},
		{"version 1, nothing after", []byte{0x72, 0x87, 0xdf, 1}, ErrMalformed},
		{"GKID length 0", minimal(0, "", 1), ErrMalformed},
		{"GKID length 129", minimal(129, strings.Repeat("a", 129), 1), ErrMalformed},
		{"GKID length 255", minimal(255, strings.Repeat("a", 255), 1), ErrMalformed},
		{"GKID length past the end", minimal(128, "abc", 1)[:20], ErrMalformed},
		{"GKID with a space", minimal(3, "a b", 1), ErrMalformed},
		{"GKID with NUL", minimal(3, "a\x00b", 1), ErrMalformed},
		{"GKID with DEL", minimal(3, "a\x7fb", 1), ErrMalformed},
		{"GKID with a newline", minimal(3, "ab\n", 1), ErrMalformed},
		{"GKID with UTF-8", minimal(3, "aé", 1), ErrMalformed},
		{"key version 0", minimal(3, "abc", 0), ErrMalformed},
		{"no room for the tag", valid[:hl+nonceSize+tagSize-1], ErrMalformed},
		{"header only", valid[:hl], ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := ParseHeader(c.in)
			if !errors.Is(err, c.want) || h != (Header{}) {
				t.Fatalf("ParseHeader = %+v, %v; want %v", h, err, c.want)
			}
			if !strings.HasPrefix(err.Error(), "ciphertext: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
			if pt, oerr := Open(key128, testR, nil, c.in); !errors.Is(oerr, c.want) || pt != nil {
				t.Fatalf("Open = %q, %v; want %v", pt, oerr, c.want)
			}
		})
	}
	if h, err := ParseHeader(minimal(3, "abc", 9)); err != nil || h != (Header{GKID: "abc", KeyVersion: 9}) {
		t.Fatalf("minimal valid layout: %+v, %v", h, err)
	}
}

// TestUnsupportedVersionNotParsed checks that a future version is refused
// as such even when what follows would not parse as version 1.
func TestUnsupportedVersionNotParsed(t *testing.T) {
	future := append([]byte{0x72, 0x87, 0xdf, 2}, bytes.Repeat([]byte{0xff}, 5)...)
	_, err := ParseHeader(future)
	if !errors.Is(err, ErrUnsupportedVersion) || errors.Is(err, ErrMalformed) {
		t.Fatalf("ParseHeader(version 2) = %v", err)
	}
	if !strings.Contains(err.Error(), "version 2") {
		t.Fatalf("error %q does not name the version", err)
	}
	if _, err := Open(key128, testR, nil, future); !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatalf("Open(version 2) = %v", err)
	}
}

func TestSealRejects(t *testing.T) {
	cases := []struct {
		name     string
		key      []byte
		h        Header
		resource string
		ctx      map[string]string
		want     error
	}{
		{"empty GKID", key128, Header{GKID: "", KeyVersion: 1}, testR, nil, ErrInvalidHeader},
		{"GKID too long", key128, Header{GKID: strings.Repeat("a", MaxGKIDLen+1), KeyVersion: 1}, testR, nil, ErrInvalidHeader},
		{"GKID with a space", key128, Header{GKID: "k1 x", KeyVersion: 1}, testR, nil, ErrInvalidHeader},
		{"GKID with a control character", key128, Header{GKID: "k1\tx", KeyVersion: 1}, testR, nil, ErrInvalidHeader},
		{"GKID with UTF-8", key128, Header{GKID: "k1-é", KeyVersion: 1}, testR, nil, ErrInvalidHeader},
		{"key version 0", key128, Header{GKID: testGKID}, testR, nil, ErrInvalidHeader},
		{"no key", nil, testH, testR, nil, ErrKey},
		{"8-byte key", seq(0, 8), testH, testR, nil, ErrKey},
		{"17-byte key", seq(0, 17), testH, testR, nil, ErrKey},
		{"31-byte key", seq(0, 31), testH, testR, nil, ErrKey},
		{"33-byte key", seq(0, 33), testH, testR, nil, ErrKey},
		{"64-byte key", seq(0, 64), testH, testR, nil, ErrKey},
		{"empty resource", key128, testH, "", nil, ErrInvalidResource},
		{"resource too long", key128, testH, strings.Repeat("r", maxResourceLen+1), nil, ErrInvalidResource},
		{"invalid context", key128, testH, testR, map[string]string{"": "v"}, ErrInvalidContext},
	}
	const secret = "SECRET-PLAINTEXT-MARKER"
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ct, err := Seal(c.key, c.h, c.resource, c.ctx, []byte(secret))
			if !errors.Is(err, c.want) || ct != nil {
				t.Fatalf("Seal = %x, %v; want %v", ct, err, c.want)
			}
			if !strings.HasPrefix(err.Error(), "ciphertext: ") || strings.Contains(err.Error(), secret) {
				t.Fatalf("error %q", err)
			}
		})
	}
	if _, err := Seal(key128, testH, strings.Repeat("r", maxResourceLen), nil, nil); err != nil {
		t.Fatalf("resource of %d bytes: %v", maxResourceLen, err)
	}
}

// TestPlaintextLimit checks the bound Seal enforces, on lengths rather than
// on 64 GiB of plaintext: AES-GCM's limit, above which crypto/cipher panics.
func TestPlaintextLimit(t *testing.T) {
	cases := []struct {
		n    uint64
		want error
	}{
		{0, nil},
		{1<<36 - 32, nil},
		{1<<36 - 31, ErrTooLarge},
		{1 << 40, ErrTooLarge},
	}
	for _, c := range cases {
		if err := checkPlaintextLen(c.n); !errors.Is(err, c.want) {
			t.Errorf("checkPlaintextLen(%d) = %v, want %v", c.n, err, c.want)
		}
	}
	if rest := uint64(nonceSize) + maxPlaintextLen + tagSize; rest != 1<<36-4 {
		t.Fatalf("longest part after the header = %d, want 2^36 - 4", rest)
	}
}

func TestOpenDoesNotModifyInput(t *testing.T) {
	ct := mustSeal(t, key128, testH, testR, testC, []byte("keep"))
	orig := bytes.Clone(ct)
	if _, err := Open(key128, testR, testC, ct); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(ct)
	bad[len(bad)-1] ^= 1
	badOrig := bytes.Clone(bad)
	_, _ = Open(key128, testR, testC, bad)
	if !bytes.Equal(ct, orig) || !bytes.Equal(bad, badOrig) {
		t.Fatal("Open modified its input")
	}
}

func BenchmarkSeal1KiB(b *testing.B) {
	pt := make([]byte, 1024)
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Seal(key256, testH, testR, testC, pt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen1KiB(b *testing.B) {
	ct := mustSeal(b, key256, testH, testR, testC, make([]byte, 1024))
	b.SetBytes(1024)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Open(key256, testR, testC, ct); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseHeader(b *testing.B) {
	ct := mustSeal(b, key256, testH, testR, testC, make([]byte, 1024))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseHeader(ct); err != nil {
			b.Fatal(err)
		}
	}
}
