package authz

import (
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// CompromisedKey is the reason an audit entry records for a granted use of
// a key marked compromised, so that what the key protected can be found.
const CompromisedKey = "key marked compromised"

// KeyStateAt is rec's life-cycle state at time at: a PRE_ACTIVE key whose
// activation time has come is ACTIVE. A record without a state (written
// before keys had a life cycle) is ACTIVE.
func KeyStateAt(rec *cofferv1.KeyRecord, at time.Time) cofferv1.KeyState {
	st := rec.GetState()
	switch {
	case st == cofferv1.KeyState_KEY_STATE_UNSPECIFIED:
		return cofferv1.KeyState_KEY_STATE_ACTIVE
	case st == cofferv1.KeyState_KEY_STATE_PRE_ACTIVE && rec.GetActivateAtUnixNano() != 0 && at.UnixNano() >= rec.GetActivateAtUnixNano():
		return cofferv1.KeyState_KEY_STATE_ACTIVE
	}
	return st
}

// KeyTransitionAllowed reports whether a key in state from may move to
// state to: PRE_ACTIVE to ACTIVE, ACTIVE to DEACTIVATED, any state but
// DESTROYED to COMPROMISED or DESTROYED. No key returns to an earlier state
// (NIST SP 800-57 part 1, 7.1).
func KeyTransitionAllowed(from, to cofferv1.KeyState) bool {
	switch to {
	case cofferv1.KeyState_KEY_STATE_ACTIVE:
		return from == cofferv1.KeyState_KEY_STATE_PRE_ACTIVE
	case cofferv1.KeyState_KEY_STATE_DEACTIVATED:
		return from == cofferv1.KeyState_KEY_STATE_ACTIVE
	case cofferv1.KeyState_KEY_STATE_COMPROMISED:
		return from == cofferv1.KeyState_KEY_STATE_PRE_ACTIVE || from == cofferv1.KeyState_KEY_STATE_ACTIVE || from == cofferv1.KeyState_KEY_STATE_DEACTIVATED
	case cofferv1.KeyState_KEY_STATE_DESTROYED:
		return from != cofferv1.KeyState_KEY_STATE_DESTROYED && from != cofferv1.KeyState_KEY_STATE_UNSPECIFIED
	}
	return false
}

// stateAllows reports whether a key in state st may be used for op: every
// operation while ACTIVE; decrypt too while DEACTIVATED or COMPROMISED;
// describe (and list) in every state.
func stateAllows(st cofferv1.KeyState, op Op) bool {
	switch op {
	case OpDescribe, OpList, OpState, OpDestroy:
		return true
	case OpDecrypt:
		return st == cofferv1.KeyState_KEY_STATE_ACTIVE || st == cofferv1.KeyState_KEY_STATE_DEACTIVATED || st == cofferv1.KeyState_KEY_STATE_COMPROMISED
	}
	return st == cofferv1.KeyState_KEY_STATE_ACTIVE
}

// StateName is a key state as users write it ("deactivated").
func StateName(st cofferv1.KeyState) string {
	switch st {
	case cofferv1.KeyState_KEY_STATE_ACTIVE:
		return "active"
	case cofferv1.KeyState_KEY_STATE_PRE_ACTIVE:
		return "pre-active"
	case cofferv1.KeyState_KEY_STATE_DEACTIVATED:
		return "deactivated"
	case cofferv1.KeyState_KEY_STATE_COMPROMISED:
		return "compromised"
	case cofferv1.KeyState_KEY_STATE_DESTROYED:
		return "destroyed"
	}
	return st.String()
}
