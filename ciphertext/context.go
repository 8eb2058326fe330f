package ciphertext

import (
	"encoding/binary"
	"fmt"
	"slices"
	"unicode/utf8"
)

// MaxContextPairs is the most key-value pairs an encryption context holds.
const MaxContextPairs = 16

// MaxContextBytes is the most bytes an encryption context's keys and values
// hold together (the sum of their lengths, without any encoding).
const MaxContextBytes = 4096

// ValidateContext reports, wrapping ErrInvalidContext, an encryption context
// Seal and Open refuse. A context has at most MaxContextPairs pairs whose
// keys and values total at most MaxContextBytes bytes; every key is
// non-empty; keys and values are valid UTF-8 (values may be empty). A nil
// context is valid and the same as an empty one. When several rules are
// broken, the error names the first in that order, checking keys in
// ascending byte order; it may quote a key, never a value.
func ValidateContext(ctx map[string]string) error {
	_, err := contextKeys(ctx)
	return err
}

// contextKeys validates ctx as ValidateContext does and returns its keys in
// ascending byte order.
func contextKeys(ctx map[string]string) ([]string, error) {
	if len(ctx) > MaxContextPairs {
		return nil, fmt.Errorf("%w: %d pairs; the limit is %d", ErrInvalidContext, len(ctx), MaxContextPairs)
	}
	if len(ctx) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(ctx))
	for k := range ctx {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	total := 0
	for _, k := range keys {
		v := ctx[k]
		switch {
		case k == "":
			return nil, fmt.Errorf("%w: a key is empty", ErrInvalidContext)
		case !utf8.ValidString(k):
			return nil, fmt.Errorf("%w: key %.40q is not valid UTF-8", ErrInvalidContext, k)
		case !utf8.ValidString(v):
			return nil, fmt.Errorf("%w: the value of key %.40q is not valid UTF-8", ErrInvalidContext, k)
		}
		total += len(k) + len(v)
	}
	if total > MaxContextBytes {
		return nil, fmt.Errorf("%w: keys and values total %d bytes; the limit is %d", ErrInvalidContext, total, MaxContextBytes)
	}
	return keys, nil
}

// appendContext appends the canonical encoding of a valid ctx to b: the
// number of pairs, then each pair in ascending byte order of its key, key
// then value, every count and length 2 bytes big-endian. keys are ctx's
// keys in that order, from contextKeys. Distinct contexts encode
// differently, and a context encodes the same however its map was built.
func appendContext(b []byte, ctx map[string]string, keys []string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, ctx[k])
	}
	return b
}

// contextEncodedLen is len(appendContext(nil, ctx, keys)).
func contextEncodedLen(ctx map[string]string) int {
	n := 2
	for k, v := range ctx {
		n += 4 + len(k) + len(v)
	}
	return n
}
