package fsm

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
)

// applyChangeKey applies a rotation (a new newest version, the old
// newest kept as an older version), the retirement of one older version
// (its material gone, its escrow copies too or kept under the policy's
// retention), a new use policy, or the purge of escrow copies whose
// retention ended. The leader built and sealed the
// next record; Apply checks it against the committed one: the expected
// revision, the key's state, and that nothing else changed.
func applyChangeKey(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.ChangeKeyCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	next := c.GetKey()
	id := next.GetGkid()
	cur, err := a.keyAt(id, c.GetExpectedRevision())
	if err != nil {
		return Result{Err: err}
	}
	if err := checkSameKey(cur, next, c.GetChange() == cofferv1.ChangeKeyCommand_CHANGE_USE_POLICY); err != nil {
		return Result{Err: err}
	}
	switch c.GetChange() {
	case cofferv1.ChangeKeyCommand_CHANGE_USE_POLICY:
		err = checkSameVersions(cur, next)
	case cofferv1.ChangeKeyCommand_CHANGE_ROTATE:
		err = checkRotation(cur, next)
	case cofferv1.ChangeKeyCommand_CHANGE_RETIRE:
		err = checkRetirement(cur, next)
	case cofferv1.ChangeKeyCommand_CHANGE_PURGE_ESCROW:
		err = checkPurge(cur, next, c.GetAudit().GetTimeUnixNano())
	default:
		err = fmt.Errorf("%w: key %s: unknown version change %v", ErrInvalidCommand, id, c.GetChange())
	}
	if err != nil {
		return Result{Err: err}
	}
	if c.GetChange() == cofferv1.ChangeKeyCommand_CHANGE_RETIRE || c.GetChange() == cofferv1.ChangeKeyCommand_CHANGE_PURGE_ESCROW {
		// A version's material, or escrow copies, left the record.
		a.materialRemoved(index)
	}
	return a.replaceKey(next)
}

// checkSameKey refuses a next record that changes what a key change never
// changes: the key's identity, state, times and policies (the use policy
// only if usePolicy).
func checkSameKey(cur, next *cofferv1.KeyRecord, usePolicy bool) error {
	switch {
	case !usePolicy && !proto.Equal(next.GetUsePolicy(), cur.GetUsePolicy()):
		return fmt.Errorf("%w: a version change of key %s changes its use policy", ErrInvalidCommand, cur.GetGkid())
	case next.GetGkid() != cur.GetGkid() || next.GetPolicy() != cur.GetPolicy() || next.GetResource() != cur.GetResource() ||
		next.GetOwner() != cur.GetOwner() || next.GetAlgorithm() != cur.GetAlgorithm() || next.GetCreatedUnixNano() != cur.GetCreatedUnixNano() ||
		next.GetActivateAtUnixNano() != cur.GetActivateAtUnixNano() || next.GetState() != cur.GetState() ||
		next.GetStateChangedUnixNano() != cur.GetStateChangedUnixNano() || next.GetCompromised() != cur.GetCompromised() ||
		!proto.Equal(next.GetCachePolicy(), cur.GetCachePolicy()):
		return fmt.Errorf("%w: a change of key %s changes more than it may", ErrInvalidCommand, cur.GetGkid())
	case next.GetRevision() != cur.GetRevision()+1:
		return fmt.Errorf("%w: key %s: next revision %d after %d", ErrInvalidCommand, cur.GetGkid(), next.GetRevision(), cur.GetRevision())
	case len(next.GetWrappedMaterial()) == 0 && len(cur.GetWrappedMaterial()) != 0:
		return fmt.Errorf("%w: key %s: a change without the newest version's material", ErrInvalidCommand, cur.GetGkid())
	}
	return nil
}

// checkRotation checks a rotation: only an active key, the next version
// number, and the old newest version kept, with its escrow copies, as the
// last older version.
func checkRotation(cur, next *cofferv1.KeyRecord) error {
	id := cur.GetGkid()
	at := time.Unix(0, next.GetVersionCreatedUnixNano())
	if st := authz.KeyStateAt(cur, at); st != cofferv1.KeyState_KEY_STATE_ACTIVE {
		return fmt.Errorf("%w: key %s is %s; only an active key is rotated", ErrKeyState, id, authz.StateName(st))
	}
	old := authz.NewestVersion(cur)
	if next.GetVersion() != old+1 || next.GetVersionCreatedUnixNano() <= 0 {
		return fmt.Errorf("%w: key %s: rotation from version %d to %d", ErrInvalidCommand, id, old, next.GetVersion())
	}
	n := len(cur.GetVersions())
	if len(next.GetVersions()) != n+1 {
		return fmt.Errorf("%w: key %s: rotation keeps %d older versions, not %d", ErrInvalidCommand, id, n+1, len(next.GetVersions()))
	}
	for i, v := range cur.GetVersions() {
		if !proto.Equal(v, next.GetVersions()[i]) {
			return fmt.Errorf("%w: key %s: rotation changes older version %d", ErrInvalidCommand, id, v.GetVersion())
		}
	}
	kept := next.GetVersions()[n]
	if kept.GetVersion() != old || kept.GetCreatedUnixNano() != authz.NewestVersionCreated(cur).UnixNano() ||
		len(kept.GetWrappedMaterial()) == 0 || kept.GetRetiredUnixNano() != 0 || len(kept.GetEscrow()) != len(cur.GetEscrow()) {
		return fmt.Errorf("%w: key %s: rotation does not keep version %d as it was", ErrInvalidCommand, id, old)
	}
	if len(next.GetEscrow()) != len(cur.GetEscrow()) {
		return fmt.Errorf("%w: key %s: the new version has %d escrow copies, the old one %d", ErrInvalidCommand, id, len(next.GetEscrow()), len(cur.GetEscrow()))
	}
	return nil
}

// checkRetirement checks the retirement of exactly one older version: its
// material gone, its escrow copies gone or kept until a purge time, a time
// set, everything else as it was.
func checkRetirement(cur, next *cofferv1.KeyRecord) error {
	id := cur.GetGkid()
	if next.GetVersion() != cur.GetVersion() || next.GetVersionCreatedUnixNano() != cur.GetVersionCreatedUnixNano() ||
		len(next.GetVersions()) != len(cur.GetVersions()) || len(next.GetEscrow()) != len(cur.GetEscrow()) {
		return fmt.Errorf("%w: key %s: a retirement changes the newest version", ErrInvalidCommand, id)
	}
	retired := 0
	for i, v := range cur.GetVersions() {
		w := next.GetVersions()[i]
		if proto.Equal(v, w) {
			continue
		}
		retired++
		if w.GetVersion() != v.GetVersion() || w.GetCreatedUnixNano() != v.GetCreatedUnixNano() || v.GetRetiredUnixNano() != 0 ||
			w.GetRetiredUnixNano() <= 0 || len(w.GetWrappedMaterial()) != 0 || !keptEscrow(v.GetEscrow(), w.GetEscrow(), w.GetEscrowPurgeUnixNano()) ||
			w.GetKekVersion() != v.GetKekVersion() {
			return fmt.Errorf("%w: key %s: version %d is not retired as a retirement must", ErrInvalidCommand, id, v.GetVersion())
		}
	}
	if retired != 1 {
		return fmt.Errorf("%w: key %s: a retirement changes %d versions, not one", ErrInvalidCommand, id, retired)
	}
	return nil
}

// checkSameVersions refuses a use policy change that changes the versions.
func checkSameVersions(cur, next *cofferv1.KeyRecord) error {
	if next.GetVersion() != cur.GetVersion() || next.GetVersionCreatedUnixNano() != cur.GetVersionCreatedUnixNano() ||
		len(next.GetVersions()) != len(cur.GetVersions()) || len(next.GetEscrow()) != len(cur.GetEscrow()) {
		return fmt.Errorf("%w: a use policy change of key %s changes its versions", ErrInvalidCommand, cur.GetGkid())
	}
	for i, v := range cur.GetVersions() {
		if !proto.Equal(v, next.GetVersions()[i]) {
			return fmt.Errorf("%w: a use policy change of key %s changes its version %d", ErrInvalidCommand, cur.GetGkid(), v.GetVersion())
		}
	}
	return nil
}

// PurgeExpiredEscrow returns a copy of rec without the escrow copies whose
// retention ended at or before at (unix nanoseconds): a destroyed key's
// (escrow_purge_unix_nano) and retired versions' (theirs), with those times
// cleared, and how many copies it removed. Revision and material are as in
// rec: the leader sets them (CHANGE_PURGE_ESCROW), and Apply checks the
// next record against this function's result.
func PurgeExpiredEscrow(rec *cofferv1.KeyRecord, at int64) (*cofferv1.KeyRecord, int) {
	next, n := proto.CloneOf(rec), 0
	if t := next.GetEscrowPurgeUnixNano(); t != 0 && t <= at {
		n += len(next.GetEscrow())
		next.Escrow, next.EscrowPurgeUnixNano = nil, 0
	}
	for _, v := range next.GetVersions() {
		if t := v.GetEscrowPurgeUnixNano(); t != 0 && t <= at {
			n += len(v.GetEscrow())
			v.Escrow, v.EscrowPurgeUnixNano = nil, 0
		}
	}
	return next, n
}

// checkPurge checks a purge of expired escrow copies as of the time of the
// command's audit entry: next is cur less exactly the copies
// PurgeExpiredEscrow removes, at the next revision, with the newest
// material re-sealed (or none, for a destroyed key).
func checkPurge(cur, next *cofferv1.KeyRecord, at int64) error {
	want, n := PurgeExpiredEscrow(cur, at)
	want.Revision, want.WrappedMaterial = next.GetRevision(), next.GetWrappedMaterial()
	if n == 0 || !proto.Equal(want, next) {
		return fmt.Errorf("%w: key %s: a purge must delete exactly the escrow copies whose retention ended", ErrInvalidCommand, cur.GetGkid())
	}
	return nil
}

// keptEscrow reports whether next, the escrow copies of material that is
// being deleted, are either gone or cur's own, kept until purge (a policy's
// escrow retention).
func keptEscrow(cur, next []*cofferv1.EscrowCopy, purge int64) bool {
	if len(next) == 0 {
		return true
	}
	if purge <= 0 || len(next) != len(cur) {
		return false
	}
	for i := range cur {
		if !proto.Equal(cur[i], next[i]) {
			return false
		}
	}
	return true
}
