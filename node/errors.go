package node

import "errors"

// Sentinel errors of the request path. status.go maps them (and the fsm,
// barrier and hsmwrap sentinels) to gRPC codes; nothing else does.
var (
	ErrConfig          = errors.New("node: invalid configuration")
	ErrInvalidArgument = errors.New("invalid argument")
	ErrNotFound        = errors.New("not found")
	ErrNoLeader        = errors.New("no leader")
	ErrNotLeader       = errors.New("not the leader")
	ErrShuttingDown    = errors.New("node is shutting down")
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrPermission      = errors.New("permission denied")
	ErrNotReady        = errors.New("cluster is not initialised yet")
	ErrOverloaded      = errors.New("node is overloaded")
	ErrDiverged        = errors.New("replica diverged")
	// ErrNotMember refuses a node identity that is not in the Raft
	// configuration (never was, or was removed).
	ErrNotMember = errors.New("not a member of this cluster")
	// ErrPinMismatch refuses a member presenting a certificate other than
	// the one pinned at its admission.
	ErrPinMismatch = errors.New("certificate is not the one pinned for this member")
	// ErrNotAdmitted refuses a member whose certificate the leader has not
	// pinned yet (retryable: the leader pins it once it reaches it).
	ErrNotAdmitted = errors.New("member not admitted yet")
	// ErrPrecondition refuses a request the cluster's state does not allow
	// now (not every member runs a build that applies the change).
	ErrPrecondition = errors.New("failed precondition")
	// ErrDamagedStore refuses to start a node whose Raft log or state
	// files fail their checks (storecheck.go).
	ErrDamagedStore = errors.New("node: damaged store")
	// ErrStoreLocked refuses to start a node whose stores another process holds.
	ErrStoreLocked = errors.New("node: store in use")
	// ErrInternal is a broken contract inside the node (a bug), never the
	// caller's doing.
	ErrInternal = errors.New("internal error")
)

// leaderHint is an error that knows where the leader's client API is.
type leaderHint struct {
	err        error
	leaderAddr string
}

func (e *leaderHint) Error() string {
	if e.leaderAddr == "" {
		return e.err.Error()
	}
	return e.err.Error() + " (leader at " + e.leaderAddr + ")"
}

func (e *leaderHint) Unwrap() error { return e.err }
