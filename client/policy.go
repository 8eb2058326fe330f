package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// CreatePolicy creates a custody policy. It is not retried after an attempt
// may have reached the leader: a retry of a create that succeeded fails with
// AlreadyExists, which callers can treat as success after checking the
// policy.
func (c *Client) CreatePolicy(ctx context.Context, req *cofferv1.CreatePolicyRequest) (*cofferv1.CreatePolicyResponse, error) {
	if req == nil {
		return nil, nilRequest("CreatePolicy")
	}
	return invoke(ctx, c, "CreatePolicy", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.CreatePolicyResponse, error) {
		return ep.policies.CreatePolicy(ctx, req, opts...)
	})
}

// UpdatePolicy changes a custody policy (see UpdatePolicyRequest). Like
// CreatePolicy it is a write: a retry after an attempt that reached the
// leader may fail with Aborted (the revision moved on) even though the
// change was made.
func (c *Client) UpdatePolicy(ctx context.Context, req *cofferv1.UpdatePolicyRequest) (*cofferv1.UpdatePolicyResponse, error) {
	if req == nil {
		return nil, nilRequest("UpdatePolicy")
	}
	return invoke(ctx, c, "UpdatePolicy", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.UpdatePolicyResponse, error) {
		return ep.policies.UpdatePolicy(ctx, req, opts...)
	})
}

// GetPolicy fetches a custody policy (never its KEK).
func (c *Client) GetPolicy(ctx context.Context, req *cofferv1.GetPolicyRequest) (*cofferv1.GetPolicyResponse, error) {
	if req == nil {
		return nil, nilRequest("GetPolicy")
	}
	return invoke(ctx, c, "GetPolicy", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.GetPolicyResponse, error) {
		return ep.policies.GetPolicy(ctx, req, opts...)
	})
}

// ListPolicies lists every custody policy.
func (c *Client) ListPolicies(ctx context.Context, req *cofferv1.ListPoliciesRequest) (*cofferv1.ListPoliciesResponse, error) {
	if req == nil {
		return nil, nilRequest("ListPolicies")
	}
	return invoke(ctx, c, "ListPolicies", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.ListPoliciesResponse, error) {
		return ep.policies.ListPolicies(ctx, req, opts...)
	})
}

// Snapshot streams a consistent snapshot of the cluster's state into w and
// returns the applied index it describes. The caller's context bounds the
// whole transfer (there is no per-attempt timeout: a large state takes a
// while). A failure before the first byte is written is retried on another
// node under the retry policy of every call (see the package documentation:
// no new attempt starts after the call's deadline, Config.RetryDeadline when
// ctx has none); once data has been written the call fails instead, since w
// cannot be rewound.
func (c *Client) Snapshot(ctx context.Context, w io.Writer) (uint64, error) {
	if c.closed.Load() {
		return 0, ErrClosed
	}
	r := c.newRetry(ctx, "Snapshot")
	var prev *endpoint
	for {
		ep := c.pick(prev, "")
		prev = ep
		idx, written, err := snapshotFrom(ctx, ep, w)
		if err == nil {
			return idx, nil
		}
		err = toStatusErr(err)
		if written {
			return 0, r.final(ep, err)
		}
		if retryable(status.Code(err)) {
			c.markDown(ep)
		}
		if e := r.next(ep, err, false); e != nil {
			return 0, e
		}
	}
}

func snapshotFrom(ctx context.Context, ep *endpoint, w io.Writer) (idx uint64, written bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ep.cluster.Snapshot(ctx, &cofferv1.SnapshotRequest{})
	if err != nil {
		return 0, false, err
	}
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return 0, written, fmt.Errorf("client: snapshot stream from %s ended without its trailer", ep.addr)
		}
		if err != nil {
			return 0, written, err
		}
		if len(chunk.GetData()) == 0 {
			return chunk.GetAppliedIndex(), written, nil
		}
		written = true
		if _, err := w.Write(chunk.GetData()); err != nil {
			return 0, true, fmt.Errorf("client: write snapshot: %w", err)
		}
	}
}
