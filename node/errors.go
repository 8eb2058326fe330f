package node

import "errors"

// Sentinel errors of the request path. status.go maps them (and the fsm and
// hsmwrap sentinels) to gRPC codes; nothing else does.
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
	ErrKeystore        = errors.New("keystore unavailable")
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
