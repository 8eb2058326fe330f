package fsm

import (
	"bytes"
	"fmt"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// NodePinVersion is the command version of PIN_NODE: a replica whose build
// predates it stops on it (see CommandVersion), so the leader writes it only
// once every member applies it.
const NodePinVersion = 5

// certSHA256Len is the length of a pinned certificate's fingerprint.
const certSHA256Len = 32

// Members is the request path's view of the pinned member certificates:
// node id to its record, built from the records whose integrity tag
// verifies. A record that fails its tag is left out, so its member counts
// as not admitted (fail closed).
type Members map[string]*cofferv1.NodeRecord

// NodePins returns the verified pins of the committed state; never nil
// after Open.
func (f *FSM) NodePins() Members { return *f.members.Load() }

// NodeRecord returns the stored pin of a member as stored (unverified), or
// ErrNotFound.
func (f *FSM) NodeRecord(id string) (*cofferv1.NodeRecord, error) {
	var r cofferv1.NodeRecord
	if err := getProto(f.db, nodeKey(id), &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// rebuildMembers loads every node record whose tag verifies and swaps the
// view in.
func (f *FSM) rebuildMembers() {
	recs, err := scanAll[cofferv1.NodeRecord](f.db, prefixNode)
	m := Members{}
	if err != nil {
		f.logger.Error("fsm: cannot read the member pins; every member counts as not admitted", "err", err)
		f.members.Store(&m)
		return
	}
	var cluster *cofferv1.ClusterInfo
	if f.verify != nil && len(recs) > 0 {
		if cluster, err = f.readCluster(); err != nil {
			f.logger.Error("fsm: cluster info unreadable; member pins cannot be verified", "err", err)
			f.members.Store(&m)
			return
		}
	}
	for _, r := range recs {
		if f.verify != nil {
			if err := f.verify(nodeKey(r.GetId()), r, cluster); err != nil {
				f.logger.Error("fsm: a member pin fails its integrity check; the member counts as not admitted", "node", r.GetId(), "err", err)
				continue
			}
		}
		m[r.GetId()] = r
	}
	f.members.Store(&m)
}

// applyPinNode writes a member's pin. With only_if_absent, an existing pin
// is kept and the command changes nothing (two leaders admitting the same
// member in turn); with expected_sha256, likewise unless the current pin
// is that one. The result says which pin holds.
func applyPinNode(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.PinNodeCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	rec := c.GetNode()
	if rec.GetId() == "" || len(rec.GetCertSha256()) != certSHA256Len || (len(rec.GetPreviousSha256()) != 0 && len(rec.GetPreviousSha256()) != certSHA256Len) {
		return Result{Err: fmt.Errorf("%w: a node pin needs an id and 32-byte certificate fingerprints", ErrInvalidCommand)}
	}
	var cur cofferv1.NodeRecord
	switch err := getProto(a.b, nodeKey(rec.GetId()), &cur); err {
	case nil:
		if c.GetOnlyIfAbsent() || (len(c.GetExpectedSha256()) > 0 && !bytes.Equal(cur.GetCertSha256(), c.GetExpectedSha256())) {
			return Result{Node: &cur, Duplicate: true}
		}
	case ErrNotFound:
		if len(c.GetExpectedSha256()) > 0 {
			return Result{Err: fmt.Errorf("%w: no pin of %q to replace", ErrNotFound, rec.GetId())}
		}
	default:
		panic(err.Error())
	}
	mustSet(a.b, nodeKey(rec.GetId()), rec)
	a.membersChanged = true
	return Result{Node: rec}
}
