package ciphertext

import "errors"

// Sentinel errors. Every error the package returns wraps exactly one of them
// with %w, and its message names the cause. No error carries plaintext or key
// bytes, and no authentication failure says which input did not match.
var (
	// ErrMalformed: bytes that are not a well-formed ciphertext of a
	// supported version (no magic, truncated, a GKID of a bad length or
	// with bad characters, key version 0, too long for the format).
	ErrMalformed = errors.New("ciphertext: malformed")
	// ErrUnsupportedVersion: the bytes start with Coffer's magic but carry a
	// format version this package does not read.
	ErrUnsupportedVersion = errors.New("ciphertext: unsupported format version")
	// ErrAuthentication: a well-formed ciphertext that does not verify under
	// the key, resource and context given (any of them differs from the ones
	// it was sealed with, or a byte of it was changed).
	ErrAuthentication = errors.New("ciphertext: authentication failed")
	// ErrKey: a key that is not 16, 24 or 32 bytes long.
	ErrKey = errors.New("ciphertext: invalid key")
	// ErrInvalidContext: an encryption context outside the rules of
	// ValidateContext.
	ErrInvalidContext = errors.New("ciphertext: invalid encryption context")
	// ErrInvalidHeader: a Header that Seal cannot write (a GKID outside the
	// rules, key version 0).
	ErrInvalidHeader = errors.New("ciphertext: invalid header")
	// ErrInvalidResource: an empty resource, or one longer than 65535 bytes.
	ErrInvalidResource = errors.New("ciphertext: invalid resource")
	// ErrTooLarge: a plaintext longer than AES-GCM can encrypt under one
	// nonce (2^36 - 32 bytes).
	ErrTooLarge = errors.New("ciphertext: plaintext too large")
)
