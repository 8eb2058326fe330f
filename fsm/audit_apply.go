package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
)

// The audit log lives in the replicated state: every entry is linked into
// the hash chain (audit.Link) by Apply, on every replica, in the same batch
// as the change it records, so the chain is deterministic and no change
// commits without its entry.
//
// This file is the Apply side: the chain head's encoding, linking entries
// (a command's own and an audit batch's), checkpoints, pruning, and the
// changed-entry index they maintain. audit_read.go holds the queries.

type auditHead struct {
	seq  uint64
	hash []byte
}

func decodeAuditHead(v []byte) (auditHead, error) {
	if len(v) != 8+audit.HashLen {
		return auditHead{}, fmt.Errorf("%w: audit head has %d bytes", ErrCorrupt, len(v))
	}
	return auditHead{seq: binary.BigEndian.Uint64(v[:8]), hash: bytes.Clone(v[8:])}, nil
}

func (h auditHead) encode() []byte {
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(h.hash)), h.seq), h.hash...)
}

func readAuditHead(r reader) (auditHead, error) {
	v, err := get(r, keyAuditHead)
	if err == ErrNotFound {
		return auditHead{hash: audit.GenesisHash()}, nil
	}
	if err != nil {
		return auditHead{}, err
	}
	return decodeAuditHead(v)
}

// appendAudit links e into the chain. For an entry carried by a command, the
// command's result decides the outcome (the proposer's authorisation already
// passed, so a failure here is a business failure); entries of an audit batch
// keep the outcome their node recorded.
func (a *applyCtx) appendAudit(e *cofferv1.AuditEntry, res Result) {
	a.loadAudit()
	if a.cmdAudit == e {
		switch {
		case res.Err != nil:
			e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED
			e.Reason = clipReason(res.Err.Error())
		case res.Duplicate:
			e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED
			e.Reason = "repeated request id: the first key was returned"
			e.Gkid = res.Key.GetGkid()
		default:
			e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED
		}
		mustSetRaw(a.b, changeKey(e), nil)
	}
	a.indexTime(a.auditHead.seq+1, e)
	audit.Link(a.auditHead.hash, a.auditHead.seq+1, e)
	a.auditHead.seq, a.auditHead.hash = e.GetSeq(), e.GetHash()
	mustSet(a.b, auditKey(e.GetSeq()), e)
	// The head and the time index state are stored once per batch, by
	// ApplyBatch.
}

func clipReason(s string) string {
	return audit.Clip(s, audit.MaxFieldLen)
}

func applyAuditBatch(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.AuditBatchCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	entries := c.GetEntries()
	decide := make(map[uint32]int, len(c.GetDecide()))
	fallback := make(map[uint32]bool, len(c.GetFallback()))
	var res Result
	err := ValidateBatch(entries, c.GetDecide(), c.GetFallback())
	if v := batchVersion(entries, c.GetDecide()); err == nil && v > a.version {
		err = fmt.Errorf("%w: a decided read of this batch needs command version %d, the batch was written as %d", ErrInvalidCommand, v, a.version)
	}
	if err != nil {
		// The leader checks the lists before it proposes; bad ones that are
		// committed anyway decide and skip nothing, alike on every replica.
		res.Err = err
	} else {
		res.Reads = make([]ReadResult, len(c.GetDecide()))
		for i, d := range c.GetDecide() {
			decide[d.GetEntry()] = i
		}
		for _, i := range c.GetFallback() {
			fallback[i] = true
		}
	}
	for i, e := range entries {
		e.Seq, e.PrevHash, e.Hash = 0, nil, nil
		if fallback[uint32(i)] {
			k := changeKey(e)
			if mustHas(a.b, k) {
				// The change this entry stands in for was applied with its
				// own entry (or another node's fallback for the same
				// request was linked): the request has its one entry.
				res.Skipped++
				continue
			}
			mustSetRaw(a.b, k, nil)
		}
		k, decided := decide[uint32(i)]
		if decided {
			res.Reads[k] = a.decideRead(e, c.GetDecide()[k].GetCertSerial())
		} else if a.version >= CryptoVersion && countsEncryption(e) {
			a.countDecidedEncryption(e)
		}
		a.appendAudit(e, Result{})
		if decided {
			res.Reads[k].Seq = e.GetSeq()
		}
	}
	return res
}

// changeRetention is how long Apply remembers that a change's entry was
// linked: far longer than a fallback entry can take to follow it (the node
// proposes it at once, bounded by the audit timeout).
const changeRetention = time.Hour

// pruneChanged forgets changes older than changeRetention before t.
func (a *applyCtx) pruneChanged(t int64) {
	if err := a.b.DeleteRange(prefixChanged, changedBefore(t-int64(changeRetention)), nil); err != nil {
		panic(fmt.Sprintf("fsm: prune changed-entry index: %v", err))
	}
}

func applyAuditCheckpoint(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.AuditCheckpointCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	if a.version >= TimeIndexVersion && c.GetStartTimeIndex() {
		// Before the checks, so that every replica starts it alike.
		a.startTimeIndex()
	}
	cp := c.GetCheckpoint()
	if err := audit.ValidateCheckpoint(cp); err != nil {
		return Result{Err: fmt.Errorf("%w: %v", ErrInvalidCommand, err)}
	}
	var e cofferv1.AuditEntry
	switch err := getProto(a.b, auditKey(cp.GetSeq()), &e); {
	case err == ErrNotFound:
		return Result{Err: fmt.Errorf("%w: checkpoint names entry %d, which this replica does not hold", ErrInvalidCommand, cp.GetSeq())}
	case err != nil:
		panic(err.Error())
	}
	if !bytes.Equal(e.GetHash(), cp.GetHead()) {
		// This replica's chain differs from the leader's: record it and
		// stop serving (the node checks Diverged on every request).
		mustSetRaw(a.b, keyDiverged, binary.BigEndian.AppendUint64(nil, cp.GetSeq()))
		a.diverged = true
		return Result{Err: fmt.Errorf("%w at seq %d", ErrDiverged, cp.GetSeq())}
	}
	mustSet(a.b, checkpointKey(cp.GetSeq()), cp)
	a.pruneChanged(cp.GetTimeUnixNano())
	return Result{}
}

func applyAuditPrune(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.AuditPruneCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	cp, err := checkpointAtOrBelow(a.b, c.GetUpToSeq())
	if errors.Is(err, ErrNoCheckpoint) {
		return Result{Err: err}
	}
	if err != nil {
		panic(err.Error())
	}
	marker, err := audit.NewPruneMarker(cp)
	if err != nil {
		return Result{Err: fmt.Errorf("%w: %v", ErrInvalidCommand, err)}
	}
	firstBefore := uint64(1)
	if old, err := readPruneMarker(a.b); err != nil {
		panic(err.Error())
	} else if old != nil {
		firstBefore = old.GetFirstSeq()
	}
	if err := a.b.DeleteRange(auditKey(0), auditKey(cp.GetSeq()+1), nil); err != nil {
		panic(err.Error())
	}
	if err := a.b.DeleteRange(checkpointKey(0), checkpointKey(cp.GetSeq()), nil); err != nil {
		panic(err.Error())
	}
	a.pruneTimeIndex(cp.GetSeq() + 1)
	mustSet(a.b, keyAuditMarker, marker)
	return Result{Marker: marker, Pruned: marker.GetFirstSeq() - min(marker.GetFirstSeq(), firstBefore)}
}
