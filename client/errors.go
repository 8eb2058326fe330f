package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors.
var (
	// ErrInvalidConfig is wrapped by Config.Validate and New.
	ErrInvalidConfig = errors.New("client: invalid config")
	// ErrClosed is returned by calls made after Close.
	ErrClosed = errors.New("client: closed")
	// ErrRetriesExhausted matches (errors.Is) an *Error returned when the
	// client stopped retrying a call whose failures were retryable: its
	// deadline ran out (or left no time for another attempt), or
	// Config.MaxAttempts attempts were made.
	ErrRetriesExhausted = errors.New("client: retries exhausted")

	// ErrCacheFile: the key cache file could not be read or written, or was
	// refused: altered, written by another client or with another
	// certificate, not a cache file, or beyond its bounds (see
	// Client.CacheFileError).
	ErrCacheFile = errors.New("client: key cache file")
	// ErrCacheMiss is matched, together with the call's own error, by the
	// error of a GetKey, EncryptBytes or DecryptBytes that could reach no
	// node when the key cache could not serve the key either; the message
	// says why (not cached, expired, out of uses, not allowed).
	ErrCacheMiss = errors.New("the key cache could not serve it")

	// ErrEnvelopeMalformed: bytes that are not a well-formed envelope of a
	// supported version (no magic, a truncated header or record, a wrapped
	// data key that is not a Coffer ciphertext, an unknown kind, a bad
	// segment size).
	ErrEnvelopeMalformed = errors.New("client: malformed envelope")
	// ErrEnvelopeVersion: an envelope with Coffer's envelope magic and a
	// format version this client does not read.
	ErrEnvelopeVersion = errors.New("client: unsupported envelope version")
	// ErrEnvelopeAuthentication: a well-formed envelope that does not verify
	// under its data key (a changed byte, header or segment order). It does
	// not say which part differed.
	ErrEnvelopeAuthentication = errors.New("client: envelope authentication failed")
	// ErrEnvelopeTruncated: a stream that ends at a segment boundary before
	// its last segment.
	ErrEnvelopeTruncated = errors.New("client: envelope stream truncated")
	// ErrEnvelopeTooLarge: more plaintext than one envelope holds.
	ErrEnvelopeTooLarge = errors.New("client: envelope plaintext too large")
	// ErrEnvelopeKey: the cluster gave no usable key to wrap data keys under
	// for a policy and resource (none could be found or created).
	ErrEnvelopeKey = errors.New("client: no envelope key")
)

// Error is the error of a failed call. It carries the gRPC status of the
// last attempt, so status.Code and status.FromError see that attempt's code
// and details.
type Error struct {
	// Method is the RPC name, for example "GenerateKey".
	Method string
	// Endpoint is the address the last attempt went to.
	Endpoint string
	// Attempts is how many attempts were made.
	Attempts int
	// Elapsed is how long the call tried, from its start to giving up (for
	// AuditFollow, from the start of the outage).
	Elapsed time.Duration
	// Exhausted is true when the client stopped retrying while the failures
	// were retryable: the call's deadline ran out or left no time for
	// another attempt, or MaxAttempts attempts were made.
	Exhausted bool
	// ctxErr is the context error that ended the call: the caller's context
	// error, or context.DeadlineExceeded when the call's deadline (the
	// caller's, or Config.RetryDeadline) ran out.
	ctxErr error
	// Err is the last attempt's error, a gRPC status error.
	Err error
}

// Error describes the failure; it starts with the method and ends with the
// last attempt's status message.
func (e *Error) Error() string {
	st := status.Convert(e.Err)
	return fmt.Sprintf("%s: %s: %s", e.Method, st.Code(), e.message())
}

// message is the status message, with the retry history when the client gave
// up after retrying or the context ended the call, for example
// "gave up after 9.781s and 15 attempt(s) (context deadline exceeded),
// last to node2:7400: no leader".
func (e *Error) message() string {
	msg := status.Convert(e.Err).Message()
	tried := fmt.Sprintf("%v and %d attempt(s)", e.Elapsed.Round(time.Millisecond), e.Attempts)
	switch {
	case e.Exhausted && e.ctxErr != nil:
		return fmt.Sprintf("gave up after %s (%v), last to %s: %s", tried, e.ctxErr, e.Endpoint, msg)
	case e.Exhausted:
		return fmt.Sprintf("gave up after %s (the attempt limit), last to %s: %s", tried, e.Endpoint, msg)
	case e.ctxErr != nil:
		return fmt.Sprintf("%v after %s, last to %s: %s", e.ctxErr, tried, e.Endpoint, msg)
	default:
		return msg
	}
}

// Unwrap returns the last attempt's error.
func (e *Error) Unwrap() error { return e.Err }

// Is matches ErrRetriesExhausted when the client gave up after retrying, and
// the context error that ended the call, if one did
// (context.DeadlineExceeded when the call's deadline ran out).
func (e *Error) Is(target error) bool {
	if target == ErrRetriesExhausted {
		return e.Exhausted
	}
	return e.ctxErr != nil && target == e.ctxErr
}

// GRPCStatus returns the last attempt's status; when the client gave up after
// retrying, its message also says so. The code and details are unchanged.
func (e *Error) GRPCStatus() *status.Status {
	p := status.Convert(e.Err).Proto()
	p.Message = e.message()
	return status.FromProto(p)
}

// Code is a shorthand for the gRPC code of the last attempt.
func (e *Error) Code() codes.Code { return status.Code(e.Err) }

// toStatusErr makes sure err carries a gRPC status: context errors become
// Canceled or DeadlineExceeded, anything else without a status Unknown
// (still unwrapping to err).
func toStatusErr(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	return &localError{err: err}
}

// localError is a failure of the client's own making (a response signature
// that does not verify, a request it could not sign) given the gRPC status
// Unknown, which still unwraps to the cause for errors.Is.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }

func (e *localError) Unwrap() error { return e.err }

func (e *localError) GRPCStatus() *status.Status { return status.New(codes.Unknown, e.err.Error()) }
