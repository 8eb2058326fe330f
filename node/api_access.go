package node

// The gRPC door of AccessService: each handler is a thin adapter that hands the
// request to the service layer (service.go; writes through
// submitWrite and the write table). The unary interceptor (auditInterceptor)
// has already begun the request value; the service layer finds it with
// requestFrom.

import (
	"context"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// accessService manages clients, rules and the certificate deny list. Writes
// run on the leader (followers forward them) and are authorised there
// against committed state; every change is applied and the authorisation
// snapshot swapped before the call returns, so it binds every node for every
// request that arrives afterwards (reads on followers wait for the leader's
// applied index first).
type accessService struct {
	cofferv1.UnimplementedAccessServiceServer
	svc *service
}

func (s *accessService) RegisterClient(ctx context.Context, req *cofferv1.RegisterClientRequest) (*cofferv1.ClientInfo, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeRegisterClient, req)
}

func (s *accessService) SetClientActive(ctx context.Context, req *cofferv1.SetClientActiveRequest) (*cofferv1.ClientInfo, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeSetClientActive, req)
}

func (s *accessService) RevokeCertificate(ctx context.Context, req *cofferv1.RevokeCertificateRequest) (*cofferv1.RevokeCertificateResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeRevokeCertificate, req)
}

func (s *accessService) Grant(ctx context.Context, req *cofferv1.GrantRequest) (*cofferv1.AclRuleInfo, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeGrant, req)
}

func (s *accessService) RevokeGrant(ctx context.Context, req *cofferv1.RevokeGrantRequest) (*cofferv1.RevokeGrantResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeRevokeGrant, req)
}

func (s *accessService) GetClient(ctx context.Context, req *cofferv1.GetClientRequest) (*cofferv1.ClientInfo, error) {
	return s.svc.getClient(ctx, req)
}

func (s *accessService) ListClients(ctx context.Context, req *cofferv1.ListClientsRequest) (*cofferv1.ListClientsResponse, error) {
	return s.svc.listClients(ctx, req)
}

func (s *accessService) ListGrants(ctx context.Context, req *cofferv1.ListGrantsRequest) (*cofferv1.ListGrantsResponse, error) {
	return s.svc.listGrants(ctx, req)
}

func (s *accessService) Check(ctx context.Context, req *cofferv1.CheckRequest) (*cofferv1.CheckResponse, error) {
	return s.svc.check(ctx, req)
}
