package authz

import (
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func TestKeyLifeCycle(t *testing.T) {
	const (
		pre    = cofferv1.KeyState_KEY_STATE_PRE_ACTIVE
		active = cofferv1.KeyState_KEY_STATE_ACTIVE
		deact  = cofferv1.KeyState_KEY_STATE_DEACTIVATED
		comp   = cofferv1.KeyState_KEY_STATE_COMPROMISED
		gone   = cofferv1.KeyState_KEY_STATE_DESTROYED
	)
	allowed := map[[2]cofferv1.KeyState]bool{
		{pre, active}: true, {active, deact}: true,
		{pre, comp}: true, {active, comp}: true, {deact, comp}: true,
		{pre, gone}: true, {active, gone}: true, {deact, gone}: true, {comp, gone}: true,
	}
	states := []cofferv1.KeyState{cofferv1.KeyState_KEY_STATE_UNSPECIFIED, pre, active, deact, comp, gone}
	for _, from := range states {
		for _, to := range states {
			if got := KeyTransitionAllowed(from, to); got != allowed[[2]cofferv1.KeyState{from, to}] {
				t.Errorf("%v -> %v: allowed %v", from, to, got)
			}
		}
	}
	at := time.Unix(100, 0)
	for _, c := range []struct {
		rec  *cofferv1.KeyRecord
		want cofferv1.KeyState
	}{
		{&cofferv1.KeyRecord{}, active},
		{&cofferv1.KeyRecord{State: pre}, pre},
		{&cofferv1.KeyRecord{State: pre, ActivateAtUnixNano: at.UnixNano()}, active},
		{&cofferv1.KeyRecord{State: pre, ActivateAtUnixNano: at.UnixNano() + 1}, pre},
		{&cofferv1.KeyRecord{State: deact, ActivateAtUnixNano: 1}, deact},
	} {
		if got := KeyStateAt(c.rec, at); got != c.want {
			t.Errorf("%v at %v: %v, want %v", c.rec, at, got, c.want)
		}
	}
	for _, c := range []struct {
		st   cofferv1.KeyState
		op   Op
		want bool
	}{
		{active, OpGet, true}, {active, OpEncrypt, true}, {pre, OpGet, false}, {pre, OpDescribe, true},
		{deact, OpDecrypt, true}, {deact, OpEncrypt, false}, {deact, OpDataKey, false}, {deact, OpGet, false},
		{comp, OpDecrypt, true}, {comp, OpGet, false}, {gone, OpDecrypt, false}, {gone, OpDescribe, true},
	} {
		if got := stateAllows(c.st, c.op); got != c.want {
			t.Errorf("%v allows %s: %v, want %v", c.st, c.op, got, c.want)
		}
	}
}
