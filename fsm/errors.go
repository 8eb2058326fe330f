package fsm

import "errors"

// Business errors returned as values in Result.Err by Apply, and by the read
// methods. They never stop the state machine.
var (
	ErrNotFound           = errors.New("fsm: not found")
	ErrPolicyNotFound     = errors.New("fsm: custody policy not found")
	ErrPolicyExists       = errors.New("fsm: custody policy already exists")
	ErrKeyExists          = errors.New("fsm: key already exists")
	ErrKEKVersionUnknown  = errors.New("fsm: kek version unknown to the policy")
	ErrAlreadyInitialized = errors.New("fsm: cluster already initialized")
	ErrNotInitialized     = errors.New("fsm: cluster not initialized")
	ErrInvalidCommand     = errors.New("fsm: invalid command")
	ErrInvalidConfig      = errors.New("fsm: invalid configuration")
	ErrStaleIndex         = errors.New("fsm: log index already applied")
	ErrCorrupt            = errors.New("fsm: stored state is corrupt")
	ErrBadSnapshot        = errors.New("fsm: snapshot is malformed")
	ErrClosed             = errors.New("fsm: closed")
	ErrClientNotFound     = errors.New("fsm: client not registered")
	ErrClientExists       = errors.New("fsm: client already registered")
	ErrRuleNotFound       = errors.New("fsm: acl rule not found")
	ErrRuleExists         = errors.New("fsm: acl rule already exists")
	ErrConflict           = errors.New("fsm: record changed concurrently; retry")
	ErrDiverged           = errors.New("fsm: this replica's audit chain differs from the checkpoint; it has diverged")
	ErrNoCheckpoint       = errors.New("fsm: no audit checkpoint to prune up to")
	// ErrRestoring refuses a state digest while a snapshot restore is
	// replacing the store.
	ErrRestoring = errors.New("fsm: a snapshot restore is in progress")
	// ErrAbandoned refuses a change whose request already has its audit
	// entry: the node that accepted it recorded it as failed (a fallback)
	// before the change committed, so the change is not applied.
	ErrAbandoned = errors.New("fsm: request abandoned by the node that accepted it; the change was not applied")
)
