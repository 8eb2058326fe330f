package client

import (
	"context"
	"net"

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
	r := c.newRetry(ctx, method)
	var (
		prev *endpoint
		hint string
		// hinted is set when hint came from a failed attempt's error.
		hinted bool
	)
	if kind == write {
		if l := c.leader.Load(); l != nil {
			hint = *l
		}
	}
	for {
		ep := c.pick(prev, hint)
		resp, md, err := attemptOnce(r, ep, call)
		if err == nil {
			if kind == write {
				c.learnLeader(leaderHint(md))
			}
			return resp, nil
		}
		prev = ep
		next := ""
		if status.Code(err) == codes.Unavailable {
			c.markDown(ep)
			c.forgetLeader(ep.addr)
			if h := leaderHint(md); h != ep.addr {
				next = h
			}
		}
		// A fresh hint is followed at once; a hint from an attempt that was
		// itself following one waits the backoff, so nodes that name each
		// other cannot make the client spin.
		if e := r.next(ep, err, next != "" && !hinted); e != nil {
			return zero, e
		}
		hint, hinted = next, next != ""
	}
}

// attemptOnce makes one attempt with its own deadline (Config.RequestTimeout
// clipped to the call's) and returns the response with the header metadata,
// or the error as a gRPC status error with the header and trailer metadata
// merged.
func attemptOnce[T any](r *retry, ep *endpoint, call rpc[T]) (T, metadata.MD, error) {
	actx, cancel := r.attemptContext()
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
