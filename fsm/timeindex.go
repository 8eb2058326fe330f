package fsm

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/cockroachdb/pebble/v2"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// The audit time index lets a query that starts at a time skip the entries
// before it, without a key per entry. Entry times are the accepting nodes'
// clock readings, so they are not ordered by seq; the index therefore
// records the running maximum M of the times of the entries linked so far.
// Before Apply links entry seq it may write t/<M>/<seq>: every indexed entry
// before seq has a time no later than M. A query for entries at or after T
// takes the last key with M < T and skips the indexed entries before its
// seq, none of which can match. A clock that runs ahead only makes the index
// less useful (M stays high), never wrong.
//
// Each key's value is the earliest time among the entries it closes: those
// linked since the key before it (the state keeps the same minimum for the
// entries after the newest key). A query for entries before U walks the
// keys back from the newest while those minimums are at or after U: the
// entries from there on are all too late, so the scan stops there. A clock
// that runs behind only makes it stop later. See fsm/DESIGN.md, "Time index".

// TimeIndexVersion is the command version of a checkpoint that starts the
// index: replicas whose build predates it stop rather than skip it.
const TimeIndexVersion = 4

// timeIndexGranule is how far M must have moved past the newest key before
// Apply writes another: at most one key per second of entry time.
const timeIndexGranule = uint64(time.Second)

// timeIndex is the index's state (m/audit_time).
type timeIndex struct {
	// from is the first indexed seq; 0 means the index has not started.
	from uint64
	// maxTime is the running maximum of the indexed entries' times, in
	// Unix nanoseconds (negative times count as 0).
	maxTime uint64
	// lastKey is the M of the newest t/ key, 0 before the first.
	lastKey uint64
	// blockMin is the earliest time of the entries linked since the newest
	// key (since from before the first), noBlockMin when there are none.
	blockMin uint64
}

// noBlockMin is blockMin for a block without entries.
const noBlockMin = math.MaxUint64

func (ti timeIndex) encode() []byte {
	b := make([]byte, 0, 32)
	b = binary.BigEndian.AppendUint64(b, ti.from)
	b = binary.BigEndian.AppendUint64(b, ti.maxTime)
	b = binary.BigEndian.AppendUint64(b, ti.lastKey)
	return binary.BigEndian.AppendUint64(b, ti.blockMin)
}

func readTimeIndex(r reader) (timeIndex, error) {
	v, err := get(r, keyAuditTime)
	if err == ErrNotFound {
		return timeIndex{}, nil
	}
	if err != nil {
		return timeIndex{}, err
	}
	if len(v) != 32 {
		return timeIndex{}, fmt.Errorf("%w: audit time index state has %d bytes", ErrCorrupt, len(v))
	}
	return timeIndex{
		from:     binary.BigEndian.Uint64(v[0:8]),
		maxTime:  binary.BigEndian.Uint64(v[8:16]),
		lastKey:  binary.BigEndian.Uint64(v[16:24]),
		blockMin: binary.BigEndian.Uint64(v[24:32]),
	}, nil
}

// loadAudit loads the chain head and the time index state on first use in
// a batch; ApplyBatch stores both once at its end.
func (a *applyCtx) loadAudit() {
	if a.auditHead != nil {
		return
	}
	h, err := readAuditHead(a.b)
	if err != nil {
		panic(err.Error())
	}
	ti, err := readTimeIndex(a.b)
	if err != nil {
		panic(err.Error())
	}
	a.auditHead, a.timeIdx = &h, &ti
}

// startTimeIndex starts the index at the next entry, unless it has started.
func (a *applyCtx) startTimeIndex() {
	a.loadAudit()
	if a.timeIdx.from == 0 {
		*a.timeIdx = timeIndex{from: a.auditHead.seq + 1, blockMin: noBlockMin}
		a.timeIdxDirty = true
	}
}

// indexTime records e, about to be linked at seq, in the time index.
func (a *applyCtx) indexTime(seq uint64, e *cofferv1.AuditEntry) {
	ti := a.timeIdx
	if ti.from == 0 {
		return
	}
	if ti.maxTime >= ti.lastKey+timeIndexGranule && seq > ti.from {
		mustSetRaw(a.b, auditTimeKey(ti.maxTime, seq), binary.BigEndian.AppendUint64(nil, ti.blockMin))
		ti.lastKey, ti.blockMin = ti.maxTime, noBlockMin
	}
	t := uint64(max(e.GetTimeUnixNano(), 0))
	ti.maxTime = max(ti.maxTime, t)
	ti.blockMin = min(ti.blockMin, t)
	a.timeIdxDirty = true
}

// pruneTimeIndex deletes the keys that point at or before firstSeq, the
// first entry a prune kept: skipping to them skips nothing any more.
func (a *applyCtx) pruneTimeIndex(firstSeq uint64) {
	it, err := a.b.NewIter(&pebble.IterOptions{LowerBound: prefixAuditTime, UpperBound: prefixEnd(prefixAuditTime)})
	if err != nil {
		panic(err.Error())
	}
	end := prefixEnd(prefixAuditTime)
	for ok := it.First(); ok; ok = it.Next() {
		if _, seq, err := decodeTimeKey(it.Key()); err != nil {
			panic(err.Error())
		} else if seq > firstSeq {
			end = append([]byte(nil), it.Key()...)
			break
		}
	}
	if err := it.Close(); err != nil {
		panic(err.Error())
	}
	if err := a.b.DeleteRange(prefixAuditTime, end, nil); err != nil {
		panic(err.Error())
	}
}

func decodeTimeKey(k []byte) (maxTime, seq uint64, err error) {
	if len(k) != len(prefixAuditTime)+16 {
		return 0, 0, fmt.Errorf("%w: audit time index key %x", ErrCorrupt, k)
	}
	k = k[len(prefixAuditTime):]
	return binary.BigEndian.Uint64(k[:8]), binary.BigEndian.Uint64(k[8:]), nil
}

// timeSkip returns [from, to): sequence numbers whose entries all have
// times before since, by the time index. It is empty (0, 0) when since is
// not set, the index has not started or no key helps.
func timeSkip(r reader, since int64) (from, to uint64, err error) {
	if since <= 0 {
		return 0, 0, nil
	}
	ti, err := readTimeIndex(r)
	if err != nil || ti.from == 0 {
		return 0, 0, err
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefixAuditTime, UpperBound: auditTimeKey(uint64(since), 0)})
	if err != nil {
		return 0, 0, fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	if !it.Last() {
		return 0, 0, it.Error()
	}
	_, seq, err := decodeTimeKey(it.Key())
	if err != nil {
		return 0, 0, err
	}
	return ti.from, seq, nil
}

// timeStop returns a seq from which every entry has a time at or after
// until, by the time index, or 0 when until is not set, the index has not
// started or the newest entries include earlier ones.
func timeStop(r reader, until int64) (uint64, error) {
	if until <= 0 {
		return 0, nil
	}
	ti, err := readTimeIndex(r)
	if err != nil || ti.from == 0 || ti.blockMin < uint64(until) {
		return 0, err
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefixAuditTime, UpperBound: prefixEnd(prefixAuditTime)})
	if err != nil {
		return 0, fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	for ok := it.Last(); ok; ok = it.Prev() {
		_, seq, err := decodeTimeKey(it.Key())
		if err != nil {
			return 0, err
		}
		v := it.Value()
		if len(v) != 8 {
			return 0, fmt.Errorf("%w: audit time index key %x has a %d-byte value", ErrCorrupt, it.Key(), len(v))
		}
		if binary.BigEndian.Uint64(v) < uint64(until) {
			// The entries before seq include one earlier than until.
			return seq, nil
		}
	}
	if err := it.Error(); err != nil {
		return 0, err
	}
	return ti.from, nil
}

// AuditTimeIndexStarted reports whether this replica's state has the audit
// time index (the leader asks a checkpoint to start it until it has).
func (f *FSM) AuditTimeIndexStarted() bool {
	ti, err := readTimeIndex(f.db)
	return err == nil && ti.from != 0
}
