package fsm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

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

// noteMaterialRemoved records index as the newest removal, and seq as the
// Pebble sequence number from which every snapshot sees the records it
// wrote (the committing batch's first sequence number plus its count),
// then signals MaterialRemoved without blocking (one pending signal stands
// for any number of removals).
func (f *FSM) noteMaterialRemoved(index, seq uint64) {
	storeMax(&f.removedSeq, seq)
	storeMax(&f.removedAt, index)
	select {
	case f.removedCh <- struct{}{}:
	default:
	}
}

// storeMax raises v to n unless it is already at n or above.
func storeMax(v *atomic.Uint64, n uint64) {
	for cur := v.Load(); n > cur && !v.CompareAndSwap(cur, n); cur = v.Load() {
	}
}

// batchEnd is the sequence number from which a snapshot sees everything
// the committed batch b wrote.
func batchEnd(b *pebble.Batch) uint64 { return uint64(b.SeqNum()) + uint64(b.Count()) }

// MaterialRemoved receives after a committed batch removed key material
// (and after every Restore, which replaces the whole store). Read
// MaterialRemovedIndex after a receive: it is the newest such index.
func (f *FSM) MaterialRemoved() <-chan struct{} { return f.removedCh }

// MaterialRemovedIndex returns the index of the newest applied command
// that removed key material, or of the newest Restore; 0 if none since
// the FSM opened.
func (f *FSM) MaterialRemovedIndex() uint64 { return f.removedAt.Load() }

// Shred makes Pebble drop the record versions that the removals noted so
// far replaced, and the files that held them:
//
//   - It first waits for reads: a Pebble snapshot opened before a removal
//     committed (a backup stream, a state digest, a listing) still sees
//     the old version, and a flush or compaction keeps it for the
//     snapshot. While one is open, Shred returns ErrShredPinned without
//     doing anything, and the caller tries again later. Snapshots opened
//     after the removal never see the old version.
//   - It flushes the memtable, so the WAL that holds the old batches
//     becomes obsolete (and, with shredCleaner, is deleted, not recycled).
//   - It writes a range key deletion over each material range (range keys
//     are a keyspace of their own, which no read, snapshot stream or digest
//     of this package reads, so replicated state is unchanged) and
//     compacts the range: the deletion reaches every level, so every
//     sstable of the range is rewritten, including bottom-level ones, which
//     a manual compaction alone leaves as they are (an old version pinned
//     there by a snapshot would otherwise stay). On the bottom level a
//     shadowed version is dropped, and so is the deletion.
//
// The sstables the compaction replaced become obsolete and are deleted by
// Pebble shortly after Shred returns (not before: deletion is
// asynchronous); hard links to them in older checkpoints keep their bytes
// until those checkpoints are removed (SnapshotStore.KeepNewest).
//
// Call it after the removal was applied. It may run concurrently with
// Apply, reads and Restore; it must not run after Close. It stops with
// ctx's error when ctx ends.
func (f *FSM) Shred(ctx context.Context) error {
	if f.closed.Load() {
		return ErrClosed
	}
	if snaps := f.db.Metrics().Snapshots; snaps.Count > 0 && uint64(snaps.EarliestSeqNum) < f.removedSeq.Load() {
		return fmt.Errorf("%w (%d open)", ErrShredPinned, snaps.Count)
	}
	b := f.db.NewBatch()
	for _, r := range materialRanges {
		if err := b.RangeKeyDelete(r[0], r[1], nil); err != nil {
			b.Close()
			return fmt.Errorf("fsm: shred: %w", err)
		}
	}
	err := b.Commit(pebble.NoSync)
	b.Close()
	if err != nil {
		return fmt.Errorf("fsm: shred: %w", err)
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

// ErrShredPinned is a Shred put off because a Pebble snapshot from before
// a removal is still open; run it again once reads moved on.
var ErrShredPinned = errors.New("fsm: shred: a read from before the removal is still open")

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
