package node

import (
	"context"
	"fmt"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// MaxAuditPage bounds one Query page.
const MaxAuditPage = 1000

type auditService struct {
	cofferv1.UnimplementedAuditServiceServer
	n *Node
}

var outcomeNames = map[string]cofferv1.AuditOutcome{
	"granted": cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED,
	"denied":  cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED,
	"failed":  cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED,
}

func (s *auditService) Query(ctx context.Context, req *cofferv1.AuditQueryRequest) (*cofferv1.AuditQueryResponse, error) {
	c, err := authenticate(ctx)
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
	flt := fsm.AuditFilter{Caller: req.GetCaller(), GKID: req.GetGkid(), Operation: req.GetOperation()}
	if req.GetOutcome() != "" {
		o, ok := outcomeNames[req.GetOutcome()]
		if !ok {
			return nil, fmt.Errorf("%w: outcome must be granted, denied or failed", ErrInvalidArgument)
		}
		flt.Outcome = o
	}
	if req.GetSince() != nil {
		flt.SinceUnixNano = req.GetSince().AsTime().UnixNano()
	}
	if req.GetUntil() != nil {
		flt.UntilUnixNano = req.GetUntil().AsTime().UnixNano()
	}
	if err := s.n.authorizedRead(ctx, c, authz.OpAuditRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	entries, last, err := s.n.fsm.AuditEntries(req.GetAfterSeq(), limit, flt)
	if err != nil {
		return nil, err
	}
	return &cofferv1.AuditQueryResponse{Entries: entries, LastSeq: last, HeadSeq: s.n.fsm.AuditHeadSeq()}, nil
}

// Head tells where the log stands on this node: its newest entry, newest
// signed checkpoint and prune marker.
func (s *auditService) Head(ctx context.Context, req *cofferv1.AuditHeadRequest) (*cofferv1.AuditHeadResponse, error) {
	c, err := authenticate(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.n.authorizedRead(ctx, c, authz.OpAuditRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	resp := &cofferv1.AuditHeadResponse{Node: s.n.cfg.ID, AppliedIndex: s.n.fsm.AppliedIndex()}
	if resp.HeadSeq, resp.HeadHash, err = s.n.fsm.AuditHead(); err != nil {
		return nil, err
	}
	if resp.Checkpoint, err = s.n.fsm.AuditCheckpoint(); err != nil {
		return nil, err
	}
	if resp.Pruned, err = s.n.fsm.AuditPruneMarker(); err != nil {
		return nil, err
	}
	return resp, nil
}

// Export streams the log as JSON Lines (see audit/DESIGN.md). The export's
// own audit entry is committed before the first byte is sent.
func (s *auditService) Export(req *cofferv1.AuditExportRequest, stream cofferv1.AuditService_ExportServer) error {
	ctx := stream.Context()
	e := s.n.newAuditEntry(ctx, "Export")
	err := s.export(ctx, req, stream, e)
	if err != nil {
		setOutcome(e, err)
		if cerr := s.n.commitAudit(ctx, e); cerr != nil {
			s.n.logger.Error("audit entry of a refused export not committed", "err", cerr)
		}
	}
	return toStatus(err)
}

func (s *auditService) export(ctx context.Context, req *cofferv1.AuditExportRequest, stream cofferv1.AuditService_ExportServer, e *cofferv1.AuditEntry) error {
	c, err := authenticate(ctx)
	if err != nil {
		return err
	}
	if err := s.n.linearize(ctx, cofferv1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
		return err
	}
	if err := s.n.authorize(c, authz.OpAuditExport, ""); err != nil {
		return err
	}
	setOutcome(e, nil)
	if err := s.n.commitAudit(ctx, e); err != nil {
		metricAuditFailures.Inc()
		return fmt.Errorf("%w: the export's audit entry could not be committed: %v", ErrNoLeader, err)
	}
	w := &chunkWriter{send: func(b []byte) error { return stream.Send(&cofferv1.AuditExportChunk{Data: b}) }}
	if err := s.n.fsm.ExportAudit(req.GetAfterSeq(), w); err != nil {
		// The entry is committed as granted; the failure shows in the log.
		s.n.logger.Error("audit export failed", "err", err)
		return err
	}
	return w.flush()
}
