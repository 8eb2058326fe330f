package node

// The gRPC door of AuditService: each handler is a thin adapter that hands the
// request to the service layer (service.go; writes through
// submitWrite and the write table). The unary interceptor (auditInterceptor)
// has already begun the request value; the service layer finds it with
// requestFrom.

import (
	"context"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

type auditService struct {
	cofferv1.UnimplementedAuditServiceServer
	svc *service
}

func (s *auditService) Query(ctx context.Context, req *cofferv1.AuditQueryRequest) (*cofferv1.AuditQueryResponse, error) {
	return s.svc.query(ctx, req)
}

func (s *auditService) Head(ctx context.Context, req *cofferv1.AuditHeadRequest) (*cofferv1.AuditHeadResponse, error) {
	return s.svc.head(ctx, req)
}

func (s *auditService) Follow(req *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer) error {
	return s.svc.follow(req, stream)
}

func (s *auditService) Export(req *cofferv1.AuditExportRequest, stream cofferv1.AuditService_ExportServer) error {
	return s.svc.export(req, stream)
}

// Prune deletes entries up to a checkpoint, leaving a marker. A follower
// forwards it to the leader, as every write.
func (s *auditService) Prune(ctx context.Context, req *cofferv1.AuditPruneRequest) (*cofferv1.AuditPruneResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writePrune, req)
}

func (s *auditService) Match(ctx context.Context, req *cofferv1.AuditMatchRequest) (*cofferv1.AuditMatchResponse, error) {
	return s.svc.match(ctx, req)
}
