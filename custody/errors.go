package custody

import "errors"

// Sentinel errors. Every error the barrier returns for one of these reasons
// wraps the sentinel with %w; keystore errors (hsmwrap's sentinels) are
// wrapped as they come. No error carries key material.
var (
	// ErrIntegrity means a stored record failed its check: a key record
	// whose material does not open under its associated data (a changed
	// field, moved material, a record moved to another GKID), an access
	// record whose integrity tag is missing or does not verify, a key
	// record naming a policy that cannot be read, or a cluster record
	// without its record-integrity key. The record must not be served.
	ErrIntegrity = errors.New("barrier: stored record failed its integrity check")
	// ErrUnavailable means the keystore's last self-test failed: key
	// operations are refused until it passes again (retryable elsewhere).
	ErrUnavailable = errors.New("keystore unavailable")
	// ErrNoKEK means a key record or seal names a KEK version its policy
	// does not hold.
	ErrNoKEK = errors.New("barrier: kek version unknown to the policy")
	// ErrBadSeal means a backup's seal does not open: the backup was sealed
	// under another master key, or its header was changed.
	ErrBadSeal = errors.New("barrier: backup seal does not verify")
	// ErrCannotSign means the keystore holds no signing keys.
	ErrCannotSign = errors.New("barrier: the keystore cannot sign")
	// ErrNotTagged refuses a record type that carries no integrity tag (a
	// programming error, not a stored-state one).
	ErrNotTagged = errors.New("barrier: record type carries no integrity tag")
	// ErrNoState means a method that reads committed records was called
	// before UseState.
	ErrNoState = errors.New("barrier: no state attached")
	// ErrNoVersion means a key record holds no such version of its
	// material, or holds it retired.
	ErrNoVersion = errors.New("barrier: no such key version")
	// ErrConfig reports an unusable Config or a missing keystore.
	ErrConfig = errors.New("barrier: invalid configuration")
)
