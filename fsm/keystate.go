package fsm

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
)

// Key life cycle (SET_KEY_STATE).
//
// A state change replaces the key's record with the next one, which the
// leader built: the new state, the next revision, the time of the change,
// and either the material re-sealed under the record's new associated data
// or, for DESTROYED, no material and no escrow copies at all. Apply checks
// what must hold against committed state, alike on every replica: the
// record exists at the expected revision, nothing but the life-cycle
// fields (and the re-sealed material) changed, and the transition is one
// authz.KeyTransitionAllowed allows from the key's state at the time of the
// change.

// ErrKeyState refuses a state change the key's life cycle does not allow.
var ErrKeyState = errors.New("fsm: key state does not allow this change")

func applySetKeyState(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.SetKeyStateCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	next := c.GetKey()
	id := next.GetGkid()
	cur, err := a.keyAt(id, c.GetExpectedRevision())
	if err != nil {
		return Result{Err: err}
	}
	if err := checkNextKeyRecord(cur, next); err != nil {
		return Result{Err: err}
	}
	from, to := authz.KeyStateAt(cur, time.Unix(0, next.GetStateChangedUnixNano())), next.GetState()
	if !authz.KeyTransitionAllowed(from, to) {
		return Result{Err: fmt.Errorf("%w: key %s is %s and cannot become %s", ErrKeyState, id, authz.StateName(from), authz.StateName(to))}
	}
	if len(cur.GetWrappedMaterial()) > 0 && len(next.GetWrappedMaterial()) == 0 {
		a.materialRemoved(index)
	}
	return a.replaceKey(next)
}

// keyAt reads key id as of this point of the batch for a change expecting
// it at revision expected: ErrNotFound or ErrConflict otherwise. A record
// that cannot be read stops the replica.
func (a *applyCtx) keyAt(id string, expected uint64) (*cofferv1.KeyRecord, error) {
	cur, err := a.key(id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: key %s", ErrNotFound, id)
	} else if err != nil {
		panic(err.Error())
	}
	if cur.GetRevision() != expected {
		return nil, fmt.Errorf("%w: key %s is at revision %d, not %d", ErrConflict, id, cur.GetRevision(), expected)
	}
	return cur, nil
}

// replaceKey writes next over its key's record: later commands of the batch
// read it (key), and the key cache takes it after the commit.
func (a *applyCtx) replaceKey(next *cofferv1.KeyRecord) Result {
	mustSet(a.b, keyKey(next.GetGkid()), next)
	if a.keysChanged == nil {
		a.keysChanged = map[string]*cofferv1.KeyRecord{}
	}
	a.keysChanged[next.GetGkid()] = next
	return Result{Key: next}
}

// checkNextKeyRecord refuses a next record that changes more than a state
// change may.
func checkNextKeyRecord(cur, next *cofferv1.KeyRecord) error {
	switch {
	case next.GetPolicy() != cur.GetPolicy() || next.GetResource() != cur.GetResource() || next.GetOwner() != cur.GetOwner() ||
		next.GetAlgorithm() != cur.GetAlgorithm() || next.GetCreatedUnixNano() != cur.GetCreatedUnixNano() ||
		next.GetActivateAtUnixNano() != cur.GetActivateAtUnixNano():
		return fmt.Errorf("%w: a state change of key %s changes more than its state", ErrInvalidCommand, cur.GetGkid())
	case next.GetRevision() != cur.GetRevision()+1:
		return fmt.Errorf("%w: key %s: next revision %d after %d", ErrInvalidCommand, cur.GetGkid(), next.GetRevision(), cur.GetRevision())
	case next.GetStateChangedUnixNano() <= 0:
		return fmt.Errorf("%w: key %s: state change without a time", ErrInvalidCommand, cur.GetGkid())
	case next.GetVersion() != cur.GetVersion() || next.GetVersionCreatedUnixNano() != cur.GetVersionCreatedUnixNano() ||
		len(next.GetVersions()) != len(cur.GetVersions()):
		return fmt.Errorf("%w: a state change of key %s changes its versions", ErrInvalidCommand, cur.GetGkid())
	case cur.GetCompromised() && !next.GetCompromised(),
		next.GetState() == cofferv1.KeyState_KEY_STATE_COMPROMISED && !next.GetCompromised():
		return fmt.Errorf("%w: key %s: the compromise mark is kept", ErrInvalidCommand, cur.GetGkid())
	case next.GetState() == cofferv1.KeyState_KEY_STATE_DESTROYED:
		// No material of any version; escrow copies gone, or kept until a
		// purge time (the policy's escrow retention).
		if len(next.GetWrappedMaterial()) != 0 || !keptEscrow(cur.GetEscrow(), next.GetEscrow(), next.GetEscrowPurgeUnixNano()) {
			return fmt.Errorf("%w: destroyed key %s still carries material", ErrInvalidCommand, cur.GetGkid())
		}
		for i, v := range next.GetVersions() {
			if len(v.GetWrappedMaterial()) != 0 || !keptEscrow(cur.GetVersions()[i].GetEscrow(), v.GetEscrow(), v.GetEscrowPurgeUnixNano()) {
				return fmt.Errorf("%w: destroyed key %s still carries version %d's material", ErrInvalidCommand, cur.GetGkid(), v.GetVersion())
			}
		}
	case len(next.GetWrappedMaterial()) == 0 || len(next.GetEscrow()) != len(cur.GetEscrow()):
		return fmt.Errorf("%w: key %s loses its material or escrow copies without being destroyed", ErrInvalidCommand, cur.GetGkid())
	default:
		for i, v := range cur.GetVersions() {
			if !proto.Equal(v, next.GetVersions()[i]) {
				return fmt.Errorf("%w: a state change of key %s changes its version %d", ErrInvalidCommand, cur.GetGkid(), v.GetVersion())
			}
		}
	}
	return nil
}

// key reads a key record as of this point of the batch: one the batch
// replaced, else the committed one through the key cache.
func (a *applyCtx) key(gkid string) (*cofferv1.KeyRecord, error) {
	if k, ok := a.keysChanged[gkid]; ok {
		return k, nil
	}
	return a.f.cachedKey(a.b, gkid)
}
