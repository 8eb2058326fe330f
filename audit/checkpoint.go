package audit

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"sort"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"google.golang.org/protobuf/proto"
)

// CheckpointDomain is hashed in front of the checkpoint fields by
// CheckpointDigest.
const CheckpointDomain = "coffer-audit-checkpoint-v1\x00"

// Limits on checkpoint fields. Validation refuses larger values.
const (
	// MaxPublicKeyLen bounds public_key (a P-256 PKIX key is 91 bytes, an
	// Ed25519 one 44).
	MaxPublicKeyLen = 512
	// MaxSignatureLen bounds signature (ECDSA P-256 ASN.1 is at most 72
	// bytes, Ed25519 64).
	MaxSignatureLen = 256
)

// CheckpointDigest returns the 32 bytes a checkpoint signature covers:
//
//	SHA-256(CheckpointDomain ||
//	        0x01 || seq (8-byte big-endian) ||
//	        0x02 || len(head) (4-byte big-endian) || head ||
//	        0x03 || time_unix_nano (8-byte big-endian, two's complement) ||
//	        0x04 || len(signer) (4-byte big-endian) || signer ||
//	        0x06 || len(public_key) (4-byte big-endian) || public_key)
//
// Every field but signature (5) is covered, in the encoding of
// EntryDigestInput. Binding public_key means a signature cannot be moved to
// another key's name; binding signer means the node name shown to an auditor
// is the one the key holder signed.
func CheckpointDigest(cp *cofferv1.AuditCheckpoint) []byte {
	b := make([]byte, 0, len(CheckpointDomain)+3*(1+4)+2*(1+8)+
		len(cp.GetHead())+len(cp.GetSigner())+len(cp.GetPublicKey()))
	b = append(b, CheckpointDomain...)
	b = appendU64(b, 1, cp.GetSeq())
	b = appendBytes(b, 2, cp.GetHead())
	b = appendU64(b, 3, uint64(cp.GetTimeUnixNano()))
	b = appendStr(b, 4, cp.GetSigner())
	b = appendBytes(b, 6, cp.GetPublicKey())
	sum := sha256.Sum256(b)
	return sum[:]
}

// ValidateCheckpoint checks a checkpoint's structure, not its signature: seq
// at least 1, head HashLen bytes, signer non-empty UTF-8 of at most
// MaxFieldLen bytes, public_key and signature non-empty and within their
// limits. It is cheap and deterministic, so the state machine can call it
// in Apply. Errors wrap ErrInvalidCheckpoint.
func ValidateCheckpoint(cp *cofferv1.AuditCheckpoint) error {
	if err := validateUnsigned(cp); err != nil {
		return err
	}
	if n := len(cp.GetPublicKey()); n == 0 || n > MaxPublicKeyLen {
		return fmt.Errorf("%w: public_key is %d bytes (want 1..%d)", ErrInvalidCheckpoint, n, MaxPublicKeyLen)
	}
	if n := len(cp.GetSignature()); n == 0 || n > MaxSignatureLen {
		return fmt.Errorf("%w: signature is %d bytes (want 1..%d)", ErrInvalidCheckpoint, n, MaxSignatureLen)
	}
	return nil
}

func validateUnsigned(cp *cofferv1.AuditCheckpoint) error {
	if cp == nil {
		return fmt.Errorf("%w: nil checkpoint", ErrInvalidCheckpoint)
	}
	if cp.GetSeq() == 0 {
		return fmt.Errorf("%w: seq is 0", ErrInvalidCheckpoint)
	}
	if len(cp.GetHead()) != HashLen {
		return fmt.Errorf("%w: head is %d bytes, want %d", ErrInvalidCheckpoint, len(cp.GetHead()), HashLen)
	}
	if cp.GetSigner() == "" {
		return fmt.Errorf("%w: signer is empty", ErrInvalidCheckpoint)
	}
	if err := checkString("signer", cp.GetSigner()); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidCheckpoint, err)
	}
	return nil
}

// Sign signs cp with signer. The caller sets seq, head, time_unix_nano and
// signer; Sign sets public_key (the signer's PKIX DER public key) and then
// signature over CheckpointDigest:
//
//   - ECDSA P-256: an ASN.1 DER signature whose message hash is the digest.
//     This is exactly ECDSA-with-SHA256 over the digest's pre-image
//     (CheckpointDomain and the encoded fields), so a verifier may either
//     hash that itself or hand the digest to a "prehashed" ECDSA verify.
//   - Ed25519: pure Ed25519 over the 32 digest bytes.
//
// Other key types fail with ErrUnsupportedKey. Sign verifies the new
// signature before returning, so a misbehaving signer (an HSM returning the
// wrong key, say) fails here rather than at an auditor. It uses crypto/rand
// for ECDSA; it belongs on the proposing leader, never in Apply.
func Sign(cp *cofferv1.AuditCheckpoint, signer crypto.Signer) error {
	if err := validateUnsigned(cp); err != nil {
		return err
	}
	if signer == nil {
		return fmt.Errorf("%w: nil signer", ErrUnsupportedKey)
	}
	pub := signer.Public()
	var opts crypto.SignerOpts
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("%w: ECDSA curve %s, want P-256", ErrUnsupportedKey, k.Curve.Params().Name)
		}
		opts = crypto.SHA256
	case ed25519.PublicKey:
		opts = crypto.Hash(0)
	default:
		return fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	cp.PublicKey = der
	cp.Signature = nil
	sig, err := signer.Sign(rand.Reader, CheckpointDigest(cp), opts)
	if err != nil {
		return fmt.Errorf("audit: signing checkpoint %d: %w", cp.GetSeq(), err)
	}
	cp.Signature = sig
	if err := verifySignature(cp, pub); err != nil {
		cp.Signature = nil
		return fmt.Errorf("audit: signer produced a signature that does not verify: %w", err)
	}
	return nil
}

// VerifyCheckpoint checks cp's structure (ValidateCheckpoint), that its
// public_key is in trusted, and that its signature verifies over
// CheckpointDigest. It does not check head against a chain; the Verifier
// does that. Errors wrap ErrInvalidCheckpoint, ErrUnsupportedKey,
// ErrUntrustedKey or ErrBadSignature.
func VerifyCheckpoint(cp *cofferv1.AuditCheckpoint, trusted TrustedKeys) error {
	if err := ValidateCheckpoint(cp); err != nil {
		return err
	}
	pub, err := trusted.lookup(cp.GetPublicKey())
	if err != nil {
		return err
	}
	return verifySignature(cp, pub)
}

func verifySignature(cp *cofferv1.AuditCheckpoint, pub crypto.PublicKey) error {
	digest := CheckpointDigest(cp)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, digest, cp.GetSignature()) {
			return fmt.Errorf("%w: ECDSA P-256 signature of checkpoint %d", ErrBadSignature, cp.GetSeq())
		}
	case ed25519.PublicKey:
		if !ed25519.Verify(k, digest, cp.GetSignature()) {
			return fmt.Errorf("%w: Ed25519 signature of checkpoint %d", ErrBadSignature, cp.GetSeq())
		}
	default:
		return fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
	}
	return nil
}

// TrustedKeys is the set of public keys whose checkpoint signatures a
// verifier accepts: the audit signing keys of the cluster's nodes, handed to
// auditors out of band. Keys are compared by their PKIX DER encoding after a
// parse and re-encode, so an equivalent encoding of a trusted key (say, a
// compressed EC point) is not mistaken for an untrusted one. The zero value
// is an empty set; Add initialises it. A TrustedKeys is safe for concurrent
// reads once it is no longer being added to.
type TrustedKeys struct {
	keys map[string]crypto.PublicKey
}

// NewTrustedKeys returns a set holding keys (ECDSA P-256 or Ed25519).
func NewTrustedKeys(keys ...crypto.PublicKey) (TrustedKeys, error) {
	var t TrustedKeys
	for _, k := range keys {
		if err := t.Add(k); err != nil {
			return TrustedKeys{}, err
		}
	}
	return t, nil
}

// Add adds pub (an *ecdsa.PublicKey on P-256 or an ed25519.PublicKey).
func (t *TrustedKeys) Add(pub crypto.PublicKey) error {
	der, err := canonicalKey(pub)
	if err != nil {
		return err
	}
	if t.keys == nil {
		t.keys = make(map[string]crypto.PublicKey)
	}
	t.keys[string(der)] = pub
	return nil
}

// AddPKIX adds a PKIX DER public key.
func (t *TrustedKeys) AddPKIX(der []byte) error {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	return t.Add(pub)
}

// AddPEM adds every "PUBLIC KEY" block of data. Any other block type (a
// private key or certificate given by mistake) is an error, and so is data
// without a block.
func (t *TrustedKeys) AddPEM(data []byte) error {
	n := 0
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "PUBLIC KEY" {
			return fmt.Errorf("%w: PEM block %q, want \"PUBLIC KEY\"", ErrUnsupportedKey, block.Type)
		}
		if err := t.AddPKIX(block.Bytes); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("%w: no PUBLIC KEY PEM block", ErrNoTrustedKeys)
	}
	return nil
}

// Len is the number of keys in the set.
func (t TrustedKeys) Len() int { return len(t.keys) }

// Contains reports whether the PKIX DER key der is in the set.
func (t TrustedKeys) Contains(der []byte) bool {
	_, err := t.lookup(der)
	return err == nil
}

// PKIX returns the set's keys as PKIX DER, sorted.
func (t TrustedKeys) PKIX() [][]byte {
	out := make([][]byte, 0, len(t.keys))
	for k := range t.keys {
		out = append(out, []byte(k))
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i], out[j]) < 0 })
	return out
}

func (t TrustedKeys) lookup(der []byte) (crypto.PublicKey, error) {
	if pub, ok := t.keys[string(der)]; ok {
		return pub, nil
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: public_key: %v", ErrUnsupportedKey, err)
	}
	canon, err := canonicalKey(pub)
	if err != nil {
		return nil, err
	}
	if pub, ok := t.keys[string(canon)]; ok {
		return pub, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrUntrustedKey, KeyFingerprint(canon))
}

func canonicalKey(pub crypto.PublicKey) ([]byte, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%w: ECDSA key not on P-256", ErrUnsupportedKey)
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: Ed25519 key of %d bytes", ErrUnsupportedKey, len(k))
		}
	default:
		return nil, fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	return der, nil
}

// KeyFingerprint names a PKIX DER public key in messages:
// "sha256:" + the first 16 bytes of SHA-256(der) in hex.
func KeyFingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return fmt.Sprintf("sha256:%x", sum[:16])
}

// LoadTrustedKeys reads PEM files of "PUBLIC KEY" blocks (one or more per
// file) into a set. A file that cannot be read, holds another block type or
// holds no key is an error naming the file.
func LoadTrustedKeys(paths ...string) (TrustedKeys, error) {
	var t TrustedKeys
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return TrustedKeys{}, fmt.Errorf("audit: trusted keys: %w", err)
		}
		if err := t.AddPEM(data); err != nil {
			return TrustedKeys{}, fmt.Errorf("%s: %w", p, err)
		}
	}
	if t.Len() == 0 {
		return TrustedKeys{}, ErrNoTrustedKeys
	}
	return t, nil
}

// MarshalPublicKeyPEM encodes pub as a "PUBLIC KEY" PEM block, the form
// LoadTrustedKeys reads (what a node hands its auditors).
func MarshalPublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	der, err := canonicalKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// NewPruneMarker returns the marker that stands in for entries 1..cp.seq
// once they are pruned: first_seq = cp.seq+1, prev_hash = cp.head and a copy
// of cp. cp must be structurally valid (ValidateCheckpoint); its signature is
// checked by whoever verifies the marker (the Verifier), not here. Prune only
// up to a checkpoint that has been applied, so the marker's claim was
// checked against the chain when it was still whole.
func NewPruneMarker(cp *cofferv1.AuditCheckpoint) (*cofferv1.AuditPruneMarker, error) {
	if err := ValidateCheckpoint(cp); err != nil {
		return nil, err
	}
	return &cofferv1.AuditPruneMarker{
		FirstSeq:   cp.GetSeq() + 1,
		PrevHash:   bytes.Clone(cp.GetHead()),
		Checkpoint: proto.Clone(cp).(*cofferv1.AuditCheckpoint),
	}, nil
}

// ValidateMarker checks a marker's structure: its checkpoint is
// structurally valid, covers first_seq-1, and its head equals prev_hash.
// The checkpoint's signature is not checked (see VerifyMarker). Errors wrap
// ErrInvalidMarker or ErrInvalidCheckpoint.
func ValidateMarker(m *cofferv1.AuditPruneMarker) error {
	if m == nil {
		return fmt.Errorf("%w: nil marker", ErrInvalidMarker)
	}
	if m.GetFirstSeq() < 2 {
		return fmt.Errorf("%w: first_seq %d (a marker replaces at least entry 1)", ErrInvalidMarker, m.GetFirstSeq())
	}
	if len(m.GetPrevHash()) != HashLen {
		return fmt.Errorf("%w: prev_hash is %d bytes, want %d", ErrInvalidMarker, len(m.GetPrevHash()), HashLen)
	}
	cp := m.GetCheckpoint()
	if cp == nil {
		return fmt.Errorf("%w: no checkpoint", ErrInvalidMarker)
	}
	if err := ValidateCheckpoint(cp); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidMarker, err)
	}
	if cp.GetSeq() != m.GetFirstSeq()-1 {
		return fmt.Errorf("%w: checkpoint covers seq %d, want first_seq-1 = %d", ErrInvalidMarker, cp.GetSeq(), m.GetFirstSeq()-1)
	}
	if !bytes.Equal(cp.GetHead(), m.GetPrevHash()) {
		return fmt.Errorf("%w: prev_hash %x differs from the checkpoint head %x", ErrInvalidMarker, m.GetPrevHash(), cp.GetHead())
	}
	return nil
}

// VerifyMarker is ValidateMarker plus VerifyCheckpoint of the marker's
// checkpoint.
func VerifyMarker(m *cofferv1.AuditPruneMarker, trusted TrustedKeys) error {
	if err := ValidateMarker(m); err != nil {
		return err
	}
	return VerifyCheckpoint(m.GetCheckpoint(), trusted)
}
