package ciphertext

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
)

// decodeContext reverses appendContext, as FORMAT.md describes the encoding,
// and checks that the pairs are in strictly ascending key order.
func decodeContext(b []byte) (map[string]string, error) {
	str := func() (string, error) {
		if len(b) < 2 {
			return "", errors.New("short length")
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			return "", errors.New("short string")
		}
		s := string(b[2 : 2+n])
		b = b[2+n:]
		return s, nil
	}
	if len(b) < 2 {
		return nil, errors.New("short count")
	}
	count := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	m := map[string]string{}
	prev := ""
	for i := range count {
		k, err := str()
		if err != nil {
			return nil, err
		}
		v, err := str()
		if err != nil {
			return nil, err
		}
		if i > 0 && k <= prev {
			return nil, fmt.Errorf("key %q after %q", k, prev)
		}
		prev = k
		m[k] = v
	}
	if len(b) != 0 {
		return nil, errors.New("trailing bytes")
	}
	return m, nil
}

// encodeContext is the canonical encoding of a valid ctx.
func encodeContext(ctx map[string]string) []byte {
	keys, err := contextKeys(ctx)
	if err != nil {
		panic(err)
	}
	return appendContext(nil, ctx, keys)
}

func mustKeys(t testing.TB, ctx map[string]string) []string {
	t.Helper()
	keys, err := contextKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func pairs(n, size int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[fmt.Sprintf("k%02d", i)] = strings.Repeat("v", size)
	}
	return m
}

func TestValidateContext(t *testing.T) {
	const valueMarker = "VALUE-MARKER"
	full := pairs(MaxContextPairs, 0)
	exact := pairs(MaxContextPairs, MaxContextBytes/MaxContextPairs-3) // keys are 3 bytes
	over := maps.Clone(exact)
	over["k00"] += "v"
	cases := []struct {
		name string
		ctx  map[string]string
		want error // nil: valid
	}{
		{"nil", nil, nil},
		{"empty", map[string]string{}, nil},
		{"one pair", map[string]string{"k": "v"}, nil},
		{"empty value", map[string]string{"k": ""}, nil},
		{"NUL in key and value", map[string]string{"a\x00b": "c\x00d"}, nil},
		{"UTF-8", map[string]string{"clé": "valeur ✓", "😀": "🙂"}, nil},
		{"16 pairs", full, nil},
		{"17 pairs", pairs(MaxContextPairs+1, 0), ErrInvalidContext},
		{"4096 bytes", exact, nil},
		{"4097 bytes", over, ErrInvalidContext},
		{"one key of 4097 bytes", map[string]string{strings.Repeat("k", MaxContextBytes+1): ""}, ErrInvalidContext},
		{"one value of 4096 bytes", map[string]string{"k": strings.Repeat("v", MaxContextBytes)}, ErrInvalidContext},
		{"empty key", map[string]string{"": valueMarker}, ErrInvalidContext},
		{"empty key among others", map[string]string{"a": "b", "": ""}, ErrInvalidContext},
		{"invalid UTF-8 key", map[string]string{"k\xff": valueMarker}, ErrInvalidContext},
		{"invalid UTF-8 value", map[string]string{"k": valueMarker + "\xc3"}, ErrInvalidContext},
		{"surrogate in value", map[string]string{"k": "\xed\xa0\x80"}, ErrInvalidContext},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := 0
			for k, v := range c.ctx {
				n += len(k) + len(v)
			}
			if c.name == "4096 bytes" && n != MaxContextBytes || c.name == "4097 bytes" && n != MaxContextBytes+1 {
				t.Fatalf("test context is %d bytes", n)
			}
			err := ValidateContext(c.ctx)
			if c.want == nil {
				if err != nil {
					t.Fatalf("ValidateContext: %v", err)
				}
				ct := mustSeal(t, key128, testH, testR, c.ctx, []byte("x"))
				if _, err := Open(key128, testR, c.ctx, ct); err != nil {
					t.Fatalf("Open: %v", err)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("ValidateContext = %v, want %v", err, c.want)
			}
			if !strings.HasPrefix(err.Error(), "ciphertext: invalid encryption context: ") || strings.Contains(err.Error(), valueMarker) {
				t.Fatalf("error %q", err)
			}
			if _, err := Seal(key128, testH, testR, c.ctx, nil); !errors.Is(err, c.want) {
				t.Fatalf("Seal = %v", err)
			}
		})
	}
}

func TestContextEncoding(t *testing.T) {
	cases := []struct {
		name string
		ctx  map[string]string
		want string // hex
	}{
		{"nil", nil, "0000"},
		{"empty", map[string]string{}, "0000"},
		{"a=bc", map[string]string{"a": "bc"}, "0001" + "0001" + "61" + "0002" + "6263"},
		{"ab=c", map[string]string{"ab": "c"}, "0001" + "0002" + "6162" + "0001" + "63"},
		{"empty value", map[string]string{"k": ""}, "0001" + "0001" + "6b" + "0000"},
		{"prefix sorts first", map[string]string{"aa": "", "a": ""}, "0002" + "0001" + "61" + "0000" + "0002" + "6161" + "0000"},
		{"byte order: Z, z, é", map[string]string{"é": "", "z": "", "Z": ""},
			"0003" + "0001" + "5a" + "0000" + "0001" + "7a" + "0000" + "0002" + "c3a9" + "0000"},
		// U+FFFD (ef bf bd) sorts before U+1F600 (f0 9f 98 80) in byte
		// order, though Java's String.compareTo puts the emoji first.
		{"byte order above U+FFFF", map[string]string{"😀": "", "\uFFFD": ""},
			"0002" + "0003" + "efbfbd" + "0000" + "0004" + "f09f9880" + "0000"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := encodeContext(c.ctx)
			if hex.EncodeToString(got) != c.want {
				t.Fatalf("encoding = %x, want %s", got, c.want)
			}
			if contextEncodedLen(c.ctx) != len(got) {
				t.Fatalf("contextEncodedLen = %d, want %d", contextEncodedLen(c.ctx), len(got))
			}
		})
	}
}

// TestContextEncodingOrderFree builds one context with many insertion
// orders; every encoding, and every ciphertext's opening, agrees.
func TestContextEncodingOrderFree(t *testing.T) {
	keys := make([]string, MaxContextPairs)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%c", 'p'-i)
	}
	build := func(order []int) map[string]string {
		m := make(map[string]string)
		for _, i := range order {
			m[keys[i]] = "v" + keys[i]
		}
		return m
	}
	fwd, rev := make([]int, len(keys)), make([]int, len(keys))
	for i := range keys {
		fwd[i], rev[i] = i, len(keys)-1-i
	}
	ref := encodeContext(build(fwd))
	ct := mustSeal(t, key128, testH, testR, build(fwd), []byte("order"))
	for range 20 {
		for _, order := range [][]int{fwd, rev} {
			m := build(order)
			if got := encodeContext(m); !bytes.Equal(got, ref) {
				t.Fatalf("encodings differ:\n%x\n%x", got, ref)
			}
			if _, err := Open(key128, testR, m, ct); err != nil {
				t.Fatalf("Open with the same context built in another order: %v", err)
			}
		}
	}
}

// TestContextEncodingUnambiguous checks pairs of distinct contexts that a
// careless encoding (concatenation, separators, no count) would confuse.
func TestContextEncodingUnambiguous(t *testing.T) {
	cases := [][2]map[string]string{
		{{"a": "bc"}, {"ab": "c"}},
		{{"a": "b", "c": "d"}, {"a": "b\x00\x01c\x00\x01d"}},
		{{"a": "b", "c": "d"}, {"a": "bcd"}},
		{{"a": "b=c"}, {"a=b": "c"}},
		{{"k": ""}, {}},
		{{"k": ""}, {"k": "\x00"}},
		{{"a": "", "b": ""}, {"a": "\x00\x01b\x00\x00"}},
	}
	for i, c := range cases {
		ea, eb := encodeContext(c[0]), encodeContext(c[1])
		if bytes.Equal(ea, eb) {
			t.Fatalf("case %d: %q and %q encode alike: %x", i, c[0], c[1], ea)
		}
		ct := mustSeal(t, key128, testH, testR, c[0], []byte("x"))
		if _, err := Open(key128, testR, c[1], ct); !errors.Is(err, ErrAuthentication) {
			t.Fatalf("case %d: sealed with %q, opened with %q: %v", i, c[0], c[1], err)
		}
	}
}
