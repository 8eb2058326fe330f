package node

// The gRPC door of CryptoService, the data encryption service: each handler
// is a thin adapter that hands the request to the service layer
// (crypto.go). The unary interceptor (auditInterceptor) has already begun
// the request value; the service layer finds it with requestFrom.

import (
	"context"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

type cryptoService struct {
	cofferv1.UnimplementedCryptoServiceServer
	svc *service
}

func (s *cryptoService) Encrypt(ctx context.Context, req *cofferv1.EncryptRequest) (*cofferv1.EncryptResponse, error) {
	return s.svc.encrypt(ctx, req)
}

func (s *cryptoService) Decrypt(ctx context.Context, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	return s.svc.decrypt(ctx, req)
}

func (s *cryptoService) GenerateDataKey(ctx context.Context, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	return s.svc.generateDataKey(ctx, req)
}

func (s *cryptoService) EncryptNew(ctx context.Context, req *cofferv1.EncryptNewRequest) (*cofferv1.EncryptNewResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeEncryptNew, req)
}

func (s *cryptoService) ReEncrypt(ctx context.Context, req *cofferv1.ReEncryptRequest) (*cofferv1.ReEncryptResponse, error) {
	return s.svc.reEncrypt(ctx, req)
}

func (s *cryptoService) EncryptBatch(ctx context.Context, req *cofferv1.EncryptBatchRequest) (*cofferv1.EncryptBatchResponse, error) {
	return s.svc.encryptBatch(ctx, req)
}

func (s *cryptoService) DecryptBatch(ctx context.Context, req *cofferv1.DecryptBatchRequest) (*cofferv1.DecryptBatchResponse, error) {
	return s.svc.decryptBatch(ctx, req)
}

func (s *cryptoService) GenerateDataKeyBatch(ctx context.Context, req *cofferv1.GenerateDataKeyBatchRequest) (*cofferv1.GenerateDataKeyBatchResponse, error) {
	return s.svc.generateDataKeyBatch(ctx, req)
}
