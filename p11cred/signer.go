package p11cred

// The token key as a crypto.Signer: ECDSA and RSA (PKCS #1 v1.5, PSS)
// signatures made in the token and checked before they are returned.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/miekg/pkcs11"
)

// tokenKey is the private key in the token, as a crypto.Signer.
type tokenKey struct {
	c    *Credential
	typ  uint
	bits int
	pub  crypto.PublicKey
}

var _ crypto.Signer = (*tokenKey)(nil)

// Public returns the *ecdsa.PublicKey or *rsa.PublicKey.
func (k *tokenKey) Public() crypto.PublicKey { return k.pub }

// Sign signs digest inside the token, ignoring rand (the token draws any
// randomness). An ECDSA key signs a digest of any hash (CKM_ECDSA) and
// returns the ASN.1 DER signature, as *ecdsa.PrivateKey does. An RSA key
// signs with PSS (CKM_RSA_PKCS_PSS) when opts is *rsa.PSSOptions, with the
// salt as long as the hash unless a length is given, and with PKCS #1 v1.5
// (CKM_RSA_PKCS over the DigestInfo) otherwise; SHA-256, SHA-384 and
// SHA-512 only. Safe for concurrent use: each call runs on its own session.
func (k *tokenKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil {
		return nil, fmt.Errorf("%w: no hash function given", ErrInvalidArgument)
	}
	h := opts.HashFunc()
	if h == 0 || !h.Available() || len(digest) != h.Size() {
		return nil, fmt.Errorf("%w: the token key signs digests of a known hash function; got %d bytes for %v", ErrInvalidArgument, len(digest), h)
	}
	mech, msg, err := k.mechanism(digest, opts)
	if err != nil {
		return nil, err
	}
	var raw []byte
	err = k.c.run(func(s pkcs11.SessionHandle, st *state) error {
		if err := k.c.ctx.SignInit(s, mech, st.priv); err != nil {
			return hsmwrap.PKCS11Error("C_SignInit", err)
		}
		out, err := k.c.ctx.Sign(s, msg)
		if err != nil {
			return hsmwrap.PKCS11Error("C_Sign", err)
		}
		raw = out
		return nil
	})
	if err != nil {
		return nil, opError("signing with key "+k.c.cfg.KeyLabel, err)
	}
	if k.typ == pkcs11.CKK_RSA {
		return raw, nil
	}
	return ecdsaDER(raw, (k.bits+7)/8)
}

// mechanism returns the PKCS#11 mechanism and the input to C_Sign.
func (k *tokenKey) mechanism(digest []byte, opts crypto.SignerOpts) ([]*pkcs11.Mechanism, []byte, error) {
	if k.typ == pkcs11.CKK_EC {
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, digest, nil
	}
	h := opts.HashFunc()
	p, ok := rsaHashes[h]
	if !ok {
		return nil, nil, fmt.Errorf("%w: the RSA token key signs SHA-256, SHA-384 or SHA-512 digests, not %v", ErrInvalidArgument, h)
	}
	if pss, isPSS := opts.(*rsa.PSSOptions); isPSS {
		salt := pss.SaltLength
		switch salt {
		case rsa.PSSSaltLengthAuto, rsa.PSSSaltLengthEqualsHash:
			salt = h.Size()
		}
		if salt < 0 {
			return nil, nil, fmt.Errorf("%w: PSS salt length %d", ErrInvalidArgument, pss.SaltLength)
		}
		params := pkcs11.NewPSSParams(p.mech, p.mgf, uint(salt))
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, params)}, digest, nil
	}
	msg := append(append([]byte(nil), p.prefix...), digest...)
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}, msg, nil
}

// rsaHash is what RSA signing needs to know of a hash: its PKCS#11
// mechanism and MGF for PSS, and its DigestInfo prefix for PKCS #1 v1.5
// (RFC 8017 §9.2, note 1).
type rsaHash struct {
	mech, mgf uint
	prefix    []byte
}

var rsaHashes = map[crypto.Hash]rsaHash{
	crypto.SHA256: {pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}},
	crypto.SHA384: {pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384, []byte{0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30}},
	crypto.SHA512: {pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512, []byte{0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40}},
}

// ecdsaDER converts a PKCS#11 ECDSA signature (r ‖ s, each n bytes) to the
// ASN.1 DER SEQUENCE { r, s } that crypto/ecdsa and X.509 use.
func ecdsaDER(raw []byte, n int) ([]byte, error) {
	if len(raw) != 2*n {
		return nil, fmt.Errorf("%w: C_Sign(CKM_ECDSA) returned %d bytes, want %d", ErrUnavailable, len(raw), 2*n)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])})
}

// check signs a probe and verifies it with pub.
func (k *tokenKey) check(pub crypto.PublicKey) error {
	digest := sha256.Sum256([]byte("coffer client key check\x00" + k.c.cfg.KeyLabel))
	var opts crypto.SignerOpts = crypto.SHA256
	if k.typ == pkcs11.CKK_RSA {
		opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	}
	sig, err := k.Sign(nil, digest[:], opts)
	if err != nil {
		return fmt.Errorf("a test signature with key %q: %w", k.c.cfg.KeyLabel, err)
	}
	if err := verify(pub, digest[:], sig, opts); err != nil {
		return fmt.Errorf("%w: key %q: its signature does not verify under the public key beside it: %w", ErrMismatch, k.c.cfg.KeyLabel, err)
	}
	return nil
}

// verify checks sig over digest with pub.
func verify(pub crypto.PublicKey, digest, sig []byte, opts crypto.SignerOpts) error {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(p, digest, sig) {
			return errors.New("the token's signature does not verify under the public key")
		}
		return nil
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			return rsa.VerifyPSS(p, opts.HashFunc(), digest, sig, pss)
		}
		return rsa.VerifyPKCS1v15(p, opts.HashFunc(), digest, sig)
	}
	return fmt.Errorf("public key of type %T", pub)
}
