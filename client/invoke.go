package client

import (
	"context"
	"math/rand/v2"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// maxHintLen bounds a leader hint; longer values are ignored.
const maxHintLen = 256

// rpc is one attempt of a call against one endpoint.
type rpc[T any] func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (T, error)

// callKind tells invoke how to route a call.
type callKind int

const (
	// read calls are spread over every endpoint.
	read callKind = iota
	// write calls go to the last known leader first: a follower would
	// forward them there anyway.
	write
)

// invoke runs call with the client's load balancing and retry policy (see the
// package documentation).
func invoke[T any](ctx context.Context, c *Client, method string, kind callKind, call rpc[T]) (T, error) {
	var zero T
	if c.closed.Load() {
		return zero, ErrClosed
	}
	var (
		prev    *endpoint
		hint    string
		lastErr error
	)
	if kind == write {
		if l := c.leader.Load(); l != nil {
			hint = *l
		}
	}
	for attempt := 1; attempt <= c.cfg.MaxAttempts; attempt++ {
		if attempt > 1 && hint == "" {
			if err := sleep(ctx, c.backoff(attempt)); err != nil {
				return zero, &Error{Method: method, Endpoint: prev.addr, Attempts: attempt - 1,
					Exhausted: true, ctxErr: err, Err: lastErr}
			}
		}
		ep := c.pick(prev, hint)
		resp, md, err := attemptOnce(ctx, c.cfg.RequestTimeout, ep, call)
		if err == nil {
			if kind == write {
				c.learnLeader(leaderHint(md))
			}
			return resp, nil
		}
		trailer := md
		lastErr = err
		prev = ep
		if !retryable(ctx, err) {
			return zero, &Error{Method: method, Endpoint: ep.addr, Attempts: attempt, Err: err}
		}
		hint = ""
		if status.Code(err) == codes.Unavailable {
			c.markDown(ep)
			c.forgetLeader(ep.addr)
			if h := leaderHint(trailer); h != ep.addr {
				hint = h
			}
		}
	}
	return zero, &Error{Method: method, Endpoint: prev.addr, Attempts: c.cfg.MaxAttempts,
		Exhausted: true, Err: lastErr}
}

// attemptOnce makes one attempt with its own deadline and returns the
// response with the header metadata, or the error as a gRPC status error with
// the header and trailer metadata merged.
func attemptOnce[T any](ctx context.Context, timeout time.Duration, ep *endpoint, call rpc[T]) (T, metadata.MD, error) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var header, trailer metadata.MD
	resp, err := call(actx, ep, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		var zero T
		return zero, metadata.Join(header, trailer), toStatusErr(err)
	}
	return resp, header, nil
}

// learnLeader remembers the leader a write response named, if it is one of
// the endpoints (a hint never adds endpoints on success).
func (c *Client) learnLeader(addr string) {
	if addr == "" || find(*c.eps.Load(), addr) == nil {
		return
	}
	if l := c.leader.Load(); l == nil || *l != addr {
		c.leader.Store(&addr)
	}
}

// forgetLeader drops the remembered leader if it is addr.
func (c *Client) forgetLeader(addr string) {
	if l := c.leader.Load(); l != nil && *l == addr {
		c.leader.CompareAndSwap(l, nil)
	}
}

// retryable reports whether a failed attempt may be retried: Unavailable, or
// DeadlineExceeded of the attempt while the caller's context is still live.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	default:
		return false
	}
}

// leaderHint returns the leader address attached to md, or "" when there is
// none or it does not look like host:port.
func leaderHint(md metadata.MD) string {
	vals := md.Get(LeaderAddrKey)
	if len(vals) == 0 {
		return ""
	}
	h := vals[len(vals)-1]
	if h == "" || len(h) > maxHintLen {
		return ""
	}
	if host, port, err := net.SplitHostPort(h); err != nil || host == "" || port == "" {
		return ""
	}
	return h
}

// backoff is the wait before the given attempt (2 or later): Backoff doubled
// per earlier retry, capped, with ±20% jitter.
func (c *Client) backoff(attempt int) time.Duration {
	b := c.cfg.Backoff
	if b <= 0 {
		return 0
	}
	limit := b * maxBackoffFactor
	for i := 2; i < attempt && b < limit; i++ {
		b *= 2
	}
	b = min(b, limit)
	jitter := time.Duration(rand.Int64N(int64(b)/5*2+1)) - b/5
	return b + jitter
}

// sleep waits for d or until ctx ends, returning ctx's error in that case.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
