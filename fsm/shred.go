package fsm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
)

// Crypto-shredding (node/shred.go drives it; node/DESIGN.md, "Destroy is
// crypto-shredding").
//
// A command that removes wrapped key material from a record (a destroy
// today) only writes the next version of the record. The older versions
// stay in Pebble until they are compacted away: in the memtable and its
// WAL, in sstables, and in every snapshot taken before. Apply does not wait
// for that: it notes the index (materialRemoved), and once the batch is
// committed the FSM signals MaterialRemoved. The node then calls Shred,
// takes a new snapshot and keeps only that one (SnapshotStore.KeepNewest).
//
// Pebble is opened with shredCleaner, so that an obsolete WAL is deleted
// rather than kept for reuse: a recycled WAL keeps the old batches' bytes
// in its file until they happen to be overwritten.

// materialRanges are the key ranges whose records may hold wrapped key
// material, [start, end) each: Shred compacts them. A table that stores
// material elsewhere adds its range here.
var materialRanges = [][2][]byte{
	{prefixKey, prefixEnd(prefixKey)},
}

// materialRemoved notes that the command at index removed wrapped key
// material (or escrow copies) from a record. It is the one call a handler
// makes for that: it writes nothing, and the FSM signals MaterialRemoved
// once the batch has committed.
func (a *applyCtx) materialRemoved(index uint64) {
	a.removedAt = max(a.removedAt, index)
}

// noteMaterialRemoved records index as the newest removal and signals
// MaterialRemoved, without blocking (one pending signal stands for any
// number of removals).
func (f *FSM) noteMaterialRemoved(index uint64) {
	for {
		cur := f.removedAt.Load()
		if index <= cur || f.removedAt.CompareAndSwap(cur, index) {
			break
		}
	}
	select {
	case f.removedCh <- struct{}{}:
	default:
	}
}

// MaterialRemoved receives after a committed batch removed key material
// (and after every Restore, which replaces the whole store). Read
// MaterialRemovedIndex after a receive: it is the newest such index.
func (f *FSM) MaterialRemoved() <-chan struct{} { return f.removedCh }

// MaterialRemovedIndex returns the index of the newest applied command
// that removed key material, or of the newest Restore; 0 if none since
// the FSM opened.
func (f *FSM) MaterialRemovedIndex() uint64 { return f.removedAt.Load() }

// Shred makes Pebble drop the record versions that a removal replaced:
// it flushes the memtable (so the WAL that holds the old batches becomes
// obsolete and, with shredCleaner, is deleted) and compacts the material
// ranges down to the bottom level, where a version shadowed by a newer one
// and not held by an open Pebble snapshot is dropped. The sstables the
// compaction replaced become obsolete and are deleted by Pebble's cleaner
// shortly after Shred returns (not before: deletion is asynchronous);
// hard links to them in older checkpoints keep their bytes until those
// checkpoints are removed.
//
// Call it after the removal was applied. It may run concurrently with
// Apply, reads and Restore; it must not run after Close. It stops with
// ctx's error when ctx ends.
func (f *FSM) Shred(ctx context.Context) error {
	if f.closed.Load() {
		return ErrClosed
	}
	if err := f.db.Flush(); err != nil {
		return fmt.Errorf("fsm: shred: flush: %w", err)
	}
	for _, r := range materialRanges {
		if err := f.db.Compact(ctx, r[0], r[1], true); err != nil {
			return fmt.Errorf("fsm: shred: compact %q: %w", r[0], err)
		}
	}
	return nil
}

// shredCleaner deletes obsolete files, as pebble.DeleteCleaner does, and
// turns off WAL recycling: Pebble recycles no WAL when its cleaner needs
// the files' contents, which ArchiveCleaner declares with a method of its
// own. Embedded one level deeper than DeleteCleaner, ArchiveCleaner gives
// shredCleaner only that declaration: Clean and String are DeleteCleaner's,
// so nothing is archived.
type shredCleaner struct {
	pebble.DeleteCleaner
	noRecycle
}

type noRecycle struct{ pebble.ArchiveCleaner }

var _ pebble.Cleaner = shredCleaner{}

// KeepNewest removes every snapshot but the newest: the older checkpoints
// (with their hard links to sstables and their WAL copies) and the older
// streams received from a leader. The node calls it after it took a
// snapshot of shredded state, which is then the newest; one taken since is
// newer still and was taken from shredded state too. It returns how many
// it removed.
func (s *SnapshotStore) KeepNewest() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	metas, err := s.List()
	if err != nil {
		return 0, fmt.Errorf("fsm: list snapshots: %w", err)
	}
	removed := 0
	for i, m := range metas {
		if i == 0 {
			continue
		}
		dir := filepath.Join(s.dir, m.ID)
		if _, err := os.Stat(filepath.Join(dir, checkpointMeta)); errors.Is(err, os.ErrNotExist) {
			// A stream, kept by raft.FileSnapshotStore under
			// <raft dir>/snapshots.
			dir = filepath.Join(filepath.Dir(s.dir), "snapshots", m.ID)
		}
		if err := os.RemoveAll(dir); err != nil {
			return removed, fmt.Errorf("fsm: remove snapshot %s: %w", m.ID, err)
		}
		removed++
	}
	if removed > 0 {
		for _, d := range []string{s.dir, filepath.Join(filepath.Dir(s.dir), "snapshots")} {
			if err := syncDir(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				return removed, fmt.Errorf("fsm: sync %s: %w", d, err)
			}
		}
	}
	return removed, nil
}
