package audit

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
)

// fuzzSeedExport is a small valid export (8 entries, checkpoints at 3 and 6,
// Ed25519 so that it is reproducible) and a pruned variant.
func fuzzSeedExport(t testing.TB) (full, pruned string, trusted TrustedKeys) {
	signer := namedSigner{"node-1", mustEd25519(t, 1)}
	items, _ := buildChain(t, chainSpec{n: 8, every: 3, lag: 1, signers: []namedSigner{signer}})
	full = joinLines(exportLines(t, items))
	var cp3 int
	for i, it := range items {
		if it.Checkpoint != nil && it.Checkpoint.Seq == 3 {
			cp3 = i
		}
	}
	m, err := NewPruneMarker(items[cp3].Checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	pruned = joinLines(exportLines(t, append([]Item{{Marker: m}}, items[4:]...)))
	return full, pruned, mustTrusted(t, signer.signer)
}

// FuzzReadJSONL: the reader never panics, and every item it accepts writes
// back and reads again as the same item with the same hash.
func FuzzReadJSONL(f *testing.F) {
	full, pruned, _ := fuzzSeedExport(f)
	f.Add([]byte(full))
	f.Add([]byte(pruned))
	f.Add([]byte(`{"type":"entry","seq":1}` + "\n"))
	f.Add([]byte(`{"type":"marker","checkpoint":{"seq":1,"time":"1970-01-01T00:00:00Z"}}`))
	f.Add([]byte(`{"type":"checkpoint","seq":1,"seq":2}`))
	f.Add([]byte("\n\r\n{}\n[]\nnull\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReaderSize(bytes.NewReader(data), 4096)
		for n := 0; n < 10000; n++ {
			it, err := r.Next()
			if err == io.EOF {
				return
			}
			if err != nil {
				if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrLineTooLong) {
					t.Fatalf("unexpected error type: %v", err)
				}
				return
			}
			var buf bytes.Buffer
			w := NewWriter(&buf)
			if err := w.Write(it); err != nil {
				t.Fatalf("accepted item does not write back: %v", err)
			}
			w.Flush()
			again, err := ParseLine(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
			if err != nil {
				t.Fatalf("written line does not parse: %v\n%s", err, buf.String())
			}
			switch {
			case it.Entry != nil:
				if !proto.Equal(it.Entry, again.Entry) || !bytes.Equal(ChainHash(it.Entry), ChainHash(again.Entry)) {
					t.Fatalf("entry round trip differs: %v vs %v", it.Entry, again.Entry)
				}
			case it.Checkpoint != nil:
				if !proto.Equal(it.Checkpoint, again.Checkpoint) ||
					!bytes.Equal(CheckpointDigest(it.Checkpoint), CheckpointDigest(again.Checkpoint)) {
					t.Fatalf("checkpoint round trip differs")
				}
			case it.Marker != nil:
				if !proto.Equal(it.Marker, again.Marker) {
					t.Fatalf("marker round trip differs")
				}
			default:
				t.Fatal("Next returned an empty item")
			}
		}
	})
}

// FuzzVerifyJSONL: the verifier never panics on any input, fails only with
// the documented error types, and a report it passes is consistent.
func FuzzVerifyJSONL(f *testing.F) {
	full, pruned, trusted := fuzzSeedExport(f)
	f.Add([]byte(full), false)
	f.Add([]byte(pruned), true)
	lines := strings.Split(full, "\n")
	f.Add([]byte(strings.Join(append([]string{lines[1], lines[0]}, lines[2:]...), "\n")), false)
	f.Add([]byte(strings.Join(append(lines[:3:3], lines[4:]...), "\n")), true)
	f.Fuzz(func(t *testing.T, data []byte, strict bool) {
		rep, err := VerifyJSONL(bytes.NewReader(data), trusted, VerifyOptions{StrictTail: strict, Window: 8, MaxLineLen: 4096})
		if err != nil {
			var ve *VerifyError
			if !errors.As(err, &ve) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrLineTooLong) {
				t.Fatalf("unexpected error type: %v", err)
			}
			if ve != nil && ve.Kind == "" {
				t.Fatal("VerifyError without a kind")
			}
			return
		}
		if rep.Entries > 0 && rep.LastSeq-rep.FirstSeq+1 != rep.Entries {
			t.Fatalf("inconsistent report %+v", rep)
		}
		if rep.Entries > 0 && rep.LastSeq > rep.CoveredSeq && rep.Uncovered != rep.LastSeq-rep.CoveredSeq {
			t.Fatalf("inconsistent report %+v", rep)
		}
		if strict && rep.Uncovered != 0 {
			t.Fatalf("strict pass with %d uncovered", rep.Uncovered)
		}
		if len(rep.Head) != HashLen {
			t.Fatalf("head of %d bytes", len(rep.Head))
		}
	})
}
