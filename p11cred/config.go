package p11cred

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// Sentinel errors. Every error of this package wraps one of them (and, for
// a failed PKCS#11 call, also the hsmwrap error that names the call and its
// return value), so callers test with errors.Is.
var (
	// ErrInvalidConfig means a Config value is missing or unusable.
	ErrInvalidConfig = errors.New("p11cred: invalid configuration")
	// ErrUnavailable means the module could not be loaded, the token was not
	// found or the device failed a call.
	ErrUnavailable = errors.New("p11cred: token unavailable")
	// ErrPIN means the PIN is missing, or the token refused it (wrong,
	// expired or locked). Open logs in once and never retries a refused
	// PIN: tokens lock after a few wrong ones.
	ErrPIN = errors.New("p11cred: PIN missing or refused")
	// ErrNotFound means the token holds no object under the configured
	// label: the private key, the cache secret or the certificate.
	ErrNotFound = errors.New("p11cred: object not found in the token")
	// ErrExists means provisioning would create an object whose label is
	// already taken.
	ErrExists = errors.New("p11cred: object already in the token")
	// ErrUnsupportedKey means the private key is of a type or size this
	// package cannot use, or may not sign.
	ErrUnsupportedKey = errors.New("p11cred: unsupported key")
	// ErrMismatch means a certificate does not belong to the token's key.
	ErrMismatch = errors.New("p11cred: certificate does not match the token key")
	// ErrInvalidArgument means an argument to a method is unusable (a
	// digest of the wrong length, an over-long info, a bad PEM input).
	ErrInvalidArgument = errors.New("p11cred: invalid argument")
	// ErrClosed means the credential was closed.
	ErrClosed = errors.New("p11cred: credential closed")
)

// Defaults and limits.
const (
	// DefaultPINEnv is the environment variable the PIN is read from when no
	// PIN file is given.
	DefaultPINEnv = "COFFER_PKCS11_PIN"
	// DefaultSessions is the default number of PKCS#11 sessions operations
	// run on concurrently.
	DefaultSessions = 4
	// MaxSessions bounds Config.Sessions.
	MaxSessions = 64
	// CacheKeyLabelSuffix is appended to the key label to form the default
	// label of the cache secret.
	CacheKeyLabelSuffix = "-cache"
	// MaxLabelLen bounds the labels (bytes of UTF-8).
	MaxLabelLen = 128
	// MaxInfoLen bounds DeriveKey's info.
	MaxInfoLen = 4096
	// DerivedKeyLen is the length of DeriveKey's result (HMAC-SHA256).
	DerivedKeyLen = 32
	// maxCertBytes bounds a certificate chain read from a file or the token.
	maxCertBytes = 64 << 10
)

// Config says where the client's credential lives.
type Config struct {
	// Module is the path of the token vendor's PKCS#11 library (SoftHSM2
	// on Debian: /usr/lib/softhsm/libsofthsm2.so). Required.
	Module string
	// TokenLabel is the label of the token (CKA_LABEL of the token, as
	// `softhsm2-util --show-slots` or `pkcs11-tool -L` print it). Required.
	TokenLabel string
	// KeyLabel is the CKA_LABEL of the client's private key. Required.
	KeyLabel string
	// CacheKeyLabel is the CKA_LABEL of the generic secret DeriveKey
	// uses; empty means KeyLabel + "-cache".
	CacheKeyLabel string
	// PINFile holds the user PIN (one trailing newline removed). When
	// empty the PIN comes from the environment variable PINEnv. The PIN is
	// never taken from a command-line value, which would show in process
	// listings.
	PINFile string
	// PINEnv names the environment variable holding the PIN when PINFile
	// is empty. DefaultConfig sets DefaultPINEnv.
	PINEnv string
	// CertFile, when set, holds the certificate chain (PEM, leaf first)
	// Certificate presents. When empty, Certificate reads the leaf from the
	// token's certificate object with the key's label and CKA_ID (see
	// StoreCertificate).
	CertFile string
	// Sessions is how many PKCS#11 sessions operations use at once (1 to
	// MaxSessions); callers beyond that wait for a session.
	Sessions int
}

// DefaultConfig returns a Config with the PIN read from DefaultPINEnv and
// DefaultSessions sessions; Module, TokenLabel and KeyLabel remain to be
// set.
func DefaultConfig() Config {
	return Config{PINEnv: DefaultPINEnv, Sessions: DefaultSessions}
}

// Validate checks that every required value is set and within bounds. It
// does not touch the module or the files.
func (c Config) Validate() error {
	switch {
	case c.Module == "":
		return fmt.Errorf("%w: no PKCS#11 module", ErrInvalidConfig)
	case c.TokenLabel == "":
		return fmt.Errorf("%w: no token label", ErrInvalidConfig)
	case c.PINFile == "" && c.PINEnv == "":
		return fmt.Errorf("%w: no PIN source: set a PIN file or the environment variable to read it from", ErrPIN)
	case c.Sessions < 1 || c.Sessions > MaxSessions:
		return fmt.Errorf("%w: sessions must be 1-%d, got %d", ErrInvalidConfig, MaxSessions, c.Sessions)
	}
	for _, l := range []struct{ what, v string }{{"key label", c.KeyLabel}, {"cache key label", c.ResolvedCacheKeyLabel()}} {
		if l.v == "" || len(l.v) > MaxLabelLen || !utf8.ValidString(l.v) {
			return fmt.Errorf("%w: %s must be 1-%d bytes of UTF-8", ErrInvalidConfig, l.what, MaxLabelLen)
		}
	}
	if c.ResolvedCacheKeyLabel() == c.KeyLabel {
		return fmt.Errorf("%w: the cache key label must differ from the key label", ErrInvalidConfig)
	}
	return nil
}

// ResolvedCacheKeyLabel is CacheKeyLabel, or its default: KeyLabel +
// CacheKeyLabelSuffix.
func (c Config) ResolvedCacheKeyLabel() string {
	if c.CacheKeyLabel != "" {
		return c.CacheKeyLabel
	}
	return c.KeyLabel + CacheKeyLabelSuffix
}

// pinSource describes where the PIN comes from, for errors.
func (c Config) pinSource() string {
	if c.PINFile != "" {
		return "PIN file " + c.PINFile
	}
	return "environment variable " + c.PINEnv
}
