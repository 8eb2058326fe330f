package escrow

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
)

// Sentinel errors.
var (
	ErrWeakKey       = errors.New("escrow: key is not RSA of at least 3072 bits")
	ErrBadKey        = errors.New("escrow: malformed key")
	ErrDecrypt       = errors.New("escrow: copy does not decrypt with this key")
	ErrPassphrase    = errors.New("escrow: wrong passphrase or damaged key file")
	ErrExists        = errors.New("escrow: file already exists")
	ErrNoCopy        = errors.New("escrow: record has no copy for this escrow key")
	ErrInvalidOption = errors.New("escrow: invalid option")
)

// Scheme names the only encryption scheme used for escrow copies.
const Scheme = "rsa-oaep-sha256"

// MinBits is the smallest accepted RSA modulus.
const MinBits = 3072

// ParsePublicKey parses a PKIX DER public key and checks it is RSA >= 3072.
func ParsePublicKey(der []byte) (*rsa.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	rk, ok := pub.(*rsa.PublicKey)
	if !ok || rk.N.BitLen() < MinBits {
		return nil, ErrWeakKey
	}
	return rk, nil
}

// KeyID is the lowercase hex SHA-256 of a PKIX DER public key.
func KeyID(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func label(gkid string) []byte { return []byte("coffer-escrow-v1\x00" + gkid) }

// Encrypt encrypts material for the escrow key, bound to the GKID.
func Encrypt(pub *rsa.PublicKey, gkid string, material []byte) ([]byte, error) {
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, material, label(gkid))
	if err != nil {
		return nil, fmt.Errorf("escrow: encrypt: %w", err)
	}
	return ct, nil
}

// Decrypt recovers material from an escrow copy made for gkid.
func Decrypt(priv *rsa.PrivateKey, gkid string, ciphertext []byte) ([]byte, error) {
	m, err := rsa.DecryptOAEP(sha256.New(), nil, priv, ciphertext, label(gkid))
	if err != nil {
		return nil, ErrDecrypt
	}
	return m, nil
}
