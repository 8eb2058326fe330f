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
// and the grant on the key's resource, the key's use policy and whether it
// is an AES key are decided in Apply for a linearizable call (one Raft round
// that also commits its audit entry) or on this node's state for a stale
// one, and the material is unwrapped only once the entry is committed and
// granted. The material never leaves the node; plaintext, data keys and the
// caller's context never reach the audit or the logs.

// Limits of the data encryption service.
const (
	// maxPlaintext bounds the plaintext of one Encrypt; larger data is
	// encrypted locally under a data key (GenerateDataKey).
	maxPlaintext = 64 << 10
	// maxCiphertext bounds the ciphertext of one Decrypt: the largest
	// Encrypt can return.
	maxCiphertext = maxPlaintext + 1024
)

// keyVersion is the version every key has until keys can be rotated: each
// key has one version of its material.
const keyVersion = 1

// validContext checks a caller's encryption context.
func validContext(c map[string]string) error {
	if err := ciphertext.ValidateContext(c); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return nil
}

func (s *service) encrypt(ctx context.Context, req *cofferv1.EncryptRequest) (*cofferv1.EncryptResponse, error) {
	if n := len(req.GetPlaintext()); n > maxPlaintext {
		return nil, fmt.Errorf("%w: plaintext is %d bytes, at most %d per Encrypt; encrypt larger data locally under a data key (GenerateDataKey)", ErrInvalidArgument, n, maxPlaintext)
	}
	if err := validContext(req.GetContext()); err != nil {
		return nil, err
	}
	rec, material, err := s.authorizedKey(ctx, requestFrom(ctx), req.GetGkid(), req.GetConsistency(), authz.OpEncrypt)
	if err != nil {
		return nil, err
	}
	defer clear(material)
	h := ciphertext.Header{GKID: rec.GetGkid(), KeyVersion: keyVersion}
	ct, err := ciphertext.Seal(material, h, rec.GetResource(), req.GetContext(), req.GetPlaintext())
	if err != nil {
		return nil, fmt.Errorf("%w: encrypt with key %s: %v", ErrInternal, rec.GetGkid(), err)
	}
	metricCryptoBytes.WithLabelValues(string(authz.OpEncrypt)).Add(float64(len(req.GetPlaintext())))
	return &cofferv1.EncryptResponse{Ciphertext: ct, Gkid: rec.GetGkid(), KeyVersion: keyVersion}, nil
}

func (s *service) decrypt(ctx context.Context, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	if n := len(req.GetCiphertext()); n > maxCiphertext {
		return nil, fmt.Errorf("%w: ciphertext is %d bytes, at most %d", ErrInvalidArgument, n, maxCiphertext)
	}
	h, err := ciphertext.ParseHeader(req.GetCiphertext())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := validContext(req.GetContext()); err != nil {
		return nil, err
	}
	if h.KeyVersion != keyVersion {
		return nil, fmt.Errorf("%w: the ciphertext names version %d of key %s; keys have version %d only", ErrInvalidArgument, h.KeyVersion, h.GKID, keyVersion)
	}
	r := requestFrom(ctx)
	rec, material, err := s.authorizedKey(ctx, r, h.GKID, req.GetConsistency(), authz.OpDecrypt)
	if err != nil {
		return nil, err
	}
	defer clear(material)
	pt, err := ciphertext.Open(material, rec.GetResource(), req.GetContext(), req.GetCiphertext())
	if err != nil {
		// The entry records the access decision (granted); the caller
		// learns the ciphertext did not authenticate.
		metricDecryptFailures.Inc()
		if errors.Is(err, ciphertext.ErrAuthentication) {
			return nil, fmt.Errorf("%w: the ciphertext does not decrypt under key %s with the context given: it was altered, or encrypted with another context", ErrInvalidArgument, h.GKID)
		}
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	metricCryptoBytes.WithLabelValues(string(authz.OpDecrypt)).Add(float64(len(pt)))
	return &cofferv1.DecryptResponse{Plaintext: pt, Gkid: h.GKID, KeyVersion: h.KeyVersion, KeyState: keyMetadata(rec).GetState()}, nil
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

func (s *service) generateDataKey(ctx context.Context, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	size := dataKeyLen(req.GetAlgorithm())
	if size == 0 {
		return nil, fmt.Errorf("%w: data keys are AES_128 or AES_256, not %v", ErrInvalidArgument, req.GetAlgorithm())
	}
	alg := req.GetAlgorithm()
	if alg == cofferv1.Algorithm_ALGORITHM_UNSPECIFIED {
		alg = cofferv1.Algorithm_ALGORITHM_AES_256
	}
	if err := validContext(req.GetContext()); err != nil {
		return nil, err
	}
	rec, material, err := s.authorizedKey(ctx, requestFrom(ctx), req.GetGkid(), req.GetConsistency(), authz.OpDataKey)
	if err != nil {
		return nil, err
	}
	defer clear(material)
	dk, err := s.barrier.Random(size)
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
