package node

// The gRPC door of InternalService, served to members only: each handler is
// a thin adapter over the service layer.

import (
	"context"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// internalService is served to members only (requireMember): a node
// certificate from the node CA, in the Raft configuration, not revoked, and
// the certificate pinned at the member's admission.
type internalService struct {
	cofferv1.UnimplementedInternalServiceServer
	n   *Node
	svc *service
}

func (s *internalService) AppendAudit(ctx context.Context, req *cofferv1.AppendAuditRequest) (*cofferv1.AppendAuditResponse, error) {
	return s.svc.internalAppendAudit(ctx, req)
}

func (s *internalService) Forward(ctx context.Context, req *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error) {
	return s.svc.internalForward(ctx, req)
}

func (s *internalService) ReadIndex(ctx context.Context, _ *cofferv1.ReadIndexRequest) (*cofferv1.ReadIndexResponse, error) {
	return s.n.internalReadIndex(ctx)
}
