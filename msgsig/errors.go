package msgsig

import "errors"

// Sentinel errors. Every error the package returns wraps one of them.
var (
	// ErrUnsigned: a message that must be signed carries no signature.
	ErrUnsigned = errors.New("msgsig: not signed")
	// ErrMalformed: a signature or statement does not decode, or a field
	// is missing or out of bounds.
	ErrMalformed = errors.New("msgsig: malformed signature")
	// ErrMismatch: the statement does not describe the message it came
	// with (method, request id, body, certificate, time).
	ErrMismatch = errors.New("msgsig: statement does not match the message")
	// ErrBadSignature: the signature does not verify under the
	// certificate's key.
	ErrBadSignature = errors.New("msgsig: signature does not verify")
	// ErrKey: the key cannot sign or verify (unsupported type).
	ErrKey = errors.New("msgsig: unsupported key")
)
