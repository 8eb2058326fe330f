package keyseal

import (
	"crypto/hpke"
	"encoding/binary"
	"errors"
	"fmt"
)

// KEM identifiers (RFC 9180 registry) a SealTo may name.
const (
	KEMX25519         uint16 = 0x0020 // DHKEM(X25519, HKDF-SHA256)
	KEMMLKEM768X25519 uint16 = 0x647a // ML-KEM-768 + X25519 hybrid
)

// Sentinel errors. Every error of this package wraps one of them.
var (
	// ErrUnsupportedKEM refuses a KEM id other than the two above.
	ErrUnsupportedKEM = errors.New("keyseal: unsupported KEM")
	// ErrBadPublicKey refuses a public key that does not parse for its KEM.
	ErrBadPublicKey = errors.New("keyseal: bad public key")
	// ErrOpen means sealed bytes did not open: not sealed to this key, for
	// another binding, or altered.
	ErrOpen = errors.New("keyseal: sealed material does not open for this request")
)

// infoDomain starts every info string; it changes with the format.
const infoDomain = "coffer-sealed-key-v1"

// Binding is what sealed material is bound to: the same values on both
// sides, or it does not open.
type Binding struct {
	// Operation is the operation that released the material ("get",
	// "datakey").
	Operation string
	// GKID and Version name the key (for a data key: the key it is wrapped
	// under, and that key's version).
	GKID    string
	Version uint32
	// RequestID is the request's id (the coffer-request-id header, or the
	// message's own).
	RequestID string
	// Client is the caller's identity as the node authenticated it
	// ("client:<name>").
	Client string
}

// Info is the HPKE info string of b: the domain, then each field as a
// 2-byte big-endian length and its bytes (the version as 4 bytes
// big-endian), in the order of Binding. The encoding is injective.
func (b Binding) Info() []byte {
	out := make([]byte, 0, len(infoDomain)+len(b.Operation)+len(b.GKID)+len(b.RequestID)+len(b.Client)+16)
	out = appendField(out, []byte(infoDomain))
	out = appendField(out, []byte(b.Operation))
	out = appendField(out, []byte(b.GKID))
	out = appendField(out, binary.BigEndian.AppendUint32(nil, b.Version))
	out = appendField(out, []byte(b.RequestID))
	return appendField(out, []byte(b.Client))
}

func appendField(b, f []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
	return append(b, f...)
}

// kem returns the KEM of id.
func kem(id uint16) (hpke.KEM, error) {
	switch id {
	case KEMX25519, KEMMLKEM768X25519:
		k, err := hpke.NewKEM(id)
		if err != nil {
			return nil, fmt.Errorf("%w: %#04x: %v", ErrUnsupportedKEM, id, err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("%w: %#04x (want %#04x for X25519 or %#04x for ML-KEM-768+X25519)", ErrUnsupportedKEM, id, KEMX25519, KEMMLKEM768X25519)
}

// PublicKey parses a SealTo's public key for its KEM.
func PublicKey(kemID uint16, key []byte) (hpke.PublicKey, error) {
	k, err := kem(kemID)
	if err != nil {
		return nil, err
	}
	pk, err := k.NewPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %d bytes for KEM %#04x: %v", ErrBadPublicKey, len(key), kemID, err)
	}
	return pk, nil
}

// Seal seals material to pk for b: the encapsulated key followed by the
// AES-256-GCM ciphertext (hpke.Seal's output).
func Seal(pk hpke.PublicKey, b Binding, material []byte) ([]byte, error) {
	out, err := hpke.Seal(pk, hpke.HKDFSHA256(), hpke.AES256GCM(), b.Info(), material)
	if err != nil {
		return nil, fmt.Errorf("keyseal: seal: %w", err)
	}
	return out, nil
}

// Recipient is a client's key pair for one request.
type Recipient struct {
	priv hpke.PrivateKey
	id   uint16
}

// NewRecipient generates a fresh key pair for KEM kemID.
func NewRecipient(kemID uint16) (*Recipient, error) {
	k, err := kem(kemID)
	if err != nil {
		return nil, err
	}
	priv, err := k.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("keyseal: generate key: %w", err)
	}
	return &Recipient{priv: priv, id: kemID}, nil
}

// KEMID and PublicKey are what a request's SealTo carries.
func (r *Recipient) KEMID() uint16     { return r.id }
func (r *Recipient) PublicKey() []byte { return r.priv.PublicKey().Bytes() }

// Open opens material sealed to r for b. The caller wipes what it returns.
func (r *Recipient) Open(b Binding, sealed []byte) ([]byte, error) {
	m, err := hpke.Open(r.priv, hpke.HKDFSHA256(), hpke.AES256GCM(), b.Info(), sealed)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrOpen, err)
	}
	return m, nil
}
