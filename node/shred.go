package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"

	"github.com/coffer-kms/coffer/fsm"
)

// Destroy is crypto-shredding (DESIGN.md, "Destroy is crypto-shredding").
//
// Apply removes a destroyed key's wrapped material from its record and
// notes the index (fsm/shred.go). The shredder, one goroutine per node,
// then makes the older copies go on this node's disk:
//
//  1. fsm.Shred: Pebble flushes its memtable (the WAL holding the old
//     batches is deleted, never recycled) and compacts the key records'
//     range, dropping the replaced record versions; the sstables that held
//     them are deleted.
//  2. A Raft snapshot of the shredded state, which also compacts the Raft
//     log up to TrailingLogs entries behind the head.
//  3. Every older snapshot is removed (checkpoints with their WAL copies
//     and hard links to old sstables, streams received from a leader).
//
// The Raft log entries that carried the material (the create, and the
// state changes before the destroy, which carry the re-sealed material)
// are deleted by log compaction once the log holds TrailingLogs newer
// entries and a snapshot follows. bbolt frees their pages without
// overwriting them; compactRaftLog copies the live log into a fresh file
// at every start, so the freed pages' bytes go then.
//
// A pass that fails is retried every shredRetry. A pass owed when the node
// stops (or crashes while it runs) is recorded in shredMarker and run at
// the next start. A crash between the destroy's Apply and the marker's
// write (microseconds) leaves the pass to the next removal.

// shredMarker, in the data directory, says a shred pass is owed.
const shredMarker = "shred-pending"

// shredRetry is the wait before a failed pass is tried again (a snapshot
// is refused while a configuration change is being applied, or when
// nothing was applied since the node started).
const shredRetry = 2 * time.Second

// shredQuietFor is how long a pass may wait for a reason that clears by
// itself (a read from before the removal still open, nothing applied to
// snapshot yet since the start) before each wait is logged as a warning.
const shredQuietFor = time.Minute

// shredLoop runs shred passes until the node stops: one after every
// signal that material was removed at an index past the last pass, and one
// at start when the marker says a pass is owed.
func (n *Node) shredLoop() {
	defer n.wg.Done()
	var done uint64 // newest removal index a pass completed after
	owed := n.shredOwed()
	since := time.Now() // when the owed pass was first tried
	defer func() {
		if owed || n.fsm.MaterialRemovedIndex() > done {
			n.markShred(true)
		}
	}()
	for {
		if !owed {
			select {
			case <-n.stopCh:
				return
			case <-n.fsm.MaterialRemoved():
			}
			if n.fsm.MaterialRemovedIndex() <= done {
				continue
			}
			owed, since = true, time.Now()
			n.markShred(true)
		}
		idx := n.fsm.MaterialRemovedIndex()
		if err := n.shred(idx); err != nil {
			if errors.Is(err, ErrShuttingDown) {
				return
			}
			metricShredPasses.WithLabelValues("failed").Inc()
			quiet := errors.Is(err, fsm.ErrShredPinned) || errors.Is(err, raft.ErrNothingNewToSnapshot)
			if quiet && time.Since(since) < shredQuietFor {
				n.logger.Debug("shred pass put off; will retry", "removal_index", idx, "err", err)
			} else {
				n.logger.Warn("shred pass failed; will retry", "removal_index", idx, "owed_for", time.Since(since).Round(time.Second), "err", err)
			}
			select {
			case <-n.stopCh:
				return
			case <-time.After(shredRetry):
			}
			continue
		}
		metricShredPasses.WithLabelValues("ok").Inc()
		owed, done = false, max(done, idx)
		n.shredded.Store(done)
		if n.fsm.MaterialRemovedIndex() <= done {
			n.markShred(false)
		}
	}
}

// shred runs one pass for the removals up to idx.
func (n *Node) shred(idx uint64) error {
	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.stopCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := n.fsm.Shred(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: stopped during a shred pass", ErrShuttingDown)
		}
		return err
	}
	compacted := time.Since(start)
	if err := n.futureError(n.raft.Snapshot()); err != nil {
		return fmt.Errorf("node: snapshot after shredding: %w", err)
	}
	removed := 0
	if s, ok := n.snaps.(*fsm.SnapshotStore); ok {
		var err error
		if removed, err = s.KeepNewest(); err != nil {
			return err
		}
	}
	d := time.Since(start)
	metricShredSeconds.Set(d.Seconds())
	n.logger.Info("key material shredded", "removal_index", idx, "older_snapshots_removed", removed,
		"compaction", compacted.Round(time.Millisecond), "duration", d.Round(time.Millisecond))
	return nil
}

// shredOwed reports whether the marker says a pass is owed.
func (n *Node) shredOwed() bool {
	_, err := os.Stat(filepath.Join(n.cfg.DataDir, shredMarker))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		n.logger.Warn("shred marker unreadable; running a pass", "err", err)
		return true
	}
	return err == nil
}

// markShred writes (owed) or removes the marker. A failure is logged: the
// pass itself does not depend on it.
func (n *Node) markShred(owed bool) {
	path := filepath.Join(n.cfg.DataDir, shredMarker)
	var err error
	if owed {
		idx := strconv.FormatUint(n.fsm.MaterialRemovedIndex(), 10) + "\n"
		err = os.WriteFile(path, []byte(idx), 0o600)
	} else if err = os.Remove(path); errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err != nil {
		n.logger.Warn("shred marker not updated", "owed", owed, "err", err)
	}
}

// raftLogCompactTxBytes bounds one write transaction of compactRaftLog.
const raftLogCompactTxBytes = 64 << 20

// compactRaftLog copies the bbolt file at path into a fresh file and puts
// that in its place, so that the pages bbolt freed (log entries deleted by
// log compaction, still holding their bytes) are not carried over. It runs
// before raft-boltdb opens the file, after checkRaftLog passed. A missing
// or empty file is left alone. The copy is synced before the rename, so a
// crash leaves either file whole at path (and a leftover copy, removed at
// the next start). The old file's disk blocks are freed, not overwritten.
func compactRaftLog(path string) (err error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && st.Size() == 0) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("node: raft log %s: %w", path, err)
	}
	start := time.Now()
	tmp := path + ".compact"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("node: raft log copy %s: %w", tmp, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	ro := *boltOptions()
	ro.ReadOnly = true
	src, err := bbolt.Open(path, 0o600, &ro)
	if err != nil {
		return fmt.Errorf("node: open raft log %s: %w", path, err)
	}
	defer src.Close()
	dst, err := bbolt.Open(tmp, 0o600, boltOptions())
	if err != nil {
		return fmt.Errorf("node: create raft log copy %s: %w", tmp, err)
	}
	if err := bbolt.Compact(dst, src, raftLogCompactTxBytes); err != nil {
		_ = dst.Close()
		return fmt.Errorf("node: copy raft log %s: %w", path, err)
	}
	if err := dst.Sync(); err != nil {
		_ = dst.Close()
		return fmt.Errorf("node: sync raft log copy %s: %w", tmp, err)
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("node: close raft log copy %s: %w", tmp, err)
	}
	if err := src.Close(); err != nil {
		return fmt.Errorf("node: close raft log %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("node: replace raft log %s: %w", path, err)
	}
	if err := syncDirOf(path); err != nil {
		return fmt.Errorf("node: sync %s: %w", filepath.Dir(path), err)
	}
	metricRaftLogCompactSeconds.Set(time.Since(start).Seconds())
	return nil
}

// syncDirOf syncs the directory holding path, making a rename in it
// durable.
func syncDirOf(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
