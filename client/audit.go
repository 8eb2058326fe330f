package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// AuditQuery returns one page of audit entries after req.AfterSeq that match
// req's filters. Resume with AfterSeq = resp.LastSeq; the log holds entries
// up to resp.HeadSeq. Every query is itself a request and gets its own audit
// entry.
func (c *Client) AuditQuery(ctx context.Context, req *cofferv1.AuditQueryRequest) (*cofferv1.AuditQueryResponse, error) {
	if req == nil {
		return nil, nilRequest("AuditQuery")
	}
	return invoke(ctx, c, "AuditQuery", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.AuditQueryResponse, error) {
		return ep.audit.Query(ctx, req, opts...)
	})
}

// AuditHead returns where the log stands on the node that answers: its
// newest entry, newest signed checkpoint and prune marker.
func (c *Client) AuditHead(ctx context.Context, req *cofferv1.AuditHeadRequest) (*cofferv1.AuditHeadResponse, error) {
	if req == nil {
		return nil, nilRequest("AuditHead")
	}
	return invoke(ctx, c, "AuditHead", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.AuditHeadResponse, error) {
		return ep.audit.Head(ctx, req, opts...)
	})
}

// AuditMatch asks whether the audit entry req.Seq, which created a key,
// recorded exactly req.Material (the log holds only an HMAC of it).
func (c *Client) AuditMatch(ctx context.Context, req *cofferv1.AuditMatchRequest) (*cofferv1.AuditMatchResponse, error) {
	if req == nil {
		return nil, nilRequest("AuditMatch")
	}
	return invoke(ctx, c, "AuditMatch", read, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.AuditMatchResponse, error) {
		return ep.audit.Match(ctx, req, opts...)
	})
}

// AuditPrune deletes the entries up to the newest checkpoint at or below
// req.UpToSeq and returns the prune marker that now stands for them. Only
// the leader prunes; a follower answers Unavailable naming the leader, and
// the call follows that hint. Pruning up to the same seq again returns the
// same marker, so a retry after a lost response is harmless.
func (c *Client) AuditPrune(ctx context.Context, req *cofferv1.AuditPruneRequest) (*cofferv1.AuditPruneResponse, error) {
	if req == nil {
		return nil, nilRequest("AuditPrune")
	}
	return invoke(ctx, c, "AuditPrune", write, func(ctx context.Context, ep *endpoint, opts ...grpc.CallOption) (*cofferv1.AuditPruneResponse, error) {
		return ep.audit.Prune(ctx, req, opts...)
	})
}

// AuditExport streams the audit log after seq after into w as JSON Lines
// (the export format of package audit: a prune marker first when exporting
// from the start of a pruned log, then entries and checkpoints in apply
// order). The caller's context bounds the whole transfer (there is no
// per-attempt timeout: a long log takes a while). A failure before the first
// byte is written is retried on another node under the retry policy of every
// call (see the package documentation: no new attempt starts after the
// call's deadline, Config.RetryDeadline when ctx has none); once data has
// been written the call fails instead, since w cannot be rewound. A nil
// error means the node ended the stream normally, so w holds the complete
// export.
func (c *Client) AuditExport(ctx context.Context, after uint64, w io.Writer) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if w == nil {
		return &Error{Method: "AuditExport", Err: status.Error(codes.InvalidArgument, "nil writer")}
	}
	r := c.newRetry(ctx, "AuditExport")
	var prev *endpoint
	for {
		ep := c.pick(prev, "")
		prev = ep
		written, err := auditExportFrom(ctx, ep, after, w)
		if err == nil {
			return nil
		}
		err = toStatusErr(err)
		if written {
			return r.final(ep, err)
		}
		if retryable(status.Code(err)) {
			c.markDown(ep)
		}
		if e := r.next(ep, err, false); e != nil {
			return e
		}
	}
}

// auditExportFrom runs one export attempt against ep and reports whether any
// byte reached w.
func auditExportFrom(ctx context.Context, ep *endpoint, after uint64, w io.Writer) (written bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ep.audit.Export(ctx, &cofferv1.AuditExportRequest{AfterSeq: after})
	if err != nil {
		return false, err
	}
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return written, nil
		}
		if err != nil {
			return written, err
		}
		if len(chunk.GetData()) == 0 {
			continue
		}
		written = true
		if _, err := w.Write(chunk.GetData()); err != nil {
			return true, fmt.Errorf("client: write audit export: %w", err)
		}
	}
}

// AuditFollow streams the audit log from where req says (after
// req.AfterSeq, or with req.FromNewest the newest req.Newest entries),
// keeping the entries that match req's filters: every entry already there,
// then each new one as the node applies it, calling fn with each message in
// seq order. It returns when ctx ends (with ctx's error), when fn returns an
// error (that error), on a failure that is not retryable, or when the
// cluster cannot be reached: failures in a row, with no message between
// them, until ctx's deadline, or for Config.RetryDeadline from the first of
// them when ctx has no deadline (and no more than MaxAttempts of them, when
// set). The *Error then matches ErrRetriesExhausted. A node that fails or
// stops is left for another, resuming after the last entry fn was given, so
// fn sees every entry once, in order (a node that has pruned entries the
// stream had not reached yet starts after its prune marker).
func (c *Client) AuditFollow(ctx context.Context, req *cofferv1.AuditFollowRequest, fn func(*cofferv1.AuditFollowResponse) error) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if req == nil {
		return nilRequest("AuditFollow")
	}
	if fn == nil {
		return &Error{Method: "AuditFollow", Err: status.Error(codes.InvalidArgument, "nil callback")}
	}
	// Resumed streams start after the last entry fn was given.
	req = proto.Clone(req).(*cofferv1.AuditFollowRequest)
	return c.resumeStream(ctx, "AuditFollow", func(ctx context.Context, ep *endpoint, _ bool) (bool, error) {
		return auditFollowFrom(ctx, ep, req, fn)
	})
}

// callbackError carries an error returned by AuditFollow's callback.
type callbackError struct{ err error }

func (e callbackError) Error() string { return e.err.Error() }

// auditFollowFrom runs one Follow stream against ep. Once a message has
// been handed to fn, req asks for what follows it (AfterSeq, not
// FromNewest). It reports whether any message arrived; a stream the node
// ends normally is reported as Unavailable, to resume.
func auditFollowFrom(ctx context.Context, ep *endpoint, req *cofferv1.AuditFollowRequest, fn func(*cofferv1.AuditFollowResponse) error) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ep.audit.Follow(ctx, req)
	if err != nil {
		return false, err
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return progressed, status.Error(codes.Unavailable, "the node ended the follow stream")
		}
		if err != nil {
			return progressed, err
		}
		es := msg.GetEntries()
		if len(es) == 0 {
			continue
		}
		progressed = true
		if err := fn(msg); err != nil {
			return true, callbackError{err}
		}
		if last := es[len(es)-1].GetSeq(); req.GetFromNewest() || last > req.GetAfterSeq() {
			req.AfterSeq, req.FromNewest, req.Newest = last, false, 0
		}
	}
}

// resumeStream runs a stream that resumes where it stopped (AuditFollow,
// WatchCache): attempt opens it on ep and reads it until it fails, saying
// whether anything arrived (again is set for every attempt after the
// first). A node that fails is left for another; the retry budget covers
// failures in a row, and a stream that delivered something starts the next
// outage with the whole budget. It returns when ctx ends (ctx's error),
// when the callback fails (callbackError: that error), on a failure that is
// not retryable, or when the budget is spent.
func (c *Client) resumeStream(ctx context.Context, method string, attempt func(ctx context.Context, ep *endpoint, again bool) (bool, error)) error {
	r := c.newRetry(ctx, method)
	var prev *endpoint
	for {
		ep := c.pick(prev, "")
		again := prev != nil
		prev = ep
		progressed, err := attempt(ctx, ep, again)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var cbErr callbackError
		if errors.As(err, &cbErr) {
			return cbErr.err
		}
		err = toStatusErr(err)
		if progressed {
			r = c.newRetry(ctx, method)
		}
		if retryable(status.Code(err)) {
			c.markDown(ep)
		}
		if e := r.next(ep, err, false); e != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return e
		}
	}
}
