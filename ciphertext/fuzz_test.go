package ciphertext

import (
	"bytes"
	"errors"
	"maps"
	"strings"
	"testing"
)

// fuzzSeeds returns valid ciphertexts under key256, testR and testC, and a
// few near misses, for the fuzz corpora.
func fuzzSeeds(t testing.TB) [][]byte {
	var seeds [][]byte
	for i, h := range []Header{testH, {GKID: "g", KeyVersion: 1}, {GKID: strings.Repeat("~", MaxGKIDLen), KeyVersion: ^uint32(0)}} {
		for _, n := range []int{0, 1, 16, 100} {
			seeds = append(seeds, sealFixed(t, key256, h, testR, testC, seq(byte(i), n), seq(byte(n), nonceSize)))
		}
	}
	v := bytes.Clone(seeds[1])
	v[3] = 2
	seeds = append(seeds, v, seeds[1][:headerFixedLen+len(testGKID)], nil, []byte{0x72, 0x87, 0xdf, 1, 0})
	return seeds
}

// FuzzParseHeader: ParseHeader never panics; a header it accepts is valid,
// is the start of the input byte for byte, and leaves room for nonce and
// tag; anything else is malformed or of an unsupported version.
func FuzzParseHeader(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ct []byte) {
		h, err := ParseHeader(ct)
		if err != nil {
			if !isOneOf(err, ErrMalformed, ErrUnsupportedVersion) || h != (Header{}) {
				t.Fatalf("ParseHeader = %+v, %v", h, err)
			}
			return
		}
		if verr := h.validate(); verr != nil {
			t.Fatalf("accepted an invalid header %+v: %v", h, verr)
		}
		hdr := appendHeader(nil, h)
		if !bytes.HasPrefix(ct, hdr) {
			t.Fatalf("header %+v does not re-encode to the input's prefix", h)
		}
		if len(ct) < Overhead(h.GKID) {
			t.Fatalf("accepted %d bytes, shorter than the overhead %d", len(ct), Overhead(h.GKID))
		}
	})
}

// FuzzOpen: Open never panics; it fails with ParseHeader's error whenever
// ParseHeader fails; on failure it returns no plaintext; and when it
// succeeds, sealing the plaintext again with the same header and nonce
// gives back the input exactly.
func FuzzOpen(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ct []byte) {
		pt, err := Open(key256, testR, testC, ct)
		h, n, perr := parseHeader(ct)
		if perr != nil {
			if err == nil || pt != nil || err.Error() != perr.Error() {
				t.Fatalf("ParseHeader: %v; Open = %q, %v", perr, pt, err)
			}
			return
		}
		if err != nil {
			if !errors.Is(err, ErrAuthentication) || pt != nil {
				t.Fatalf("Open = %q, %v", pt, err)
			}
			return
		}
		again := sealFixed(t, key256, h, testR, testC, pt, ct[n:n+nonceSize])
		if !bytes.Equal(again, ct) {
			t.Fatalf("opened %x but sealing its plaintext gives %x", ct, again)
		}
	})
}

// FuzzContextEncoding: a valid context of up to three pairs encodes to
// bytes that decode to it, which makes the encoding injective.
func FuzzContextEncoding(f *testing.F) {
	f.Add("a", "bc", "ab", "c", "", "", uint8(2))
	f.Add("tenant", "acme", "purpose", "invoice", "env", "", uint8(3))
	f.Add("k", "", "", "", "", "", uint8(1))
	f.Add("é", "x", "😀", "\uFFFD", "Z", "\x00", uint8(3))
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string, n uint8) {
		ctx := map[string]string{}
		for i, p := range [][2]string{{k1, v1}, {k2, v2}, {k3, v3}} {
			if i < int(n%4) {
				ctx[p[0]] = p[1]
			}
		}
		if ValidateContext(ctx) != nil {
			return
		}
		enc := encodeContext(ctx)
		if len(enc) != contextEncodedLen(ctx) {
			t.Fatalf("contextEncodedLen = %d, encoding is %d bytes", contextEncodedLen(ctx), len(enc))
		}
		got, err := decodeContext(enc)
		if err != nil {
			t.Fatalf("decode %x: %v", enc, err)
		}
		if !maps.Equal(got, ctx) {
			t.Fatalf("decoded %q, want %q", got, ctx)
		}
	})
}
