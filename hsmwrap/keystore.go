package hsmwrap

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers test with errors.Is; implementations wrap them
// with %w and add context that never includes key material.
var (
	// ErrKEKNotLoaded means the KEK named in a call has not been generated or
	// loaded into this keystore instance. The caller loads it with LoadKEK
	// (from the wrapped copy in replicated state) and retries.
	ErrKEKNotLoaded = errors.New("hsmwrap: kek not loaded")
	// ErrIntegrity means authenticated decryption failed: the ciphertext, its
	// associated data or the key does not match. Nothing is returned.
	ErrIntegrity = errors.New("hsmwrap: integrity check failed")
	// ErrUnavailable means the keystore cannot serve right now (device lost,
	// token logged out, self-test failed). Callers fail the operation as
	// retryable; no partial result is produced.
	ErrUnavailable = errors.New("hsmwrap: keystore unavailable")
	// ErrInvalidArgument reports a malformed call (bad length, empty id).
	ErrInvalidArgument = errors.New("hsmwrap: invalid argument")
	// ErrSealed means the master key could not be unsealed (wrong
	// passphrase or key file, corrupted sealed file).
	ErrSealed = errors.New("hsmwrap: master key cannot be unsealed")
	// ErrClosed means the keystore was closed.
	ErrClosed = errors.New("hsmwrap: keystore closed")
)

// KEKID names one version of a custody policy's key-encryption key. Policy
// is non-empty, at most 256 bytes and contains no NUL byte; any other id is
// refused with ErrInvalidArgument. Any Version is accepted.
type KEKID struct {
	Policy  string
	Version uint32
}

func (id KEKID) String() string { return fmt.Sprintf("%s/v%d", id.Policy, id.Version) }

// Keystore is the boundary between Coffer and whatever holds its keys: an HSM
// through PKCS#11, or the software keystore (the embedded default).
//
// Contract, relied upon by callers:
//   - The master key never leaves the keystore. KEKs leave it only wrapped
//     under the master key (GenerateKEK's result); plaintext KEKs are held
//     inside the keystore only.
//   - Seal and Open use AES-256-GCM under the named KEK. Seal's output is
//     self-contained (it carries its nonce) and is at most len(plaintext)+
//     SealOverhead bytes. Open with any change to ciphertext, aad or KEK
//     fails with ErrIntegrity and returns no plaintext; so does input too
//     short or too long to be Seal's output. Seal draws a fresh random
//     96-bit nonce each call, so one KEK must seal fewer than 2^32 times
//     over its life: rotate KEKs (new Version) well before that.
//   - Limits: plaintext at most MaxPlaintext bytes, aad at most MaxAAD,
//     Random at most MaxRandom; beyond them, ErrInvalidArgument.
//   - A KEK used with Seal or Open must be loaded first (GenerateKEK or
//     LoadKEK on this instance), else ErrKEKNotLoaded.
//   - All methods are safe for concurrent use.
//   - Failures that are the device's (not the caller's) wrap ErrUnavailable.
//   - No method logs or returns key material except Open (the caller's
//     material) and Random.
type Keystore interface {
	// Kind names the implementation ("software", "pkcs11").
	Kind() string
	// Random returns n bytes from the keystore's RNG (the HSM's when there
	// is one). n is at most 1024.
	Random(n int) ([]byte, error)
	// GenerateKEK creates a fresh AES-256 KEK inside the keystore and returns
	// it wrapped under the master key for replication. It does not load the
	// KEK: every node, the generating one included, loads the committed copy
	// with LoadKEK. A KEK whose proposal failed is thereby never used, and
	// generating again for the same id is allowed.
	GenerateKEK(id KEKID) (wrapped []byte, err error)
	// LoadKEK unwraps a KEK produced by GenerateKEK (on any node sharing the
	// master key) and keeps it loaded under id. Loading an id that is
	// already loaded is a no-op. A wrapped blob that fails to unwrap gives
	// ErrIntegrity. The id is bound to the wrapped blob: loading a blob under
	// a different id than it was generated for fails with ErrIntegrity.
	LoadKEK(id KEKID, wrapped []byte) error
	// Seal encrypts plaintext under the KEK with associated data aad.
	Seal(id KEKID, plaintext, aad []byte) ([]byte, error)
	// Open decrypts what Seal produced under the same id and aad.
	Open(id KEKID, ciphertext, aad []byte) ([]byte, error)
	// SelfTest runs a known-answer test through the keystore's primitives.
	SelfTest() error
	// Close releases the keystore. Later calls fail with ErrClosed.
	Close() error
}

// SealOverhead is the most Seal adds to a plaintext: a 12-byte nonce and a
// 16-byte GCM tag.
const SealOverhead = 12 + 16

// Limits on Keystore calls.
const (
	// MaxPlaintext bounds Seal's plaintext (key material and small records).
	MaxPlaintext = 1 << 20
	// MaxAAD bounds the associated data of Seal and Open.
	MaxAAD = 64 << 10
	// MaxRandom bounds Random's n.
	MaxRandom = 1024
)
