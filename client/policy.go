package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
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
	trailer, err := c.snapshot(ctx, w)
	return trailer.GetAppliedIndex(), err
}

// Backup is Snapshot that also returns the backup's seal, which a backup
// file carries in its header (fsm.WriteBackupHeader) and Restore needs.
func (c *Client) Backup(ctx context.Context, w io.Writer) (*cofferv1.SnapshotSeal, error) {
	trailer, err := c.snapshot(ctx, w)
	if err != nil {
		return nil, err
	}
	if trailer.GetSeal() == nil {
		return nil, &Error{Method: "Snapshot", Err: status.Error(codes.FailedPrecondition, "the node sent no seal: it runs a build without sealed backups")}
	}
	return trailer.GetSeal(), nil
}

func (c *Client) snapshot(ctx context.Context, w io.Writer) (*cofferv1.SnapshotChunk, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	r := c.newRetry(ctx, "Snapshot")
	var prev *endpoint
	for {
		ep := c.pick(prev, "")
		prev = ep
		trailer, written, err := snapshotFrom(ctx, ep, w)
		if err == nil {
			return trailer, nil
		}
		err = toStatusErr(err)
		if written {
			return nil, r.final(ep, err)
		}
		if retryable(status.Code(err)) {
			c.markDown(ep)
		}
		if e := r.next(ep, err, false); e != nil {
			return nil, e
		}
	}
}

func snapshotFrom(ctx context.Context, ep *endpoint, w io.Writer) (trailer *cofferv1.SnapshotChunk, written bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ep.cluster.Snapshot(ctx, &cofferv1.SnapshotRequest{})
	if err != nil {
		return nil, false, err
	}
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, written, fmt.Errorf("client: snapshot stream from %s ended without its trailer", ep.addr)
		}
		if err != nil {
			return nil, written, err
		}
		if len(chunk.GetData()) == 0 {
			return chunk, written, nil
		}
		written = true
		if _, err := w.Write(chunk.GetData()); err != nil {
			return nil, true, fmt.Errorf("client: write snapshot: %w", err)
		}
	}
}

// restoreChunk is the size of one Restore message.
const restoreChunk = 256 << 10

// Restore sends a backup (its seal, and its snapshot stream from r) to the
// first endpoint, which must be the leader of a fresh cluster sharing the
// master key of the one that made it (snapshot.restore). progress, if set,
// is called with the bytes sent so far. A restore is not retried: the
// stream cannot be replayed.
func (c *Client) Restore(ctx context.Context, seal *cofferv1.SnapshotSeal, r io.Reader, progress func(sent int64)) (*cofferv1.RestoreResponse, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	eps := *c.eps.Load()
	ep := eps[0]
	stream, err := ep.cluster.Restore(ctx)
	if err != nil {
		return nil, &Error{Method: "Restore", Endpoint: ep.addr, Attempts: 1, Err: toStatusErr(err)}
	}
	if err := stream.Send(&cofferv1.RestoreChunk{Seal: seal}); err != nil {
		_, err = stream.CloseAndRecv()
		return nil, &Error{Method: "Restore", Endpoint: ep.addr, Attempts: 1, Err: toStatusErr(err)}
	}
	buf := make([]byte, restoreChunk)
	var sent int64
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := stream.Send(&cofferv1.RestoreChunk{Data: buf[:n]}); err != nil {
				_, err = stream.CloseAndRecv()
				return nil, &Error{Method: "Restore", Endpoint: ep.addr, Attempts: 1, Err: toStatusErr(err)}
			}
			sent += int64(n)
			if progress != nil {
				progress(sent)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			_ = stream.CloseSend()
			return nil, fmt.Errorf("client: read backup: %w", rerr)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, &Error{Method: "Restore", Endpoint: ep.addr, Attempts: 1, Err: toStatusErr(err)}
	}
	return resp, nil
}
