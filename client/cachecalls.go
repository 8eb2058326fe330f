package client

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// The calls of CacheService: the policy the server sets for this client's
// key cache, the security officer's changes to it, and the stream of
// invalidations.

// GetCachePolicy returns the calling client's cache policy in force (its
// own, or the cluster default), with the cluster's cache generation.
func (c *Client) GetCachePolicy(ctx context.Context, req *cofferv1.GetCachePolicyRequest) (*cofferv1.GetCachePolicyResponse, error) {
	if req == nil {
		return nil, nilRequest("GetCachePolicy")
	}
	return invoke(ctx, c, "GetCachePolicy", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.GetCachePolicyResponse, error) {
		return cofferv1.NewCacheServiceClient(ep.conn).GetCachePolicy(ctx, req, opts...)
	})
}

// SetCachePolicy sets one client's cache policy, or the cluster default
// when req.Client is empty, or with req.Clear removes one (security
// officer). It is a write: retried only where the first attempt cannot
// have reached a node.
func (c *Client) SetCachePolicy(ctx context.Context, req *cofferv1.SetCachePolicyRequest) (*cofferv1.SetCachePolicyResponse, error) {
	if req == nil {
		return nil, nilRequest("SetCachePolicy")
	}
	return invoke(ctx, c, "SetCachePolicy", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.SetCachePolicyResponse, error) {
		return cofferv1.NewCacheServiceClient(ep.conn).SetCachePolicy(ctx, req, opts...)
	})
}

// FlushCaches orders every client to drop its key cache (security
// officer): it raises the cluster's cache generation and returns the new
// one. It is a write: retried only where the first attempt cannot have
// reached a node.
func (c *Client) FlushCaches(ctx context.Context, req *cofferv1.FlushCachesRequest) (*cofferv1.FlushCachesResponse, error) {
	if req == nil {
		return nil, nilRequest("FlushCaches")
	}
	return invoke(ctx, c, "FlushCaches", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.FlushCachesResponse, error) {
		return cofferv1.NewCacheServiceClient(ep.conn).FlushCaches(ctx, req, opts...)
	})
}

// WatchCache streams the calling client's cache invalidations after
// req.AfterSeq (0: from now on), calling fn with each event in seq order.
// It returns when ctx ends (with ctx's error), when fn returns an error
// (that error), on a failure that is not retryable (the client was
// deactivated: PermissionDenied, after a drop_all event), or when the
// cluster cannot be reached, with the retry budget of AuditFollow. A node
// that fails or stops is left for another, resuming after the seq of the
// last event fn was given, so fn sees each event once, in order. A stream
// that started from now (AfterSeq 0) and failed before its first event
// can only resume from now on the next node, and changes committed in
// between would not be reported: fn is then given a drop_all event with
// seq 0 before the stream is opened again.
func (c *Client) WatchCache(ctx context.Context, req *cofferv1.WatchCacheRequest, fn func(*cofferv1.CacheEvent) error) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if req == nil {
		return nilRequest("WatchCache")
	}
	if fn == nil {
		return &Error{Method: "WatchCache", Err: status.Error(codes.InvalidArgument, "nil callback")}
	}
	// Resumed streams start after the last event fn was given.
	req = proto.CloneOf(req)
	return c.resumeStream(ctx, "WatchCache", func(ctx context.Context, ep *endpoint, again bool) (bool, error) {
		if again && req.GetAfterSeq() == 0 {
			if err := fn(&cofferv1.CacheEvent{Event: &cofferv1.CacheEvent_DropAll{DropAll: true}}); err != nil {
				return false, callbackError{err}
			}
		}
		return watchCacheFrom(ctx, ep, req, fn)
	})
}

// watchCacheFrom runs one Watch stream against ep. Once an event has been
// handed to fn, req asks for what follows it. It reports whether any event
// arrived; a stream the node ends normally is reported as Unavailable, to
// resume.
func watchCacheFrom(ctx context.Context, ep *endpoint, req *cofferv1.WatchCacheRequest, fn func(*cofferv1.CacheEvent) error) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cofferv1.NewCacheServiceClient(ep.conn).Watch(ctx, req)
	if err != nil {
		return false, err
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return progressed, status.Error(codes.Unavailable, "the node ended the cache watch")
		}
		if err != nil {
			return progressed, err
		}
		progressed = true
		if err := fn(ev); err != nil {
			return true, callbackError{err}
		}
		if ev.GetSeq() > req.GetAfterSeq() {
			req.AfterSeq = ev.GetSeq()
		}
	}
}
