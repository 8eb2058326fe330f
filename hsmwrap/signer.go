package hsmwrap

import (
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"

	"golang.org/x/crypto/hkdf"
)

// Signer is implemented by keystores that hold signing keys, such as the
// key a node signs audit checkpoints with. Callers type-assert a Keystore
// to it; a keystore without it cannot sign (checkpoints are then disabled,
// with a warning).
type Signer interface {
	// Signer returns the signing key named label (for example
	// "audit/n1"). The same label always gives the same key on the same
	// keystore (and, for the software keystore, on every keystore holding
	// the same master key).
	Signer(label string) (crypto.Signer, error)
}

// signingSalt domain-separates signing keys from everything else derived
// from the master key.
const signingSalt = "coffer-signing-keys-v1"

// Signer derives an Ed25519 key for label from the master key (HKDF-SHA256
// expand over a pseudorandom key extracted once at open). Every software
// keystore holding the same master key derives the same key for a label, so
// a checkpoint signature proves possession of the master key, not of one
// node; the PKCS#11 keystore keeps per-node keys on the token instead.
func (s *Software) Signer(label string) (crypto.Signer, error) {
	if label == "" || len(label) > 256 {
		return nil, fmt.Errorf("%w: signing key label must be 1-256 bytes", ErrInvalidArgument)
	}
	s.mu.RLock()
	prk, closed := s.signPRK, s.closed
	s.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := hkdf.Expand(sha256.New, prk, []byte("audit-signing\x00"+label)).Read(seed); err != nil {
		return nil, fmt.Errorf("%w: derive signing key: %v", ErrUnavailable, err)
	}
	defer clear(seed)
	return ed25519.NewKeyFromSeed(seed), nil
}
