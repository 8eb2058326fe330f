package hsmwrap

import (
	"crypto/ecdsa"
	"fmt"
	"sync"

	"github.com/miekg/pkcs11"
)

// The PKCS#11 plumbing this package shares with other users of a token in
// the same process (package p11cred, the client's credential in a token):
// the process-wide module registry, token lookup, login with a PIN from a
// file or the environment, and the one mapping of PKCS#11 return values to
// errors. Sharing the registry is not a convenience: a PKCS#11 library is
// initialised once per process and C_Finalize ends every user's sessions,
// so two packages loading the same library on their own would break each
// other. Nothing here knows about master keys or KEKs.

// Module is one reference to a loaded, initialised PKCS#11 library, shared
// with every other user of the same library in the process (keystores
// included). The library is finalised when the last reference is closed.
type Module struct {
	m    *p11Module
	once sync.Once
}

// OpenModule loads and initialises the PKCS#11 library at path, or takes
// another reference to it if this process already has. A missing or
// unloadable library is ErrUnavailable; an empty path ErrInvalidArgument.
func OpenModule(path string) (*Module, error) {
	m, err := loadModule(path)
	if err != nil {
		return nil, err
	}
	return &Module{m: m}, nil
}

// Ctx returns the library's context. Callers must not call Initialize,
// Finalize or Destroy on it; Close does what is needed.
func (m *Module) Ctx() *pkcs11.Ctx { return m.m.ctx }

// Close drops this reference; closing twice is a no-op. Every session the
// caller opened must be closed first.
func (m *Module) Close() { m.once.Do(m.m.release) }

// FindToken returns the slot of the one initialised token labelled label.
// No such token, or several, is ErrUnavailable.
func (m *Module) FindToken(label string) (uint, error) {
	if label == "" {
		return 0, fmt.Errorf("%w: pkcs11: no token label", ErrInvalidArgument)
	}
	return findSlot(m.m.ctx, PKCS11Config{TokenLabel: label})
}

// LoginUser logs the application into s's token as the normal user, with
// the PIN read from pinFile (one trailing newline removed) or else from the
// environment variable pinEnv. Being logged in already counts as success.
// A PIN the token refuses is ErrSealed (the message says the PIN was
// refused, never what it was); a missing PIN source ErrSealed or
// ErrInvalidArgument.
func LoginUser(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, pinFile, pinEnv string) error {
	return login(ctx, s, pkcs11.CKU_USER, pinFile, pinEnv, "user PIN")
}

// PKCS11Error turns an error from a miekg/pkcs11 call named op into this
// package's classified error (nil stays nil): ErrSealed for a refused PIN,
// ErrUnavailable otherwise. The message names op and the return value,
// never arguments.
func PKCS11Error(op string, err error) error { return mapRV(op, callPlain, err) }

// SessionLost reports whether err (from PKCS11Error or a function of this
// file) means the session, the login or the token was lost, so that opening
// a new session and logging in again may help.
func SessionLost(err error) bool {
	c, ok := errClassOf(err)
	return ok && c == classLost
}

// FindObjects returns the handles of at most limit objects matching
// template.
func FindObjects(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, template []*pkcs11.Attribute, limit int) ([]pkcs11.ObjectHandle, error) {
	return findObjects(ctx, s, template, limit)
}

// DecodeP256Point decodes CKA_EC_POINT of a P-256 public key: a DER OCTET
// STRING around the uncompressed point, or the bare point.
func DecodeP256Point(b []byte) (*ecdsa.PublicKey, error) { return decodeECPoint(b) }

// P256ECParams returns CKA_EC_PARAMS for P-256 (the DER-encoded named-curve
// OID), a fresh copy.
func P256ECParams() []byte { return append([]byte(nil), p256ECParams...) }

// ULongAttr decodes a CK_ULONG attribute value as the library returns it.
func ULongAttr(b []byte) uint { return ulongAttr(b) }

// ULongArray encodes CK_ULONG values as an array attribute's value (for
// example CKA_ALLOWED_MECHANISMS), which miekg/pkcs11 cannot build.
func ULongArray(vs ...uint) []byte { return ulongBytes(vs...) }

// ECSigningKeyTemplates returns the templates of an EC P-256 signing key
// pair on the token, the same the keystore's own signing keys use (see
// pkcs11_signer.go): persistent, private, the given CKA_LABEL and CKA_ID; the
// private key sensitive, never extractable and good for CKM_ECDSA signing
// only; neither key modifiable. Pass them to C_GenerateKeyPair with
// CKM_EC_KEY_PAIR_GEN.
func ECSigningKeyTemplates(label string, id []byte) (public, private []*pkcs11.Attribute) {
	return signPublicKeyTemplate(label, id), signPrivateKeyTemplate(label, id)
}
