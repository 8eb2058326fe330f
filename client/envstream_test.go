package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
	"testing/iotest"
)

const seg = DefaultSegmentSize

// mustSealStream seals pt as a stream, written in pieces of chunk bytes
// (0: one Write).
func mustSealStream(t testing.TB, src dataKeySource, pt []byte, chunk int) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := sealStream(context.Background(), src, "default", "payments/db", &out, seg)
	if err != nil {
		t.Fatalf("sealStream: %v", err)
	}
	for rest := pt; len(rest) > 0 || chunk == 0; {
		k := len(rest)
		if chunk > 0 {
			k = min(chunk, len(rest))
		}
		if n, err := w.Write(rest[:k]); err != nil || n != k {
			t.Fatalf("Write = %d, %v", n, err)
		}
		rest = rest[k:]
		if chunk == 0 {
			break
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return out.Bytes()
}

func openAll(src dataKeySource, blob []byte) ([]byte, error) {
	r, err := openStream(context.Background(), src, bytes.NewReader(blob))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// streamLayout returns the header length and the offsets of the segments.
func streamLayout(t *testing.T, blob []byte) (int, []int) {
	t.Helper()
	w := int(binary.BigEndian.Uint16(blob[5:7]))
	h := streamHeaderLen(w)
	var offs []int
	for o := h; o < len(blob); o += seg + envTagSize {
		offs = append(offs, o)
	}
	return h, offs
}

func TestEnvelopeStream_RoundTrip(t *testing.T) {
	src := newLocalKeys()
	for _, n := range []int{0, 1, seg - 1, seg, seg + 1, 2 * seg, 3<<20 + 17} {
		pt := make([]byte, n)
		_, _ = rand.Read(pt)
		for _, chunk := range []int{0, 1000, seg + 3} {
			if chunk == 1000 && n > 2*seg {
				continue // slow under -race, and covered by the other sizes
			}
			blob := mustSealStream(t, src, pt, chunk)
			segs := max(1, (n+seg-1)/seg)
			h, _ := streamLayout(t, blob)
			if want := h + n + segs*envTagSize; len(blob) != want {
				t.Fatalf("%d bytes: stream is %d bytes, want %d", n, len(blob), want)
			}
			got, err := openAll(src, blob)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("%d bytes in writes of %d: open = %d bytes, %v", n, chunk, len(got), err)
			}
			// A reader that returns one byte at a time reads the same.
			r, err := openStream(context.Background(), src, iotest.OneByteReader(bytes.NewReader(blob)))
			if err != nil {
				t.Fatal(err)
			}
			if got, err := io.ReadAll(iotest.HalfReader(r)); err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("%d bytes, one byte at a time: %d bytes, %v", n, len(got), err)
			}
		}
	}
}

func TestEnvelopeStream_Refused(t *testing.T) {
	src := newLocalKeys()
	pt := make([]byte, 3*seg+100)
	_, _ = rand.Read(pt)
	blob := mustSealStream(t, src, pt, 0)
	h, offs := streamLayout(t, blob) // four segments, the last 100 bytes
	full := seg + envTagSize
	segment := func(i int) []byte { return blob[offs[i]:min(offs[i]+full, len(blob))] }
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	other := mustSealStream(t, src, pt, 0)
	exact := mustSealStream(t, src, pt[:2*seg], 0) // two full segments, the second the last
	_, exOffs := streamLayout(t, exact)
	flip := func(i int) []byte { b := bytes.Clone(blob); b[i] ^= 1; return b }
	badSeg := bytes.Clone(blob)
	binary.BigEndian.PutUint32(badSeg[h-noncePrefixLen-4:], 100)

	for _, tc := range []struct {
		name string
		blob []byte
		want error
	}{
		{"no segments", blob[:h], ErrEnvelopeTruncated},
		{"cut after segment 1", blob[:offs[1]], ErrEnvelopeTruncated},
		{"cut after segment 3", blob[:offs[3]], ErrEnvelopeTruncated},
		{"cut after the first of two full segments", exact[:exOffs[1]], ErrEnvelopeTruncated},
		{"cut inside a segment", blob[:offs[2]+100], ErrEnvelopeAuthentication},
		{"cut inside the tag of the last", blob[:len(blob)-1], ErrEnvelopeAuthentication},
		{"a byte appended", append(bytes.Clone(blob), 0), ErrEnvelopeAuthentication},
		{"a segment appended", join(blob, segment(3)), ErrEnvelopeAuthentication},
		{"segments 1 and 2 swapped", join(blob[:h], segment(0), segment(2), segment(1), segment(3)), ErrEnvelopeAuthentication},
		{"segment 1 twice", join(blob[:h], segment(0), segment(1), segment(1), segment(3)), ErrEnvelopeAuthentication},
		{"segment 2 dropped", join(blob[:h], segment(0), segment(2), segment(3)), ErrEnvelopeAuthentication},
		{"another stream's header", join(other[:h], blob[h:]), ErrEnvelopeAuthentication},
		{"another stream's segment", join(blob[:offs[1]], other[offs[1]:offs[2]], blob[offs[2]:]), ErrEnvelopeAuthentication},
		{"a bit of segment 2 flipped", flip(offs[1] + 5), ErrEnvelopeAuthentication},
		{"a bit of the last tag flipped", flip(len(blob) - 1), ErrEnvelopeAuthentication},
		{"a bit of the nonce prefix flipped", flip(h - 1), ErrEnvelopeAuthentication},
		{"a segment size out of bounds", badSeg, ErrEnvelopeMalformed},
		{"the version byte", func() []byte { b := bytes.Clone(blob); b[3] = 9; return b }(), ErrEnvelopeVersion},
		{"no magic", flip(0), ErrEnvelopeMalformed},
		{"a truncated header", blob[:h-1], ErrEnvelopeMalformed},
		{"a record", mustSeal(t, src, []byte("x")), ErrEnvelopeMalformed},
		{"nothing", nil, ErrEnvelopeMalformed},
	} {
		got, err := openAll(src, tc.blob)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		// Nothing past the last verified segment is released.
		if len(got) > 0 && !bytes.HasPrefix(pt, got) && !bytes.HasPrefix(pt[:2*seg], got) {
			t.Errorf("%s: released %d bytes that are not a prefix of the plaintext", tc.name, len(got))
		}
	}
}

// A failed Write of the underlying writer is final.
func TestEnvelopeStream_WriteError(t *testing.T) {
	src := newLocalKeys()
	boom := errors.New("disk full")
	fw := &failWriter{after: 1, err: boom}
	w, err := sealStream(context.Background(), src, "default", "r", fw, seg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 2*seg+1)); !errors.Is(err, boom) {
		t.Fatalf("Write = %v, want %v", err, boom)
	}
	if err := w.Close(); !errors.Is(err, boom) {
		t.Fatalf("Close = %v", err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Fatal("Write after Close succeeded")
	}
}

type failWriter struct {
	after int
	err   error
}

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after == 0 {
		return 0, f.err
	}
	f.after--
	return len(p), nil
}

// An error of the underlying reader ends the stream with that error,
// wrapped.
func TestEnvelopeStream_ReadError(t *testing.T) {
	src := newLocalKeys()
	blob := mustSealStream(t, src, make([]byte, 3*seg), 0)
	_, offs := streamLayout(t, blob)
	boom := errors.New("connection reset")
	r, err := openStream(context.Background(), src, io.MultiReader(bytes.NewReader(blob[:offs[1]+10]), iotest.ErrReader(boom)))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if !errors.Is(err, boom) || len(got) != seg {
		t.Fatalf("read %d bytes, %v; want one segment and %v", len(got), err, boom)
	}
}

// Sealing and opening allocate the same whatever the stream's length: the
// memory is constant.
func TestEnvelopeStream_ConstantMemory(t *testing.T) {
	src := newLocalKeys()
	allocated := func(size int64) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		pr, pw := io.Pipe()
		go func() {
			w, err := sealStream(context.Background(), src, "default", "r", pw, seg)
			if err == nil {
				_, err = io.CopyBuffer(w, io.LimitReader(zeroReader{}, size), make([]byte, 4096))
			}
			if err == nil {
				err = w.Close()
			}
			pw.CloseWithError(err)
		}()
		r, err := openStream(context.Background(), src, pr)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := io.CopyBuffer(io.Discard, r, make([]byte, 4096)); err != nil || n != size {
			t.Fatalf("read %d bytes, %v", n, err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	small, large := allocated(1<<20), allocated(32<<20)
	if large > small+256<<10 {
		t.Fatalf("sealing and opening 32 MiB allocated %d bytes, 1 MiB %d: memory grows with the stream", large, small)
	}
	t.Logf("allocated for 1 MiB: %d bytes, for 32 MiB: %d bytes", small, large)
}
