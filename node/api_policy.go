package node

// The gRPC door of PolicyService: each handler is a thin adapter that hands the
// request to the service layer (service.go; writes through
// submitWrite and the write table). The unary interceptor (auditInterceptor)
// has already begun the request value; the service layer finds it with
// requestFrom.

import (
	"context"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

type policyService struct {
	cofferv1.UnimplementedPolicyServiceServer
	svc *service
}

func (s *policyService) CreatePolicy(ctx context.Context, req *cofferv1.CreatePolicyRequest) (*cofferv1.CreatePolicyResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeCreatePolicy, req)
}

func (s *policyService) GetPolicy(ctx context.Context, req *cofferv1.GetPolicyRequest) (*cofferv1.GetPolicyResponse, error) {
	return s.svc.getPolicy(ctx, req)
}

func (s *policyService) ListPolicies(ctx context.Context, req *cofferv1.ListPoliciesRequest) (*cofferv1.ListPoliciesResponse, error) {
	return s.svc.listPolicies(ctx, req)
}

func (s *policyService) UpdatePolicy(ctx context.Context, req *cofferv1.UpdatePolicyRequest) (*cofferv1.UpdatePolicyResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeUpdatePolicy, req)
}
