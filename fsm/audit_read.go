package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
)

// The read side of the audit log: the head, filtered and newest-first
// queries, scans, checkpoints and the prune marker, and exports (live or from
// a stopped node's data directory). Everything here reads committed state
// (the store or a snapshot of it) and changes none of it; audit_apply.go is
// the side that does.

// loadAuditSeq and loadDiverged (below) refresh the FSM's in-memory copies
// of the head's seq and the divergence flag, at open and after a Restore.
func (f *FSM) loadAuditSeq() {
	h, err := readAuditHead(f.db)
	if err != nil {
		f.logger.Error("fsm: audit head unreadable", "err", err)
		return
	}
	f.auditSeq.Store(h.seq)
}

// AuditHeadSeq returns the sequence number of the newest audit entry.
func (f *FSM) AuditHeadSeq() uint64 { return f.auditSeq.Load() }

// AuditFilter selects entries for AuditEntries. Zero fields match all.
type AuditFilter struct {
	SinceUnixNano, UntilUnixNano int64
	Caller, GKID, Operation      string
	Outcome                      cofferv1.AuditOutcome
}

func (flt AuditFilter) match(e *cofferv1.AuditEntry) bool {
	return (flt.SinceUnixNano == 0 || e.GetTimeUnixNano() >= flt.SinceUnixNano) &&
		(flt.UntilUnixNano == 0 || e.GetTimeUnixNano() < flt.UntilUnixNano) &&
		(flt.Caller == "" || e.GetCaller() == flt.Caller) &&
		(flt.GKID == "" || e.GetGkid() == flt.GKID) &&
		(flt.Operation == "" || e.GetOperation() == flt.Operation) &&
		(flt.Outcome == 0 || e.GetOutcome() == flt.Outcome)
}

// MaxAuditScan bounds how many entries one AuditEntries call reads.
const MaxAuditScan = 100000

// AuditEntries returns up to limit entries after seq afterSeq that match
// the filter, scanning at most MaxAuditScan entries, and the last seq it
// scanned (resume from there). With a since time it skips, by the time
// index, the entries that are all older (they are not counted as scanned);
// with an until time it stops where the entries left are all later, and
// then returns the head's seq as the last scanned.
func (f *FSM) AuditEntries(afterSeq uint64, limit int, flt AuditFilter) ([]*cofferv1.AuditEntry, uint64, error) {
	snap := f.db.NewSnapshot()
	defer snap.Close()
	skipFrom, skipTo, err := timeSkip(snap, flt.SinceUnixNano)
	if err != nil {
		return nil, afterSeq, err
	}
	stop, err := timeStop(snap, flt.UntilUnixNano)
	if err != nil {
		return nil, afterSeq, err
	}
	it, err := auditIter(snap, afterSeq)
	if err != nil {
		return nil, afterSeq, err
	}
	defer it.Close()
	var out []*cofferv1.AuditEntry
	last := afterSeq
	scanned := 0
	for ok := it.First(); ok && len(out) < limit && scanned < MaxAuditScan; {
		seq, err := auditSeq(it)
		if err != nil {
			return nil, afterSeq, err
		}
		if stop != 0 && seq >= stop {
			h, err := readAuditHead(snap)
			if err != nil {
				return nil, afterSeq, err
			}
			last = max(last, h.seq)
			break
		}
		if seq >= skipFrom && seq < skipTo {
			last = max(last, skipTo-1)
			ok = it.SeekGE(auditKey(skipTo))
			continue
		}
		e, err := decodeAuditEntry(it)
		if err != nil {
			return nil, afterSeq, err
		}
		last = e.GetSeq()
		scanned++
		if flt.match(e) {
			out = append(out, e)
		}
		ok = it.Next()
	}
	return out, last, it.Error()
}

// NewestAuditEntries returns the newest n entries at or below seq upTo (0:
// the head) that match the filter, in seq order, scanning back at most
// MaxAuditScan entries, and the head's seq in the view it read. With a since
// time it skips, by the time index, the entries that are all older (they are
// not counted as scanned); with an until time it starts below the entries
// that are all later. Fewer than n come back when the scan reaches the start
// of the log or its bound first.
func (f *FSM) NewestAuditEntries(upTo uint64, n int, flt AuditFilter) ([]*cofferv1.AuditEntry, uint64, error) {
	snap := f.db.NewSnapshot()
	defer snap.Close()
	h, err := readAuditHead(snap)
	if err != nil {
		return nil, 0, err
	}
	if upTo == 0 || upTo > h.seq {
		upTo = h.seq
	}
	if n <= 0 || upTo == 0 {
		return nil, h.seq, nil
	}
	skipFrom, skipTo, err := timeSkip(snap, flt.SinceUnixNano)
	if err != nil {
		return nil, 0, err
	}
	if stop, err := timeStop(snap, flt.UntilUnixNano); err != nil {
		return nil, 0, err
	} else if stop != 0 && stop <= upTo {
		if stop == 1 {
			return nil, h.seq, nil
		}
		upTo = stop - 1
	}
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: auditKey(1), UpperBound: auditKey(upTo + 1)})
	if err != nil {
		return nil, 0, fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	var out []*cofferv1.AuditEntry
	scanned := 0
	for ok := it.Last(); ok && len(out) < n && scanned < MaxAuditScan; {
		seq, err := auditSeq(it)
		if err != nil {
			return nil, 0, err
		}
		if seq >= skipFrom && seq < skipTo {
			// Every entry from skipFrom up to here is older than since.
			ok = it.SeekLT(auditKey(skipFrom))
			continue
		}
		e, err := decodeAuditEntry(it)
		if err != nil {
			return nil, 0, err
		}
		scanned++
		if flt.match(e) {
			out = append(out, e)
		}
		ok = it.Prev()
	}
	if err := it.Error(); err != nil {
		return nil, 0, fmt.Errorf("fsm: iterate: %w", err)
	}
	slices.Reverse(out)
	return out, h.seq, nil
}

// ScanAudit calls fn for every entry after afterSeq in order, from a
// consistent view of the store, until fn returns an error, which it returns.
func (f *FSM) ScanAudit(afterSeq uint64, fn func(*cofferv1.AuditEntry) error) error {
	snap := f.db.NewSnapshot()
	defer snap.Close()
	return scanAudit(snap, afterSeq, fn)
}

func scanAudit(r reader, afterSeq uint64, fn func(*cofferv1.AuditEntry) error) error {
	it, err := auditIter(r, afterSeq)
	if err != nil {
		return err
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		e, err := decodeAuditEntry(it)
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return it.Error()
}

// auditIter iterates over the entries after afterSeq.
func auditIter(r reader, afterSeq uint64) (*pebble.Iterator, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: auditKey(afterSeq + 1), UpperBound: prefixEnd(prefixAudit)})
	if err != nil {
		return nil, fmt.Errorf("fsm: iterate: %w", err)
	}
	return it, nil
}

// auditSeq returns the seq of the entry under it, from its key.
func auditSeq(it *pebble.Iterator) (uint64, error) {
	k := it.Key()
	if len(k) != len(prefixAudit)+8 {
		return 0, fmt.Errorf("%w: audit entry key %x", ErrCorrupt, k)
	}
	return binary.BigEndian.Uint64(k[len(prefixAudit):]), nil
}

// decodeAuditEntry decodes the entry under it.
func decodeAuditEntry(it *pebble.Iterator) (*cofferv1.AuditEntry, error) {
	var e cofferv1.AuditEntry
	if err := proto.Unmarshal(it.Value(), &e); err != nil {
		return nil, fmt.Errorf("%w: audit entry %x: %v", ErrCorrupt, it.Key(), err)
	}
	return &e, nil
}

// ExportAudit writes the log after afterSeq to w as JSON Lines
// (audit.Writer), from a consistent view: the prune marker first when
// exporting from the start, then entries, each followed by its checkpoints.
func (f *FSM) ExportAudit(afterSeq uint64, w io.Writer) error {
	snap := f.db.NewSnapshot()
	defer snap.Close()
	return exportAudit(snap, afterSeq, w)
}

// Diverged reports whether a checkpoint disagreed with this replica's chain.
func (f *FSM) Diverged() bool { return f.diverged.Load() }

func (f *FSM) loadDiverged() {
	ok, err := has(f.db, keyDiverged)
	f.diverged.Store(err == nil && ok)
}

// AuditCheckpoint returns the newest checkpoint, if any.
func (f *FSM) AuditCheckpoint() (*cofferv1.AuditCheckpoint, error) {
	it, err := f.db.NewIter(&pebble.IterOptions{LowerBound: prefixCheckpoint, UpperBound: prefixEnd(prefixCheckpoint)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	if !it.Last() {
		return nil, it.Error()
	}
	var cp cofferv1.AuditCheckpoint
	if err := proto.Unmarshal(it.Value(), &cp); err != nil {
		return nil, fmt.Errorf("%w: checkpoint: %v", ErrCorrupt, err)
	}
	return &cp, nil
}

// CheckpointAtOrBelow returns the checkpoint a prune up to seq goes up to:
// the newest at or below seq. It returns ErrNoCheckpoint when there is none.
func (f *FSM) CheckpointAtOrBelow(seq uint64) (*cofferv1.AuditCheckpoint, error) {
	return checkpointAtOrBelow(f.db, seq)
}

func checkpointAtOrBelow(r reader, seq uint64) (*cofferv1.AuditCheckpoint, error) {
	upper := prefixEnd(prefixCheckpoint)
	if seq < math.MaxUint64 {
		upper = checkpointKey(seq + 1)
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefixCheckpoint, UpperBound: upper})
	if err != nil {
		return nil, fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	if !it.Last() {
		if err := it.Error(); err != nil {
			return nil, fmt.Errorf("fsm: iterate: %w", err)
		}
		return nil, fmt.Errorf("%w: none at or below seq %d", ErrNoCheckpoint, seq)
	}
	cp := &cofferv1.AuditCheckpoint{}
	if err := proto.Unmarshal(it.Value(), cp); err != nil {
		return nil, fmt.Errorf("%w: checkpoint %x: %v", ErrCorrupt, it.Key(), err)
	}
	return cp, nil
}

// CheckpointBefore returns the checkpoint an age-based prune goes up to:
// reading checkpoints oldest first, the last one before the first signed at
// or after before (Unix nanoseconds). It returns ErrNoCheckpoint when the
// oldest was not signed before it.
func (f *FSM) CheckpointBefore(before int64) (*cofferv1.AuditCheckpoint, error) {
	it, err := f.db.NewIter(&pebble.IterOptions{LowerBound: prefixCheckpoint, UpperBound: prefixEnd(prefixCheckpoint)})
	if err != nil {
		return nil, fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	var last *cofferv1.AuditCheckpoint
	for ok := it.First(); ok; ok = it.Next() {
		cp := &cofferv1.AuditCheckpoint{}
		if err := proto.Unmarshal(it.Value(), cp); err != nil {
			return nil, fmt.Errorf("%w: checkpoint %x: %v", ErrCorrupt, it.Key(), err)
		}
		if cp.GetTimeUnixNano() >= before {
			break
		}
		last = cp
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("fsm: iterate: %w", err)
	}
	if last == nil {
		return nil, fmt.Errorf("%w: none signed before %s", ErrNoCheckpoint, time.Unix(0, before).UTC().Format(time.RFC3339))
	}
	return last, nil
}

// AuditPruneMarker returns the marker that stands for pruned entries, or
// nil if the log was never pruned.
func (f *FSM) AuditPruneMarker() (*cofferv1.AuditPruneMarker, error) {
	return readPruneMarker(f.db)
}

// readPruneMarker reads the prune marker from r, nil if there is none.
func readPruneMarker(r reader) (*cofferv1.AuditPruneMarker, error) {
	var m cofferv1.AuditPruneMarker
	switch err := getProto(r, keyAuditMarker, &m); {
	case err == nil:
		return &m, nil
	case errors.Is(err, ErrNotFound):
		return nil, nil
	default:
		return nil, err
	}
}

// AuditHead returns the newest entry's seq and hash.
func (f *FSM) AuditHead() (uint64, []byte, error) {
	h, err := readAuditHead(f.db)
	return h.seq, h.hash, err
}

// exportAudit writes, in order, the prune marker (if any), then every entry
// after afterSeq, each followed by the checkpoints that cover it.
func exportAudit(r reader, afterSeq uint64, w io.Writer) error {
	aw := audit.NewWriter(w)
	if afterSeq == 0 {
		m, err := readPruneMarker(r)
		if err != nil {
			return err
		}
		if m != nil {
			if err := aw.WriteMarker(m); err != nil {
				return err
			}
		}
	}
	err := scanAudit(r, afterSeq, func(e *cofferv1.AuditEntry) error {
		if err := aw.WriteEntry(e); err != nil {
			return err
		}
		var cp cofferv1.AuditCheckpoint
		switch err := getProto(r, checkpointKey(e.GetSeq()), &cp); err {
		case nil:
			return aw.WriteCheckpoint(&cp)
		case ErrNotFound:
			return nil
		default:
			return err
		}
	})
	if err != nil {
		return err
	}
	return aw.Flush()
}

// ExportAuditDir exports the audit log of a stopped node's data directory.
func ExportAuditDir(dataDir string, w io.Writer) error {
	db, err := openReadOnly(dataDir)
	if err != nil {
		return err
	}
	defer db.Close()
	return exportAudit(db, 0, w)
}
