package node

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// An entry that creates a key holds detail_hmac, the audit HMAC of its
// material under the cluster's audit HMAC key (custody.MaterialDetail), never
// the material. Match lets an auditor ask whether an entry recorded a given
// key.

// maxMatchMaterial bounds the candidate material of one Match.
const maxMatchMaterial = MaxMaterialLen

// match tells whether entry seq recorded the given key material.
func (s *service) match(ctx context.Context, req *cofferv1.AuditMatchRequest) (*cofferv1.AuditMatchResponse, error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetSeq() == 0 || len(req.GetMaterial()) == 0 || len(req.GetMaterial()) > maxMatchMaterial {
		return nil, fmt.Errorf("%w: seq and 1..%d bytes of material are required", ErrInvalidArgument, maxMatchMaterial)
	}
	if err := s.replica.linearize(ctx, cofferv1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
		return nil, err
	}
	if err := s.authorize(c, authz.OpAuditRead, ""); err != nil {
		return nil, err
	}
	var entry *cofferv1.AuditEntry
	if err := s.fsm.ScanAudit(req.GetSeq()-1, func(e *cofferv1.AuditEntry) error {
		if e.GetSeq() == req.GetSeq() {
			entry = e
		}
		return errStop
	}); err != nil && !errors.Is(err, errStop) {
		return nil, err
	}
	if entry == nil {
		return nil, fmt.Errorf("%w: audit entry %d (pruned or not yet written)", ErrNotFound, req.GetSeq())
	}
	if len(entry.GetDetailHmac()) == 0 {
		return nil, fmt.Errorf("%w: audit entry %d records no key material", fsm.ErrInvalidCommand, req.GetSeq())
	}
	want, err := s.barrier.MaterialDetail(req.GetMaterial())
	if err != nil {
		return nil, err
	}
	return &cofferv1.AuditMatchResponse{Match: want != nil && hmac.Equal(want, entry.GetDetailHmac())}, nil
}

var errStop = errors.New("stop")
