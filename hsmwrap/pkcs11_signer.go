package hsmwrap

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"sync"
	"unicode/utf8"

	"github.com/miekg/pkcs11"
)

// Signing keys on the token. A PKCS#11 keystore keeps one EC P-256 key pair
// per label as persistent token objects, so unlike the software keystore's
// derived keys they are per token (per node), and a signature proves
// possession of that node's HSM. The pair is created the first time a label
// is asked for and found again afterwards, by every keystore on the token.
//
//	private key: CKO_PRIVATE_KEY, CKK_EC, CKA_TOKEN, CKA_PRIVATE,
//	             CKA_LABEL "coffer-sign/<label>", CKA_ID (16 random bytes,
//	             shared with its public key), CKA_SENSITIVE, not
//	             CKA_EXTRACTABLE, CKA_SIGN only (CKM_ECDSA; no decrypt, unwrap,
//	             derive, sign-recover), not copyable, not modifiable
//	public key:  CKO_PUBLIC_KEY, CKK_EC, CKA_TOKEN, CKA_PRIVATE (only the PIN
//	             holder can replace it), the same label and id,
//	             CKA_EC_PARAMS prime256v1, CKA_VERIFY only, not modifiable
//
// Signing is C_Sign(CKM_ECDSA) over the caller's SHA-256 digest on a pooled
// session, so a lost session, login or token is re-established like for any
// other operation. The token returns r ‖ s; the signer returns the ASN.1 DER
// SEQUENCE { r, s } that crypto/ecdsa and X.509 use, and checks it against
// the public key before returning it.

const (
	// signKeyLabelPrefix starts the CKA_LABEL of every signing key pair.
	signKeyLabelPrefix = "coffer-sign/"
	// maxSignLabelLen bounds the label passed to Signer (as the software
	// keystore does).
	maxSignLabelLen = 256
	// signKeyIDLen is the length of the random CKA_ID tying a signing key
	// pair's two objects together.
	signKeyIDLen = 16
	// maxSignKeyDuplicates bounds how many private keys under one label are
	// considered (two only when keystores in separate processes created one
	// each at the same moment).
	maxSignKeyDuplicates = 16
	// p256ScalarLen is the length of r and of s in a P-256 signature.
	p256ScalarLen = 32
)

// p256ECParams is CKA_EC_PARAMS for P-256: the DER encoding of the named
// curve's OID, 1.2.840.10045.3.1.7 (prime256v1, secp256r1).
var p256ECParams = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

var ecdsaMechanism = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}

// signKeyMu serialises finding-or-creating signing keys in this process, so
// that keystores on the same token in one process never create two key
// pairs for one label. Keystores in different processes are not
// coordinated; see findSigningKey for how a duplicate is resolved.
var signKeyMu sync.Mutex

// badSigningKey marks a signing key that is missing or unusable on the
// token. signingKeyErr reports it as ErrUnavailable once the operation has
// left the session pool: wrapping ErrUnavailable inside would mark the
// keystore unhealthy, and the token itself is fine.
type badSigningKey struct{ msg string }

func (e *badSigningKey) Error() string { return e.msg }

var _ Signer = (*PKCS11)(nil)

// Signer returns the EC P-256 signing key labelled label on the token
// (CKA_LABEL "coffer-sign/"+label), generating the key pair inside the HSM
// (C_GenerateKeyPair, CKM_EC_KEY_PAIR_GEN) the first time. The pair is made
// of persistent token objects, so every keystore on the same token, now or
// after a restart, gets the same key for the same label; keystores on other
// tokens get other keys. The private key is sensitive and never extractable.
//
// The returned crypto.Signer's Public is an *ecdsa.PublicKey. Its Sign takes
// a SHA-256 digest (opts.HashFunc() must be crypto.SHA256), signs it inside
// the HSM with CKM_ECDSA, ignores rand (the HSM draws the nonce) and returns
// an ASN.1 DER signature, as *ecdsa.PrivateKey does. Failures of the device
// wrap ErrUnavailable, a closed keystore gives ErrClosed, a bad argument
// ErrInvalidArgument. label is 1 to 256 bytes of UTF-8.
func (p *PKCS11) Signer(label string) (crypto.Signer, error) {
	if label == "" || len(label) > maxSignLabelLen || !utf8.ValidString(label) {
		return nil, fmt.Errorf("%w: signing key label must be 1-%d bytes of UTF-8", ErrInvalidArgument, maxSignLabelLen)
	}
	k := &pkcs11Signer{p: p, label: signKeyLabelPrefix + label}
	err := p.run(func(ep *epoch, s pkcs11.SessionHandle) error {
		signKeyMu.Lock()
		defer signKeyMu.Unlock()
		id, priv, pub, err := findSigningKey(p.ctx, s, k.label)
		if err != nil {
			return err
		}
		if priv == 0 {
			if id, priv, pub, err = p.generateSigningKey(s, k.label); err != nil {
				return err
			}
		}
		if err := checkSigningKey(p.ctx, s, k.label, priv); err != nil {
			return err
		}
		if k.pub, err = ecPublicKey(p.ctx, s, k.label, pub); err != nil {
			return err
		}
		k.id = id
		k.mu.Lock()
		k.gen, k.priv = ep.gen, priv
		k.mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, signingKeyErr(k.label, err)
	}
	// One signature now, checked against the public key, so that a private
	// key that does not match the public key found beside it (or a token
	// that signs wrongly) fails here rather than in every later use.
	probe := sha256.Sum256([]byte("coffer signing key check\x00" + k.label))
	if _, err := k.Sign(nil, probe[:], crypto.SHA256); err != nil {
		return nil, err
	}
	return k, nil
}

// signingKeyErr gives an error from a signing key operation its final form.
func signingKeyErr(label string, err error) error {
	var sk *badSigningKey
	if errors.As(err, &sk) {
		return fmt.Errorf("%w: pkcs11: signing key %q: %s", ErrUnavailable, label, sk.msg)
	}
	return err
}

// pkcs11Signer is a signing key pair on the token. It keeps the public key
// (read once) and the private key's handle in the epoch it was found in;
// in a later epoch (after a session, login or device loss) the handle is
// looked up again by label and CKA_ID, since a token may give private
// objects new handles after logging in again.
type pkcs11Signer struct {
	p     *PKCS11
	label string // the full CKA_LABEL
	id    []byte // CKA_ID
	pub   *ecdsa.PublicKey

	mu   sync.Mutex
	gen  uint64              // epoch the handle belongs to
	priv pkcs11.ObjectHandle // private key handle in epoch gen
}

// Public returns the key's *ecdsa.PublicKey (P-256).
func (k *pkcs11Signer) Public() crypto.PublicKey { return k.pub }

// Sign signs a SHA-256 digest inside the HSM with CKM_ECDSA and returns the
// ASN.1 DER signature. rand is not used: the HSM draws the ECDSA nonce.
func (k *pkcs11Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 {
		return nil, fmt.Errorf("%w: the PKCS#11 signing key signs SHA-256 digests only", ErrInvalidArgument)
	}
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("%w: digest is %d bytes, want %d", ErrInvalidArgument, len(digest), sha256.Size)
	}
	var raw []byte
	err := k.p.run(func(ep *epoch, s pkcs11.SessionHandle) error {
		h, err := k.handle(ep, s)
		if err != nil {
			return err
		}
		if err := k.p.ctx.SignInit(s, ecdsaMechanism, h); err != nil {
			return mapRV("C_SignInit(CKM_ECDSA)", callPlain, err)
		}
		raw, err = k.p.ctx.Sign(s, digest)
		if err != nil {
			return mapRV("C_Sign(CKM_ECDSA)", callPlain, err)
		}
		return nil
	})
	if err != nil {
		return nil, signingKeyErr(k.label, err)
	}
	if len(raw) != 2*p256ScalarLen {
		return nil, fmt.Errorf("%w: pkcs11: C_Sign(CKM_ECDSA) returned %d bytes, want %d", ErrUnavailable, len(raw), 2*p256ScalarLen)
	}
	sig, err := asn1.Marshal(struct{ R, S *big.Int }{
		R: new(big.Int).SetBytes(raw[:p256ScalarLen]),
		S: new(big.Int).SetBytes(raw[p256ScalarLen:]),
	})
	if err != nil {
		return nil, fmt.Errorf("%w: encoding the signature: %v", ErrUnavailable, err)
	}
	if !ecdsa.VerifyASN1(k.pub, digest, sig) {
		return nil, fmt.Errorf("%w: pkcs11: signing key %q: the token's signature does not verify under the key's public key", ErrUnavailable, k.label)
	}
	return sig, nil
}

// handle returns the private key's handle in epoch ep, looking it up again
// (by label and CKA_ID) in a new epoch. A key that has gone from the token
// is not replaced: its public key may have been published.
func (k *pkcs11Signer) handle(ep *epoch, s pkcs11.SessionHandle) (pkcs11.ObjectHandle, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.gen == ep.gen && k.priv != 0 {
		return k.priv, nil
	}
	hs, err := findObjects(k.p.ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, k.label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, k.id),
	}, 2)
	if err != nil {
		return 0, err
	}
	if len(hs) != 1 {
		return 0, &badSigningKey{msg: fmt.Sprintf("%d private keys on the token have its label and id, want 1", len(hs))}
	}
	k.gen, k.priv = ep.gen, hs[0]
	return hs[0], nil
}

// findSigningKey returns the key pair labelled label: its CKA_ID and the
// handles of its private and public key, or zero handles if there is none.
// If there are several private keys under the label (keystores in separate
// processes each created one at the same moment), the one with the smallest
// CKA_ID wins, so that every later lookup agrees; the others are left alone.
func findSigningKey(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string) (id []byte, priv, pub pkcs11.ObjectHandle, err error) {
	privs, err := findObjects(ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, maxSignKeyDuplicates)
	if err != nil || len(privs) == 0 {
		return nil, 0, 0, err
	}
	for _, h := range privs {
		attrs, err := ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, nil)})
		if err != nil {
			return nil, 0, 0, mapRV("C_GetAttributeValue(signing key id)", callPlain, err)
		}
		if len(attrs) != 1 {
			return nil, 0, 0, &badSigningKey{msg: "the token returned no CKA_ID for its private key"}
		}
		if v := attrs[0].Value; priv == 0 || bytes.Compare(v, id) < 0 {
			id, priv = bytes.Clone(v), h
		}
	}
	if len(id) == 0 {
		return nil, 0, 0, &badSigningKey{msg: "its private key has no CKA_ID, so its public key cannot be told apart; remove it or give it one"}
	}
	pubs, err := findObjects(ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
	}, 2)
	if err != nil {
		return nil, 0, 0, err
	}
	if len(pubs) != 1 {
		return nil, 0, 0, &badSigningKey{msg: fmt.Sprintf("%d public keys on the token belong to its private key, want 1", len(pubs))}
	}
	return id, priv, pubs[0], nil
}

// generateSigningKey creates the key pair labelled label on the token.
func (p *PKCS11) generateSigningKey(s pkcs11.SessionHandle, label string) (id []byte, priv, pub pkcs11.ObjectHandle, err error) {
	id, err = p.ctx.GenerateRandom(s, signKeyIDLen)
	if err != nil {
		return nil, 0, 0, mapRV("C_GenerateRandom", callPlain, err)
	}
	if len(id) != signKeyIDLen {
		return nil, 0, 0, fmt.Errorf("%w: pkcs11: C_GenerateRandom returned %d bytes, want %d", ErrUnavailable, len(id), signKeyIDLen)
	}
	pub, priv, err = p.ctx.GenerateKeyPair(s,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		signPublicKeyTemplate(label, id), signPrivateKeyTemplate(label, id))
	if err != nil {
		return nil, 0, 0, fmt.Errorf("generating a signing key: %w", mapRV("C_GenerateKeyPair(CKM_EC_KEY_PAIR_GEN)", callPlain, err))
	}
	return id, priv, pub, nil
}

// signPublicKeyTemplate is the template of a signing key pair's public key.
// CKA_MODIFIABLE comes last (SoftHSM2 applies a template in order).
func signPublicKeyTemplate(label string, id []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256ECParams),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	}
}

// signPrivateKeyTemplate is the template of a signing key pair's private
// key: sensitive, never extractable, good for CKM_ECDSA signing only.
func signPrivateKeyTemplate(label string, id []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, ulongBytes(pkcs11.CKM_ECDSA)),
		pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	}
}

// checkSigningKey refuses a private key the signer must not use: not an EC
// P-256 key, readable, extractable, or unable to sign.
func checkSigningKey(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string, h pkcs11.ObjectHandle) error {
	attrs, err := ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
	})
	if err != nil {
		return mapRV("C_GetAttributeValue(signing key)", callPlain, err)
	}
	v := make(map[uint][]byte, len(attrs))
	for _, a := range attrs {
		v[a.Type] = a.Value
	}
	isTrue := func(t uint) bool { b := v[t]; return len(b) == 1 && b[0] != 0 }
	var why string
	switch {
	case ulongAttr(v[pkcs11.CKA_KEY_TYPE]) != pkcs11.CKK_EC || !bytes.Equal(v[pkcs11.CKA_EC_PARAMS], p256ECParams):
		why = "is not an EC P-256 key"
	case !isTrue(pkcs11.CKA_SENSITIVE):
		why = "is not CKA_SENSITIVE"
	case isTrue(pkcs11.CKA_EXTRACTABLE):
		why = "is CKA_EXTRACTABLE"
	case !isTrue(pkcs11.CKA_SIGN):
		why = "lacks CKA_SIGN"
	default:
		return nil
	}
	return &badSigningKey{msg: "its private key " + why + "; remove the key pair labelled " + fmt.Sprintf("%q", label) + " to have a new one made"}
}

// ecPublicKey reads a P-256 public key object: CKA_EC_PARAMS must name
// P-256, and CKA_EC_POINT is the uncompressed point, DER-encoded as an
// OCTET STRING (PKCS#11 2.40; some tokens return the bare point, which is
// accepted too).
func ecPublicKey(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string, h pkcs11.ObjectHandle) (*ecdsa.PublicKey, error) {
	attrs, err := ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
	})
	if err != nil {
		return nil, mapRV("C_GetAttributeValue(signing public key)", callPlain, err)
	}
	var params, point []byte
	for _, a := range attrs {
		switch a.Type {
		case pkcs11.CKA_EC_PARAMS:
			params = a.Value
		case pkcs11.CKA_EC_POINT:
			point = a.Value
		}
	}
	if !bytes.Equal(params, p256ECParams) {
		return nil, &badSigningKey{msg: "its public key is not on P-256"}
	}
	pub, err := decodeECPoint(point)
	if err != nil {
		return nil, &badSigningKey{msg: "its public key's CKA_EC_POINT does not decode: " + err.Error()}
	}
	return pub, nil
}

// decodeECPoint decodes CKA_EC_POINT of a P-256 key: a DER OCTET STRING
// around the uncompressed point (0x04 ‖ X ‖ Y), or the bare point.
func decodeECPoint(b []byte) (*ecdsa.PublicKey, error) {
	const pointLen = 1 + 2*p256ScalarLen
	point := b
	if len(b) != pointLen { // the DER form is 2 bytes longer
		var inner []byte
		rest, err := asn1.Unmarshal(b, &inner)
		if err != nil || len(rest) != 0 {
			return nil, fmt.Errorf("%d bytes, neither a DER OCTET STRING nor an uncompressed point", len(b))
		}
		point = inner
	}
	return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
}
