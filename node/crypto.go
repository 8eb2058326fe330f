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

// cryptoOp is one operation of the data encryption service on requests of
// type Req.
type cryptoOp[Req any, Resp any] struct {
	op authz.Op
	// target validates req (without state) and returns the GKID it uses
	// and the version of its material it names (0: the newest).
	target func(req Req) (string, uint32, error)
	// run does the operation with the key's record and the unwrapped
	// material of the version granted, which it must not keep.
	run func(s *service, k usableKey, req Req) (Resp, error)
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
	id, v, err := o.target(req)
	if err != nil {
		return none, err
	}
	k, err := s.authorizedKey(ctx, requestFrom(ctx), id, v, cons, o.op)
	if err != nil {
		return none, err
	}
	defer clear(k.material)
	return o.run(s, k, req)
}

func (s *service) encrypt(ctx context.Context, req *cofferv1.EncryptRequest) (*cofferv1.EncryptResponse, error) {
	return serveCrypto(s, ctx, opEncrypt, req, req.GetConsistency())
}

func (s *service) decrypt(ctx context.Context, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	return serveCrypto(s, ctx, opDecrypt, req, req.GetConsistency())
}

func (s *service) generateDataKey(ctx context.Context, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	pk, err := sealTarget(req.GetSealTo())
	if err != nil {
		return nil, err
	}
	if pk != nil && req.GetWithoutPlaintext() {
		return nil, fmt.Errorf("%w: seal_to seals the data key's plaintext; without_plaintext asks for none", ErrInvalidArgument)
	}
	resp, err := serveCrypto(s, ctx, opDataKey, req, req.GetConsistency())
	if err != nil || pk == nil {
		return resp, err
	}
	defer clear(resp.Plaintext)
	if resp.SealedPlaintext, err = seal(pk, requestFrom(ctx), authz.OpDataKey, resp.GetGkid(), resp.GetKeyVersion(), resp.GetPlaintext()); err != nil {
		return nil, err
	}
	resp.Plaintext = nil
	return resp, nil
}

// validContext checks a caller's encryption context.
func validContext(c map[string]string) error {
	if err := ciphertext.ValidateContext(c); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return nil
}

func encryptTarget(req *cofferv1.EncryptRequest) (string, uint32, error) {
	if n := len(req.GetPlaintext()); n > maxPlaintext {
		return "", 0, fmt.Errorf("%w: plaintext is %d bytes, at most %d per Encrypt; encrypt larger data locally under a data key (GenerateDataKey)", ErrInvalidArgument, n, maxPlaintext)
	}
	if err := validContext(req.GetContext()); err != nil {
		return "", 0, err
	}
	return req.GetGkid(), 0, validateGKID(req.GetGkid())
}

func (s *service) runEncrypt(k usableKey, req *cofferv1.EncryptRequest) (*cofferv1.EncryptResponse, error) {
	rec := k.rec
	h := ciphertext.Header{GKID: rec.GetGkid(), KeyVersion: k.version}
	ct, err := ciphertext.Seal(k.material, h, rec.GetResource(), req.GetContext(), req.GetPlaintext())
	if err != nil {
		return nil, fmt.Errorf("%w: encrypt with key %s: %v", ErrInternal, rec.GetGkid(), err)
	}
	metricCryptoBytes.WithLabelValues(string(authz.OpEncrypt)).Add(float64(len(req.GetPlaintext())))
	return &cofferv1.EncryptResponse{Ciphertext: ct, Gkid: rec.GetGkid(), KeyVersion: k.version}, nil
}

func decryptTarget(req *cofferv1.DecryptRequest) (string, uint32, error) {
	if n := len(req.GetCiphertext()); n > maxCiphertext {
		return "", 0, fmt.Errorf("%w: ciphertext is %d bytes, at most %d", ErrInvalidArgument, n, maxCiphertext)
	}
	h, err := ciphertext.ParseHeader(req.GetCiphertext())
	if err != nil {
		return "", 0, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := validContext(req.GetContext()); err != nil {
		return "", 0, err
	}
	if h.KeyVersion == 0 {
		return "", 0, fmt.Errorf("%w: the ciphertext names version 0 of key %s; versions start at 1", ErrInvalidArgument, h.GKID)
	}
	return h.GKID, h.KeyVersion, validateGKID(h.GKID)
}

func (s *service) runDecrypt(k usableKey, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	rec := k.rec
	pt, err := ciphertext.Open(k.material, rec.GetResource(), req.GetContext(), req.GetCiphertext())
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
	return &cofferv1.DecryptResponse{Plaintext: pt, Gkid: rec.GetGkid(), KeyVersion: k.version, KeyState: apiKeyState(rec)}, nil
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

func dataKeyTarget(req *cofferv1.GenerateDataKeyRequest) (string, uint32, error) {
	if dataKeyLen(req.GetAlgorithm()) == 0 {
		return "", 0, fmt.Errorf("%w: data keys are AES_128 or AES_256, not %v", ErrInvalidArgument, req.GetAlgorithm())
	}
	if err := validContext(req.GetContext()); err != nil {
		return "", 0, err
	}
	return req.GetGkid(), 0, validateGKID(req.GetGkid())
}

func (s *service) runDataKey(k usableKey, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	rec := k.rec
	alg := req.GetAlgorithm()
	if alg == cofferv1.Algorithm_ALGORITHM_UNSPECIFIED {
		alg = cofferv1.Algorithm_ALGORITHM_AES_256
	}
	dk, err := s.barrier.Random(dataKeyLen(alg))
	if err != nil {
		return nil, err
	}
	h := ciphertext.Header{GKID: rec.GetGkid(), KeyVersion: k.version}
	ct, err := ciphertext.Seal(k.material, h, rec.GetResource(), req.GetContext(), dk)
	if err != nil {
		clear(dk)
		return nil, fmt.Errorf("%w: wrap a data key under key %s: %v", ErrInternal, rec.GetGkid(), err)
	}
	resp := &cofferv1.GenerateDataKeyResponse{Ciphertext: ct, Gkid: rec.GetGkid(), KeyVersion: k.version, Algorithm: alg}
	if req.GetWithoutPlaintext() {
		clear(dk)
	} else {
		resp.Plaintext = dk
	}
	return resp, nil
}

// encryptNewSpec validates an encrypt-and-custody request: the key it
// creates (as GenerateKey) and the plaintext and context (as Encrypt).
func encryptNewSpec(req *cofferv1.EncryptNewRequest) (*createSpec, error) {
	spec, err := newCreateSpec(req.GetRequestId(), req.GetPolicy(), req.GetResource(), req.GetAlgorithm(), nil, false, nil)
	if err != nil {
		return nil, err
	}
	if !authz.IsAES(spec.algorithm) {
		return nil, fmt.Errorf("%w: encrypt-and-custody creates an AES key, not %v", ErrInvalidArgument, spec.algorithm)
	}
	if n := len(req.GetPlaintext()); n > maxPlaintext {
		return nil, fmt.Errorf("%w: plaintext is %d bytes, at most %d per encrypt-and-custody", ErrInvalidArgument, n, maxPlaintext)
	}
	return spec, validContext(req.GetContext())
}

// encryptNew executes encrypt-and-custody on the leader: the new key is
// generated and sealed as for GenerateKey, the plaintext encrypted with its
// material before the proposal, and the ciphertext returned once the key is
// committed. A repeated request id returns the first key: the plaintext is
// then encrypted under that key instead.
func (s *service) encryptNew(ctx context.Context, r *request, req *cofferv1.EncryptNewRequest) (*cofferv1.EncryptNewResponse, error) {
	spec, err := encryptNewSpec(req)
	if err != nil {
		return nil, err
	}
	var resp *cofferv1.EncryptResponse
	seal := func(rec *cofferv1.KeyRecord, material []byte) error {
		if err := s.authorize(r.caller, authz.OpEncrypt, rec.GetResource()); err != nil {
			return err
		}
		resp, err = s.runEncrypt(usableKey{rec: rec, version: authz.NewestVersion(rec), material: material}, &cofferv1.EncryptRequest{Plaintext: req.GetPlaintext(), Context: req.GetContext()})
		r.entry.Reason = fmt.Sprintf("encrypt-and-custody: %d bytes encrypted under the new key", len(req.GetPlaintext()))
		return err
	}
	res, err := s.createKeyRecord(ctx, r, spec, seal)
	if err != nil {
		return nil, err
	}
	if res.Duplicate {
		material, err := s.barrier.OpenKey(res.Key)
		if err != nil {
			return nil, err
		}
		defer clear(material)
		if err := seal(res.Key, material); err != nil {
			return nil, err
		}
	}
	return &cofferv1.EncryptNewResponse{Key: keyMetadata(res.Key), Ciphertext: resp.GetCiphertext()}, nil
}

// reEncrypt decrypts a ciphertext and encrypts its plaintext under another
// key (or the same key's newest version) in this process: two uses of keys,
// decided together (decideUses), the plaintext wiped before the response.
func (s *service) reEncrypt(ctx context.Context, req *cofferv1.ReEncryptRequest) (*cofferv1.ReEncryptResponse, error) {
	if err := validConsistency(req.GetConsistency()); err != nil {
		return nil, err
	}
	src := &cofferv1.DecryptRequest{Ciphertext: req.GetCiphertext(), Context: req.GetSourceContext()}
	srcID, srcVersion, err := decryptTarget(src)
	if err != nil {
		return nil, err
	}
	dstID := req.GetDestinationGkid()
	if dstID == "" {
		dstID = srcID
	}
	dst := &cofferv1.EncryptRequest{Gkid: dstID, Context: req.GetSourceContext()}
	if req.GetReplaceContext() || len(req.GetDestinationContext()) > 0 {
		dst.Context = req.GetDestinationContext()
	}
	if _, _, err := encryptTarget(dst); err != nil {
		return nil, err
	}
	r := requestFrom(ctx)
	uses := []keyUse{{op: authz.OpDecrypt, suffix: "decrypt", gkid: srcID, version: srcVersion}, {op: authz.OpEncrypt, suffix: "encrypt", gkid: dstID}}
	if err := s.decideUses(ctx, r, req.GetConsistency(), uses); err != nil {
		return nil, err
	}
	for _, u := range uses {
		if u.err != nil {
			return nil, u.err
		}
	}
	k, err := s.openForUse(r.caller, uses[0])
	if err != nil {
		return nil, err
	}
	plain, err := s.runDecrypt(k, src)
	clear(k.material)
	if err != nil {
		return nil, err
	}
	defer clear(plain.GetPlaintext())
	if k, err = s.openForUse(r.caller, uses[1]); err != nil {
		return nil, err
	}
	defer clear(k.material)
	dst.Plaintext = plain.GetPlaintext()
	out, err := s.runEncrypt(k, dst)
	if err != nil {
		return nil, err
	}
	return &cofferv1.ReEncryptResponse{Ciphertext: out.GetCiphertext(), SourceGkid: srcID, SourceKeyVersion: plain.GetKeyVersion(),
		Gkid: out.GetGkid(), KeyVersion: out.GetKeyVersion()}, nil
}
