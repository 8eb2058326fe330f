package msgsig

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
)

// pssOptions are the RSA-PSS parameters: SHA-256, salt as long as the hash.
var pssOptions = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}

// sign signs msg with key: ECDSA over SHA-256(msg) (ASN.1 DER), Ed25519
// over msg, RSA-PSS over SHA-256(msg).
func sign(key crypto.Signer, msg []byte) ([]byte, error) {
	var (
		sig []byte
		err error
	)
	switch key.Public().(type) {
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, d[:], crypto.SHA256)
	case ed25519.PublicKey:
		sig, err = key.Sign(rand.Reader, msg, crypto.Hash(0))
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, d[:], pssOptions)
	default:
		return nil, fmt.Errorf("%w: cannot sign with a %T key", ErrKey, key.Public())
	}
	if err != nil {
		return nil, fmt.Errorf("msgsig: signing: %w", err)
	}
	return sig, nil
}

// verify checks sig over msg under pub, as sign makes it.
func verify(pub crypto.PublicKey, msg, sig []byte) error {
	ok := false
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		ok = ecdsa.VerifyASN1(k, d[:], sig)
	case ed25519.PublicKey:
		ok = ed25519.Verify(k, msg, sig)
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		ok = rsa.VerifyPSS(k, crypto.SHA256, d[:], sig, pssOptions) == nil
	default:
		return fmt.Errorf("%w: cannot verify with a %T key", ErrKey, pub)
	}
	if !ok {
		return ErrBadSignature
	}
	return nil
}
