package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// MaxAuditPage bounds one Query page.
const MaxAuditPage = 1000

var outcomeNames = map[string]cofferv1.AuditOutcome{
	"granted": cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED,
	"denied":  cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED,
	"failed":  cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED,
}

func (n *Node) query(ctx context.Context, req *cofferv1.AuditQueryRequest) (*cofferv1.AuditQueryResponse, error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 100
	}
	if limit > MaxAuditPage {
		return nil, fmt.Errorf("%w: limit must be at most %d", ErrInvalidArgument, MaxAuditPage)
	}
	if req.GetNewest() > MaxAuditPage {
		return nil, fmt.Errorf("%w: newest must be at most %d", ErrInvalidArgument, MaxAuditPage)
	}
	flt, err := auditFilter(req.GetCaller(), req.GetGkid(), req.GetOperation(), req.GetOutcome())
	if err != nil {
		return nil, err
	}
	if req.GetSince() != nil {
		flt.SinceUnixNano = req.GetSince().AsTime().UnixNano()
	}
	if req.GetUntil() != nil {
		flt.UntilUnixNano = req.GetUntil().AsTime().UnixNano()
	}
	if err := n.authorizedRead(ctx, c, authz.OpAuditRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	if newest := req.GetNewest(); newest > 0 {
		entries, head, err := n.fsm.NewestAuditEntries(0, int(newest), flt)
		if err != nil {
			return nil, err
		}
		return &cofferv1.AuditQueryResponse{Entries: entries, LastSeq: head, HeadSeq: head}, nil
	}
	entries, last, err := n.fsm.AuditEntries(req.GetAfterSeq(), limit, flt)
	if err != nil {
		return nil, err
	}
	return &cofferv1.AuditQueryResponse{Entries: entries, LastSeq: last, HeadSeq: n.fsm.AuditHeadSeq()}, nil
}

// auditFilter builds the filter of a Query or Follow request.
func auditFilter(caller, gkid, operation, outcome string) (fsm.AuditFilter, error) {
	flt := fsm.AuditFilter{Caller: caller, GKID: gkid, Operation: operation}
	if outcome != "" {
		o, ok := outcomeNames[outcome]
		if !ok {
			return flt, fmt.Errorf("%w: outcome must be granted, denied or failed", ErrInvalidArgument)
		}
		flt.Outcome = o
	}
	return flt, nil
}

// head tells where the log stands on this node: its newest entry, newest
// signed checkpoint and prune marker.
func (n *Node) head(ctx context.Context, req *cofferv1.AuditHeadRequest) (*cofferv1.AuditHeadResponse, error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := n.authorizedRead(ctx, c, authz.OpAuditRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	resp := &cofferv1.AuditHeadResponse{Node: n.cfg.ID, AppliedIndex: n.fsm.AppliedIndex()}
	if resp.HeadSeq, resp.HeadHash, err = n.fsm.AuditHead(); err != nil {
		return nil, err
	}
	if resp.Checkpoint, err = n.fsm.AuditCheckpoint(); err != nil {
		return nil, err
	}
	if resp.Pruned, err = n.fsm.AuditPruneMarker(); err != nil {
		return nil, err
	}
	return resp, nil
}

// followPace is the shortest time between two messages of a Follow stream
// once it has caught up: on a busy log a message carries the entries of
// many rounds instead of one each.
const followPace = 100 * time.Millisecond

// follow streams the entries after req.after_seq, then each new one as this
// node applies them. The stream's own audit entry is committed before the
// first message; it ends when the caller cancels, or with Unavailable when
// the node stops, so the caller resumes elsewhere.
func (n *Node) follow(req *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer) error {
	ctx := stream.Context()
	err := n.auditedStream(ctx, "Follow", authz.OpAuditRead, func(grant func() error) error {
		return n.auditFollow(ctx, req, stream, grant)
	})
	if err != nil && ctx.Err() != nil {
		return nil // the caller went away: a normal end
	}
	return toStatus(err)
}

func (n *Node) auditFollow(ctx context.Context, req *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer, grant func() error) error {
	if req.GetNewest() > MaxAuditPage {
		return fmt.Errorf("%w: newest must be at most %d", ErrInvalidArgument, MaxAuditPage)
	}
	flt, err := auditFilter(req.GetCaller(), req.GetGkid(), req.GetOperation(), req.GetOutcome())
	if err != nil {
		return err
	}
	after := req.GetAfterSeq()
	if req.GetFromNewest() {
		// The newest matches before the stream's own entry, which grant
		// commits.
		after = n.fsm.AuditHeadSeq()
	}
	if err := grant(); err != nil {
		return err
	}
	metricFollowStreams.Inc()
	defer metricFollowStreams.Dec()
	// End the stream when the node stops, so that Close does not wait.
	ctx, cancel := n.stopContext(ctx)
	defer cancel()
	send := func(entries []*cofferv1.AuditEntry) error {
		if len(entries) == 0 {
			return nil
		}
		if err := stream.Send(&cofferv1.AuditFollowResponse{Entries: entries, HeadSeq: n.fsm.AuditHeadSeq()}); err != nil {
			return err
		}
		metricFollowEntries.Add(float64(len(entries)))
		return nil
	}
	if req.GetFromNewest() && req.GetNewest() > 0 && after > 0 {
		entries, _, err := n.fsm.NewestAuditEntries(after, int(req.GetNewest()), flt)
		if err != nil {
			return err
		}
		if err := send(entries); err != nil {
			return err
		}
	}
	for {
		entries, last, err := n.fsm.AuditEntries(after, MaxAuditPage, flt)
		if err != nil {
			return err
		}
		if err := send(entries); err != nil {
			return err
		}
		if last > after {
			after = last
			continue // there may be more pages
		}
		if n.fsm.Diverged() {
			return errReplicaDiverged()
		}
		if err := n.fsm.WaitAudit(ctx, after); err != nil {
			return n.auditFollowEnded(err)
		}
		t := time.NewTimer(followPace)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return n.auditFollowEnded(ctx.Err())
		}
	}
}

// followEnded says why a Follow stream stopped waiting: the node is
// stopping (Unavailable, resume elsewhere) or the caller went away.
func (n *Node) auditFollowEnded(err error) error {
	stopping := errors.Is(err, fsm.ErrClosed)
	select {
	case <-n.stopCh:
		stopping = true
	default:
	}
	if stopping {
		return fmt.Errorf("%w: the node is stopping; resume on another node", ErrShuttingDown)
	}
	return err
}

// export streams the log as JSON Lines (see audit/DESIGN.md). The export's
// own audit entry is committed before the first byte is sent.
func (n *Node) export(req *cofferv1.AuditExportRequest, stream cofferv1.AuditService_ExportServer) error {
	ctx := stream.Context()
	return toStatus(n.auditedStream(ctx, "Export", authz.OpAuditExport, func(grant func() error) error {
		return n.auditExport(ctx, req, stream, grant)
	}))
}

func (n *Node) auditExport(ctx context.Context, req *cofferv1.AuditExportRequest, stream cofferv1.AuditService_ExportServer, grant func() error) error {
	if err := grant(); err != nil {
		return err
	}
	w := &chunkWriter{send: func(b []byte) error { return stream.Send(&cofferv1.AuditExportChunk{Data: b}) }}
	if err := n.fsm.ExportAudit(req.GetAfterSeq(), w); err != nil {
		// The entry is committed as granted; the failure shows in the log.
		n.logger.Error("audit export failed", "err", err)
		return err
	}
	return w.flush()
}
