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

func (s *service) query(ctx context.Context, req *cofferv1.AuditQueryRequest) (*cofferv1.AuditQueryResponse, error) {
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
	if err := s.authorizedRead(ctx, c, authz.OpAuditRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	if newest := req.GetNewest(); newest > 0 {
		entries, head, err := s.fsm.NewestAuditEntries(0, int(newest), flt)
		if err != nil {
			return nil, err
		}
		return &cofferv1.AuditQueryResponse{Entries: entries, LastSeq: head, HeadSeq: head}, nil
	}
	entries, last, err := s.fsm.AuditEntries(req.GetAfterSeq(), limit, flt)
	if err != nil {
		return nil, err
	}
	return &cofferv1.AuditQueryResponse{Entries: entries, LastSeq: last, HeadSeq: s.fsm.AuditHeadSeq()}, nil
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
func (s *service) head(ctx context.Context, req *cofferv1.AuditHeadRequest) (*cofferv1.AuditHeadResponse, error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.authorizedRead(ctx, c, authz.OpAuditRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	resp := &cofferv1.AuditHeadResponse{Node: s.cfg.ID, AppliedIndex: s.fsm.AppliedIndex()}
	if resp.HeadSeq, resp.HeadHash, err = s.fsm.AuditHead(); err != nil {
		return nil, err
	}
	if resp.Checkpoint, err = s.fsm.AuditCheckpoint(); err != nil {
		return nil, err
	}
	if resp.Pruned, err = s.fsm.AuditPruneMarker(); err != nil {
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
func (s *service) follow(req *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer) error {
	ctx := stream.Context()
	err := s.auditedStream(ctx, "Follow", authz.OpAuditRead, func(grant func() error) error {
		return s.auditFollow(ctx, req, stream, grant)
	})
	if err != nil && ctx.Err() != nil {
		return nil // the caller went away: a normal end
	}
	return toStatus(err)
}

func (s *service) auditFollow(ctx context.Context, req *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer, grant func() error) error {
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
		after = s.fsm.AuditHeadSeq()
	}
	if err := grant(); err != nil {
		return err
	}
	metricFollowStreams.Inc()
	defer metricFollowStreams.Dec()
	// End the stream when the node stops, so that Close does not wait.
	ctx, cancel := s.stopContext(ctx)
	defer cancel()
	send := func(entries []*cofferv1.AuditEntry) error {
		if len(entries) == 0 {
			return nil
		}
		if err := stream.Send(&cofferv1.AuditFollowResponse{Entries: entries, HeadSeq: s.fsm.AuditHeadSeq()}); err != nil {
			return err
		}
		metricFollowEntries.Add(float64(len(entries)))
		return nil
	}
	if req.GetFromNewest() && req.GetNewest() > 0 && after > 0 {
		entries, _, err := s.fsm.NewestAuditEntries(after, int(req.GetNewest()), flt)
		if err != nil {
			return err
		}
		if err := send(entries); err != nil {
			return err
		}
	}
	for {
		entries, last, err := s.fsm.AuditEntries(after, MaxAuditPage, flt)
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
		if err := s.awaitAudit(ctx, after, followPace); err != nil {
			return err
		}
	}
}

// awaitAudit is what a reader of the log that caught up (Follow, the cache
// Watch) does between scans: it waits until an entry after seq after is
// committed, then for pace, so that on a busy log one scan covers many
// rounds. A replica that diverged, the node stopping or the caller going
// away end the wait (auditFollowEnded).
func (s *service) awaitAudit(ctx context.Context, after uint64, pace time.Duration) error {
	if s.fsm.Diverged() {
		return errReplicaDiverged()
	}
	if err := s.fsm.WaitAudit(ctx, after); err != nil {
		return s.auditFollowEnded(err)
	}
	t := time.NewTimer(pace)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return s.auditFollowEnded(ctx.Err())
	}
}

// followEnded says why a Follow stream stopped waiting: the node is
// stopping (Unavailable, resume elsewhere) or the caller went away.
func (s *service) auditFollowEnded(err error) error {
	stopping := errors.Is(err, fsm.ErrClosed)
	select {
	case <-s.stop:
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
func (s *service) export(req *cofferv1.AuditExportRequest, stream cofferv1.AuditService_ExportServer) error {
	ctx := stream.Context()
	return toStatus(s.auditedStream(ctx, "Export", authz.OpAuditExport, func(grant func() error) error {
		return s.auditExport(ctx, req, stream, grant)
	}))
}

func (s *service) auditExport(ctx context.Context, req *cofferv1.AuditExportRequest, stream cofferv1.AuditService_ExportServer, grant func() error) error {
	if err := grant(); err != nil {
		return err
	}
	w := &chunkWriter{send: func(b []byte) error { return stream.Send(&cofferv1.AuditExportChunk{Data: b}) }}
	if err := s.fsm.ExportAudit(req.GetAfterSeq(), w); err != nil {
		// The entry is committed as granted; the failure shows in the log.
		s.logger.Error("audit export failed", "err", err)
		return err
	}
	return w.flush()
}

// pruneAudit runs a prune on the leader.
func (s *service) pruneAudit(ctx context.Context, r *request, req *cofferv1.AuditPruneRequest) (*cofferv1.AuditPruneResponse, error) {
	// The leader has applied every committed checkpoint; one committed after
	// this read has a higher seq than all those it saw, so Apply prunes up to
	// the checkpoint found here, and an age-based prune that misses the new
	// one only prunes less.
	upTo := req.GetUpToSeq()
	var cp *cofferv1.AuditCheckpoint
	var err error
	if before := req.GetBefore(); before != nil {
		cp, err = s.fsm.CheckpointBefore(before.AsTime().UnixNano())
		if errors.Is(err, fsm.ErrNoCheckpoint) {
			// Nothing that old is left: not an error for a retention job.
			r.entry.Reason = "no checkpoint signed before " + before.AsTime().UTC().Format(time.RFC3339Nano) + ": nothing pruned"
			m, err := s.fsm.AuditPruneMarker()
			return &cofferv1.AuditPruneResponse{Marker: m}, err
		}
	} else {
		cp, err = s.fsm.CheckpointAtOrBelow(upTo)
		if errors.Is(err, fsm.ErrNoCheckpoint) {
			// Apply refuses it with the same error, in the prune's entry.
			cp, err = nil, nil
		}
	}
	if err != nil {
		return nil, err
	}
	if cp != nil {
		upTo = cp.GetSeq()
		// The entry names the range, which the log keeps no other record of
		// once a later prune replaces the marker.
		r.entry.Reason = pruneReason(cp)
	}
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_AUDIT_PRUNE, &cofferv1.AuditPruneCommand{UpToSeq: upTo, Audit: r.entry})
	if err != nil {
		return nil, err
	}
	return &cofferv1.AuditPruneResponse{Marker: res.Marker, Pruned: res.Pruned}, nil
}
