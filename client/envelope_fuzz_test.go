package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
)

// FuzzOpenEnvelope feeds arbitrary bytes to the record and stream parsers:
// they never panic, and anything they accept is what was sealed (the only
// valid envelopes are the seeds, and their plaintext is known).
func FuzzOpenEnvelope(f *testing.F) {
	src := newLocalKeys()
	record := mustSeal(f, src, []byte("fuzz record"))
	stream := mustSealStream(f, src, bytes.Repeat([]byte("s"), DefaultSegmentSize+5), 0)
	for _, seed := range [][]byte{record, stream, record[:20], stream[:200], nil, envMagic[:], {0x72, 0x87, 0xde, 1, 2, 0, 80}} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ctx := context.Background()
		if pt, err := openRecord(ctx, src, b); err == nil && string(pt) != "fuzz record" {
			t.Fatalf("openRecord accepted %x as %q", b, pt)
		} else if err != nil && pt != nil {
			t.Fatal("openRecord returned plaintext with an error")
		}
		r, err := openStream(ctx, src, bytes.NewReader(b))
		if err != nil {
			return
		}
		got, err := io.ReadAll(r)
		if err == nil && !bytes.Equal(got, bytes.Repeat([]byte("s"), DefaultSegmentSize+5)) {
			t.Fatalf("openStream accepted a stream of %d bytes that was never sealed", len(got))
		}
		if err != nil && !errors.Is(err, ErrEnvelopeAuthentication) && !errors.Is(err, ErrEnvelopeTruncated) && !errors.Is(err, ErrEnvelopeMalformed) {
			t.Fatalf("stream error without a sentinel: %v", err)
		}
	})
}
