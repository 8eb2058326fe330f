package fsm

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzReadSnapshot feeds arbitrary bytes to the snapshot reader (escrow
// recovery reads snapshot files an operator hands it): it must never panic,
// must fail only with ErrBadSnapshot (or the callback's error), and must
// never accept a stream whose checksum does not match.
func FuzzReadSnapshot(f *testing.F) {
	src := mustOpenFuzz(f)
	var good bytes.Buffer
	if err := WriteSnapshot(src.db, &good); err != nil {
		f.Fatal(err)
	}
	f.Add(good.Bytes())
	f.Add(snapMagic)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		n := 0
		err := ReadSnapshot(bytes.NewReader(data), func(k, v []byte) error {
			n++
			return nil
		})
		if err != nil && !errors.Is(err, ErrBadSnapshot) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		if err == nil {
			// The trailing checksum covers everything: any flipped byte of
			// an accepted stream must be refused.
			bad := bytes.Clone(data)
			bad[len(bad)/2] ^= 0x01
			if ReadSnapshot(bytes.NewReader(bad), func(k, v []byte) error { return nil }) == nil {
				t.Fatalf("a stream with a flipped byte was accepted")
			}
		}
	})
}

func mustOpenFuzz(f *testing.F) *FSM {
	f.Helper()
	fs, err := Open(DefaultConfig(f.TempDir()))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = fs.Close() })
	return fs
}
