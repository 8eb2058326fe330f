package audit

import "errors"

// Sentinel errors. Every error the package returns wraps one of them (a
// *VerifyError unwraps to the sentinel that matches its Kind).
var (
	// ErrInvalidEntry: an entry proposal breaks a rule of Validate.
	ErrInvalidEntry = errors.New("audit: invalid entry")
	// ErrInvalidCheckpoint: a checkpoint is structurally wrong (seq 0, head
	// of the wrong length, missing signature or key, a field over its limit).
	ErrInvalidCheckpoint = errors.New("audit: invalid checkpoint")
	// ErrInvalidMarker: a prune marker does not match its checkpoint.
	ErrInvalidMarker = errors.New("audit: invalid prune marker")
	// ErrUnsupportedKey: a key that is neither ECDSA P-256 nor Ed25519, or
	// public key bytes that do not parse as PKIX.
	ErrUnsupportedKey = errors.New("audit: unsupported key")
	// ErrUntrustedKey: a checkpoint signed by a key outside the trusted set.
	ErrUntrustedKey = errors.New("audit: checkpoint signed by an untrusted key")
	// ErrBadSignature: a checkpoint signature that does not verify.
	ErrBadSignature = errors.New("audit: bad checkpoint signature")
	// ErrChain: the chain is broken (gap, reorder, duplicate, bad link or
	// hash, a checkpoint whose head does not match, a tail left uncovered
	// under StrictTail, a contradicted or unreached pinned checkpoint).
	ErrChain = errors.New("audit: chain does not verify")
	// ErrMalformed: an export line that is not a valid item.
	ErrMalformed = errors.New("audit: malformed export")
	// ErrLineTooLong: an export line longer than the reader's limit.
	ErrLineTooLong = errors.New("audit: export line too long")
	// ErrNoTrustedKeys: a trusted key file with no public key in it.
	ErrNoTrustedKeys = errors.New("audit: no trusted keys")
	// ErrInvalidOptions: VerifyOptions.Validate failed.
	ErrInvalidOptions = errors.New("audit: invalid options")
)
