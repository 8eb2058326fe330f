package node

// The gRPC door of KeyService: each handler is a thin adapter that hands the
// request to the service layer (service.go; writes through
// submitWrite and the write table). The unary interceptor (auditInterceptor)
// has already begun the request value; the service layer finds it with
// requestFrom.

import (
	"context"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

type keyService struct {
	cofferv1.UnimplementedKeyServiceServer
	svc *service
}

func (s *keyService) GenerateKey(ctx context.Context, req *cofferv1.GenerateKeyRequest) (*cofferv1.GenerateKeyResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeGenerate, req)
}

func (s *keyService) PutKey(ctx context.Context, req *cofferv1.PutKeyRequest) (*cofferv1.PutKeyResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writePut, req)
}

func (s *keyService) GetKey(ctx context.Context, req *cofferv1.GetKeyRequest) (*cofferv1.GetKeyResponse, error) {
	return s.svc.getKey(ctx, req)
}

func (s *keyService) DescribeKey(ctx context.Context, req *cofferv1.DescribeKeyRequest) (*cofferv1.DescribeKeyResponse, error) {
	return s.svc.describeKey(ctx, req)
}

func (s *keyService) ListKeys(ctx context.Context, req *cofferv1.ListKeysRequest) (*cofferv1.ListKeysResponse, error) {
	return s.svc.listKeys(ctx, req)
}

func (s *keyService) RotateKey(ctx context.Context, req *cofferv1.RotateKeyRequest) (*cofferv1.RotateKeyResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeRotateKey, req)
}

func (s *keyService) RetireKeyVersion(ctx context.Context, req *cofferv1.RetireKeyVersionRequest) (*cofferv1.RetireKeyVersionResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeRetireKeyVersion, req)
}

func (s *keyService) AmendKeyUsePolicy(ctx context.Context, req *cofferv1.AmendKeyUsePolicyRequest) (*cofferv1.AmendKeyUsePolicyResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeAmendKeyUsePolicy, req)
}

func (s *keyService) SetKeyState(ctx context.Context, req *cofferv1.SetKeyStateRequest) (*cofferv1.SetKeyStateResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeSetKeyState, req)
}
