package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// minLastAttempt is the least time the last attempt before a call's
// deadline is given (see retry.next): with less, a node that answers in
// time is unlikely, and the call gives up with the error it has.
const minLastAttempt = 100 * time.Millisecond

// retry is the retry state of one call: its deadline and the attempts made
// so far (see "Retries" in the package documentation). Every retrying method
// (invoke, AuditExport, AuditFollow, Snapshot) uses one, so they share one
// policy.
type retry struct {
	c      *Client
	method string
	// ctx is the caller's context.
	ctx context.Context
	// start is when the call (for AuditFollow: the outage) began.
	start time.Time
	// deadline is the call's deadline: ctx's, or start plus
	// Config.RetryDeadline when ctx has none.
	deadline time.Time

	attempts int
	endpoint string
	lastErr  error
	// last is set once the wait was shortened to fit before the deadline:
	// the attempt after it is the last.
	last bool
}

// newRetry starts the retry state of a call made with ctx.
func (c *Client) newRetry(ctx context.Context, method string) *retry {
	start := time.Now()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = start.Add(c.cfg.RetryDeadline)
	}
	return &retry{c: c, method: method, ctx: ctx, start: start, deadline: deadline}
}

// attemptContext returns the context of one unary attempt: the caller's,
// bounded by Config.RequestTimeout clipped to the call's deadline.
func (r *retry) attemptContext() (context.Context, context.CancelFunc) {
	d := time.Now().Add(r.c.cfg.RequestTimeout)
	if r.deadline.Before(d) {
		d = r.deadline
	}
	return context.WithDeadline(r.ctx, d)
}

// ended returns why no further attempt can start: the caller's context
// error, or context.DeadlineExceeded once the call's deadline has passed.
// It returns nil while there is time left.
func (r *retry) ended() error {
	if err := r.ctx.Err(); err != nil {
		return err
	}
	if !time.Now().Before(r.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// final records a failed attempt against ep whose error must not be retried
// and returns the call's error.
func (r *retry) final(ep *endpoint, err error) *Error {
	r.record(ep, err)
	return r.error(nil)
}

// next records a failed attempt against ep (err is a gRPC status error) and
// decides what follows. It returns nil when the call should try again, after
// it has waited the backoff (unless now is set: a fresh leader hint is
// followed at once); otherwise it returns the call's error:
//
//   - err is not retryable: the error as is;
//   - the caller's context ended or the call's deadline passed: the error
//     wrapping the context error;
//   - MaxAttempts were made: the error says so.
//
// A wait never runs past the deadline. When the backoff would end at or
// after it, the wait is cut to half the time left, for a last attempt in the
// other half (if that is at least minLastAttempt); when that one fails too,
// or there is too little time for it, the call gives up at once, wrapping
// context.DeadlineExceeded, rather than sleep into the deadline.
func (r *retry) next(ep *endpoint, err error, now bool) *Error {
	r.record(ep, err)
	code := status.Code(err)
	if !retryable(code) && code != codes.Canceled {
		return r.error(nil)
	}
	if ended := r.ended(); ended != nil {
		return r.error(ended)
	}
	if code == codes.Canceled {
		// Cancelled by something other than the caller: not ours to retry.
		return r.error(nil)
	}
	if limit := r.c.cfg.MaxAttempts; limit > 0 && r.attempts >= limit {
		return r.exhausted()
	}
	if now {
		return nil
	}
	wait := r.c.backoff(r.attempts)
	if left := time.Until(r.deadline); wait >= left {
		if r.last || left/2 < minLastAttempt {
			return r.error(context.DeadlineExceeded)
		}
		r.last = true
		wait = left / 2
	}
	if err := sleep(r.ctx, wait); err != nil {
		return r.error(err)
	}
	return nil
}

func (r *retry) record(ep *endpoint, err error) {
	r.attempts++
	r.endpoint, r.lastErr = ep.addr, err
}

// error returns the call's error after the attempts recorded so far;
// ctxErr is the context error that ended the call, if one did. Running out
// of time counts as exhausting the retries; a cancelled context does not.
func (r *retry) error(ctxErr error) *Error {
	return &Error{Method: r.method, Endpoint: r.endpoint, Attempts: r.attempts, Elapsed: time.Since(r.start),
		Exhausted: errors.Is(ctxErr, context.DeadlineExceeded), ctxErr: ctxErr, Err: r.lastErr}
}

// exhausted returns the call's error after MaxAttempts attempts.
func (r *retry) exhausted() *Error {
	e := r.error(nil)
	e.Exhausted = true
	return e
}

// retryable reports whether a failed attempt with this code may be retried:
// Unavailable, or DeadlineExceeded (of the attempt; the caller's deadline is
// checked apart).
func retryable(code codes.Code) bool {
	return code == codes.Unavailable || code == codes.DeadlineExceeded
}

// backoff is the wait before the given retry (1 for the first): Backoff
// doubled per earlier retry up to MaxBackoff, then varied by ±20%.
func (c *Client) backoff(retry int) time.Duration {
	b, limit := c.cfg.Backoff, c.cfg.MaxBackoff
	if b <= 0 || limit <= 0 {
		return 0
	}
	for i := 1; i < retry && b < limit; i++ {
		if b > limit/2 {
			b = limit
			break
		}
		b *= 2
	}
	b = min(b, limit)
	jitter := time.Duration(rand.Int64N(int64(b)/5*2+1)) - b/5
	return b + jitter
}

// sleep waits for d or until ctx ends, returning ctx's error in that case.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
