package fsm

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// Offline readers for tools that work without a running node (escrow
// recovery, audit verification): they read a snapshot stream or a stopped
// node's data directory.

// ReadSnapshot parses a snapshot stream (see snapshot.go for the format),
// calling fn for every key and value, and verifies its checksum at the end.
// fn's arguments are only valid during the call.
func ReadSnapshot(r io.Reader, fn func(key, value []byte) error) error {
	return readSnapshot(r, fn)
}

// ForEachKeyRecordInSnapshot calls fn for every key record in a snapshot
// stream.
func ForEachKeyRecordInSnapshot(r io.Reader, fn func(*cofferv1.KeyRecord) error) error {
	return readSnapshot(r, func(k, v []byte) error {
		if !bytes.HasPrefix(k, prefixKey) {
			return nil
		}
		var rec cofferv1.KeyRecord
		if err := proto.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("%w: record %q: %v", ErrCorrupt, k, err)
		}
		return fn(&rec)
	})
}

// StateDir returns the Pebble directory inside a node's data directory; it
// accepts the data directory itself or the state directory.
func StateDir(dataDir string) (string, error) {
	for _, d := range []string{filepath.Join(dataDir, "state"), dataDir} {
		if _, err := os.Stat(filepath.Join(d, "CURRENT")); err == nil {
			return d, nil
		}
		if matches, _ := filepath.Glob(filepath.Join(d, "MANIFEST-*")); len(matches) > 0 {
			return d, nil
		}
	}
	return "", fmt.Errorf("fsm: no state store under %s (expected a node's data directory)", dataDir)
}

// ForEachKeyRecordInDir calls fn for every key record in a stopped node's
// data directory, opened read-only.
func ForEachKeyRecordInDir(dataDir string, fn func(*cofferv1.KeyRecord) error) error {
	db, err := openReadOnly(dataDir)
	if err != nil {
		return err
	}
	defer db.Close()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefixKey, UpperBound: prefixEnd(prefixKey)})
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		var rec cofferv1.KeyRecord
		if err := proto.Unmarshal(it.Value(), &rec); err != nil {
			return fmt.Errorf("%w: record %q: %v", ErrCorrupt, it.Key(), err)
		}
		if err := fn(&rec); err != nil {
			return err
		}
	}
	return it.Error()
}

// SnapshotTo writes a consistent snapshot of the current state to w and
// returns the applied index it describes.
func (f *FSM) SnapshotTo(w io.Writer) (uint64, error) {
	snap := f.db.NewSnapshot()
	defer snap.Close()
	idx := uint64(0)
	if v, err := get(snap, keyApplied); err == nil {
		idx, _, _ = decodeApplied(v)
	}
	return idx, WriteSnapshot(snap, w)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// openReadOnly opens the state store inside a stopped node's data directory
// without changing it.
func openReadOnly(dataDir string) (*pebble.DB, error) {
	dir, err := StateDir(dataDir)
	if err != nil {
		return nil, err
	}
	db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true, Logger: quietLogger{discardLogger()}})
	if err != nil {
		return nil, fmt.Errorf("fsm: open %s read-only (is the node still running?): %w", dir, err)
	}
	return db, nil
}
