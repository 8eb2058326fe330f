package client

import (
	"context"
	"io"
	"runtime"
	"testing"
)

// The envelope benchmarks measure the local work of Seal and Open and of a
// stream: AES-256-GCM, the header, and wrapping and unwrapping the data key
// with the ciphertext package in process (localKeys), which stands in for
// the GenerateDataKey and Decrypt round trips to the cluster. The service
// round trip is measured separately (coffer bench).
//
//	go test ./client -run '^$' -bench Envelope -benchmem

func BenchmarkEnvelopeSeal1KiB(b *testing.B) {
	src := newLocalKeys()
	pt := make([]byte, 1<<10)
	ctx := context.Background()
	b.SetBytes(int64(len(pt)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := sealRecord(ctx, src, "default", "payments/db", pt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEnvelopeOpen1KiB(b *testing.B) {
	src := newLocalKeys()
	blob := mustSeal(b, src, make([]byte, 1<<10))
	ctx := context.Background()
	b.SetBytes(1 << 10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := openRecord(ctx, src, blob); err != nil {
			b.Fatal(err)
		}
	}
}

// zeroReader is an endless source of zero bytes.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// BenchmarkEnvelopeStream100MiB seals 100 MiB into a discarding writer and
// opens a sealed 100 MiB stream (sealed on the fly into a pipe by another
// goroutine, never held in memory), reporting the peak heap sampled during
// the run: it stays at a few segments whatever the size. The open figure
// includes the concurrent sealing, on a second core.
func BenchmarkEnvelopeStream100MiB(b *testing.B) {
	const size = 100 << 20
	src := newLocalKeys()
	ctx := context.Background()
	b.Run("seal", func(b *testing.B) {
		b.SetBytes(size)
		b.ReportAllocs()
		peak := &heapSampler{}
		for b.Loop() {
			w, err := sealStream(ctx, src, "default", "files", peak, DefaultSegmentSize)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.CopyBuffer(w, io.LimitReader(zeroReader{}, size), make([]byte, DefaultSegmentSize)); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
		}
		peak.report(b)
	})
	b.Run("open", func(b *testing.B) {
		// The stream to open: sealed once into a pipe per iteration by a
		// goroutine, so the 100 MiB is never held.
		b.SetBytes(size)
		b.ReportAllocs()
		peak := &heapSampler{}
		for b.Loop() {
			pr, pw := io.Pipe()
			go func() {
				w, err := sealStream(ctx, src, "default", "files", pw, DefaultSegmentSize)
				if err == nil {
					_, err = io.Copy(w, io.LimitReader(zeroReader{}, size))
				}
				if err == nil {
					err = w.Close()
				}
				pw.CloseWithError(err)
			}()
			r, err := openStream(ctx, src, pr)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.CopyBuffer(peak, r, make([]byte, DefaultSegmentSize))
			if err != nil || n != size {
				b.Fatalf("opened %d bytes, %v", n, err)
			}
		}
		peak.report(b)
	})
}

// heapSampler is an io.Writer that discards what it is given and, every
// 16 writes, notes the heap allocated (runtime.MemStats.HeapAlloc, garbage
// not yet collected included): the most it saw is the benchmark's peak
// heap, reported as peak-heap-MiB.
type heapSampler struct {
	writes int
	peak   uint64
}

func (h *heapSampler) Write(p []byte) (int, error) {
	if h.writes++; h.writes%16 == 1 {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		h.peak = max(h.peak, m.HeapAlloc)
	}
	return len(p), nil
}

func (h *heapSampler) report(b *testing.B) {
	b.ReportMetric(float64(h.peak)/(1<<20), "peak-heap-MiB")
}
