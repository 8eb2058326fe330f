package node

import (
	"context"
	"errors"
	"fmt"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/ciphertext"
)

// The data encryption service: encrypt, decrypt and wrap data keys with a
// custodied key on the caller's behalf. Each call is a use of one key by its
// GKID and goes the way of a key read (authorizedKey): the operation's grant
// and the grant on the key's resource, the key's state, whether it is an AES
// key and its use policy are decided in Apply for a linearizable call (one
// Raft round that also commits its audit entry) or on this node's state for
// a stale one, and the material is unwrapped only once the entry is
// committed and granted. The material never leaves the node; plaintext, data
// keys and the caller's context never reach the audit or the logs.
//
// Each operation is described once (cryptoOp: what it validates, which key
// it uses, what it does with the material) and served alone (serveCrypto)
// or in batches (crypto_batch.go).

// Limits of the data encryption service.
const (
	// maxPlaintext bounds the plaintext of one Encrypt; larger data is
	// encrypted locally under a data key (GenerateDataKey).
	maxPlaintext = 64 << 10
	// maxCiphertext bounds the ciphertext of one Decrypt: the largest
	// Encrypt can return.
	maxCiphertext = maxPlaintext + ciphertext.MaxOverhead
)

// keyVersion is the version every key has until keys can be rotated: each
// key has one version of its material.
const keyVersion = 1

// cryptoOp is one operation of the data encryption service on requests of
// type Req.
type cryptoOp[Req any, Resp any] struct {
	op authz.Op
	// target validates req (without state) and returns the GKID it uses.
	target func(req Req) (string, error)
	// run does the operation with the key's record and its unwrapped
	// material, which it must not keep.
	run func(s *service, rec *cofferv1.KeyRecord, material []byte, req Req) (Resp, error)
}

var (
	opEncrypt = &cryptoOp[*cofferv1.EncryptRequest, *cofferv1.EncryptResponse]{
		op: authz.OpEncrypt, target: encryptTarget, run: (*service).runEncrypt,
	}
	opDecrypt = &cryptoOp[*cofferv1.DecryptRequest, *cofferv1.DecryptResponse]{
		op: authz.OpDecrypt, target: decryptTarget, run: (*service).runDecrypt,
	}
	opDataKey = &cryptoOp[*cofferv1.GenerateDataKeyRequest, *cofferv1.GenerateDataKeyResponse]{
		op: authz.OpDataKey, target: dataKeyTarget, run: (*service).runDataKey,
	}
)

// serveCrypto serves one call: validation, the decided use of the key, the
// operation.
func serveCrypto[Req any, Resp any](s *service, ctx context.Context, o *cryptoOp[Req, Resp], req Req, cons cofferv1.Consistency) (Resp, error) {
	var none Resp
	id, err := o.target(req)
	if err != nil {
		return none, err
	}
	rec, material, err := s.authorizedKey(ctx, requestFrom(ctx), id, cons, o.op)
	if err != nil {
		return none, err
	}
	defer clear(material)
	return o.run(s, rec, material, req)
}

func (s *service) encrypt(ctx context.Context, req *cofferv1.EncryptRequest) (*cofferv1.EncryptResponse, error) {
	return serveCrypto(s, ctx, opEncrypt, req, req.GetConsistency())
}

func (s *service) decrypt(ctx context.Context, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	return serveCrypto(s, ctx, opDecrypt, req, req.GetConsistency())
}

func (s *service) generateDataKey(ctx context.Context, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	return serveCrypto(s, ctx, opDataKey, req, req.GetConsistency())
}

// validContext checks a caller's encryption context.
func validContext(c map[string]string) error {
	if err := ciphertext.ValidateContext(c); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return nil
}

func encryptTarget(req *cofferv1.EncryptRequest) (string, error) {
	if n := len(req.GetPlaintext()); n > maxPlaintext {
		return "", fmt.Errorf("%w: plaintext is %d bytes, at most %d per Encrypt; encrypt larger data locally under a data key (GenerateDataKey)", ErrInvalidArgument, n, maxPlaintext)
	}
	if err := validContext(req.GetContext()); err != nil {
		return "", err
	}
	return req.GetGkid(), validateGKID(req.GetGkid())
}

func (s *service) runEncrypt(rec *cofferv1.KeyRecord, material []byte, req *cofferv1.EncryptRequest) (*cofferv1.EncryptResponse, error) {
	h := ciphertext.Header{GKID: rec.GetGkid(), KeyVersion: keyVersion}
	ct, err := ciphertext.Seal(material, h, rec.GetResource(), req.GetContext(), req.GetPlaintext())
	if err != nil {
		return nil, fmt.Errorf("%w: encrypt with key %s: %v", ErrInternal, rec.GetGkid(), err)
	}
	metricCryptoBytes.WithLabelValues(string(authz.OpEncrypt)).Add(float64(len(req.GetPlaintext())))
	return &cofferv1.EncryptResponse{Ciphertext: ct, Gkid: rec.GetGkid(), KeyVersion: keyVersion}, nil
}

func decryptTarget(req *cofferv1.DecryptRequest) (string, error) {
	if n := len(req.GetCiphertext()); n > maxCiphertext {
		return "", fmt.Errorf("%w: ciphertext is %d bytes, at most %d", ErrInvalidArgument, n, maxCiphertext)
	}
	h, err := ciphertext.ParseHeader(req.GetCiphertext())
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := validContext(req.GetContext()); err != nil {
		return "", err
	}
	if h.KeyVersion != keyVersion {
		return "", fmt.Errorf("%w: the ciphertext names version %d of key %s; keys have version %d only", ErrInvalidArgument, h.KeyVersion, h.GKID, keyVersion)
	}
	return h.GKID, validateGKID(h.GKID)
}

func (s *service) runDecrypt(rec *cofferv1.KeyRecord, material []byte, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	pt, err := ciphertext.Open(material, rec.GetResource(), req.GetContext(), req.GetCiphertext())
	if err != nil {
		// The entry records the access decision (granted); the caller
		// learns the ciphertext did not authenticate.
		metricDecryptFailures.Inc()
		if errors.Is(err, ciphertext.ErrAuthentication) {
			return nil, fmt.Errorf("%w: the ciphertext does not decrypt under key %s with the context given: it was altered, or encrypted with another context", ErrInvalidArgument, rec.GetGkid())
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	metricCryptoBytes.WithLabelValues(string(authz.OpDecrypt)).Add(float64(len(pt)))
	return &cofferv1.DecryptResponse{Plaintext: pt, Gkid: rec.GetGkid(), KeyVersion: keyVersion, KeyState: keyMetadata(rec).GetState()}, nil
}

// dataKeyLen is the length of a data key of algorithm a; 0 if the service
// does not generate data keys of that kind.
func dataKeyLen(a cofferv1.Algorithm) int {
	switch a {
	case cofferv1.Algorithm_ALGORITHM_UNSPECIFIED, cofferv1.Algorithm_ALGORITHM_AES_256:
		return 32
	case cofferv1.Algorithm_ALGORITHM_AES_128:
		return 16
	}
	return 0
}

func dataKeyTarget(req *cofferv1.GenerateDataKeyRequest) (string, error) {
	if dataKeyLen(req.GetAlgorithm()) == 0 {
		return "", fmt.Errorf("%w: data keys are AES_128 or AES_256, not %v", ErrInvalidArgument, req.GetAlgorithm())
	}
	if err := validContext(req.GetContext()); err != nil {
		return "", err
	}
	return req.GetGkid(), validateGKID(req.GetGkid())
}

func (s *service) runDataKey(rec *cofferv1.KeyRecord, material []byte, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	alg := req.GetAlgorithm()
	if alg == cofferv1.Algorithm_ALGORITHM_UNSPECIFIED {
		alg = cofferv1.Algorithm_ALGORITHM_AES_256
	}
	dk, err := s.barrier.Random(dataKeyLen(alg))
	if err != nil {
		return nil, err
	}
	h := ciphertext.Header{GKID: rec.GetGkid(), KeyVersion: keyVersion}
	ct, err := ciphertext.Seal(material, h, rec.GetResource(), req.GetContext(), dk)
	if err != nil {
		clear(dk)
		return nil, fmt.Errorf("%w: wrap a data key under key %s: %v", ErrInternal, rec.GetGkid(), err)
	}
	resp := &cofferv1.GenerateDataKeyResponse{Ciphertext: ct, Gkid: rec.GetGkid(), KeyVersion: keyVersion, Algorithm: alg}
	if req.GetWithoutPlaintext() {
		clear(dk)
	} else {
		resp.Plaintext = dk
	}
	return resp, nil
}
