package cluster

import "errors"

// Sentinel errors; functions wrap them with %w.
var (
	// ErrConfig is a configuration that cannot work.
	ErrConfig = errors.New("cluster: invalid configuration")
	// ErrJoin is a gossip join that reached no member.
	ErrJoin = errors.New("cluster: could not join")
	// ErrRetryLater is an admission that cannot be decided yet.
	ErrRetryLater = errors.New("cluster: not ready to admit yet")
)
