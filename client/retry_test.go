package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// outage is how long a simulated leader election lasts: as long as a real
// one may take (NOTES.md, "Figures behind constants"), and longer than five
// attempts take with the default backoff.
const outage = 1500 * time.Millisecond

// noLeader answers as a node does while the cluster has no leader.
func noLeader(context.Context, string) error {
	return status.Error(codes.Unavailable, "no leader")
}

// noLeaderUntil answers as a node does during an election that ends at end.
func noLeaderUntil(end time.Time) func(context.Context, string) error {
	return func(ctx context.Context, method string) error {
		if time.Now().Before(end) {
			return noLeader(ctx, method)
		}
		return nil
	}
}

// defaultBackoff restores the default backoff, which mustClient shortens.
func defaultBackoff(cfg *Config) {
	d := DefaultConfig()
	cfg.Backoff, cfg.MaxBackoff = d.Backoff, d.MaxBackoff
}

// within runs fn, a call that must end by itself, and returns its error; the
// test fails if it runs longer than testTimeout.
func within(t *testing.T, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(testTimeout):
		t.Fatalf("call still running after %v", testTimeout)
		return nil
	}
}

// mustGiveUpAtDeadline checks that err ends a call that retried Unavailable
// failures until its deadline ran out: after elapsed, no earlier than the
// last wait before the deadline (at most maxBackoff plus jitter) and not
// much later than the deadline, with an error that says so. It returns the
// *Error.
func mustGiveUpAtDeadline(t *testing.T, err error, elapsed, deadline, maxBackoff time.Duration) *Error {
	t.Helper()
	if low, high := deadline-maxBackoff*6/5-50*time.Millisecond, deadline+time.Second; elapsed < low || elapsed > high {
		t.Fatalf("gave up after %v, want within [%v, %v] for a %v deadline (err %v)", elapsed, low, high, deadline, err)
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable", err)
	}
	if !errors.Is(err, ErrRetriesExhausted) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want it to match ErrRetriesExhausted and context.DeadlineExceeded", err)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Attempts < 2 {
		t.Fatalf("err = %#v, want an *Error after several attempts", err)
	}
	if ce.Elapsed > elapsed || ce.Elapsed < elapsed-250*time.Millisecond {
		t.Fatalf("Error.Elapsed = %v, the call took %v", ce.Elapsed, elapsed)
	}
	msg := status.Convert(err).Message()
	for _, want := range []string{
		"gave up after " + ce.Elapsed.Round(time.Millisecond).String(),
		fmt.Sprintf(" and %d attempt(s)", ce.Attempts),
		"(context deadline exceeded)",
		"last to " + ce.Endpoint + ": ",
	} {
		if !strings.Contains(msg, want) {
			t.Fatalf("status message %q lacks %q", msg, want)
		}
	}
	if !strings.HasPrefix(err.Error(), ce.Method+": Unavailable: gave up after") {
		t.Fatalf("Error() = %q", err.Error())
	}
	return ce
}

func totalCalls(srvs []*fakeServer) int {
	n := 0
	for _, s := range srvs {
		n += s.callCount()
	}
	return n
}

// TestClient_RidesThroughElection: every node answers "no leader" for
// longer than five attempts take; a write and a read made with a 10 s
// deadline both succeed once the election is over, and the write sends the
// same request id on every attempt.
func TestClient_RidesThroughElection(t *testing.T) {
	for _, method := range []string{"GenerateKey", "GetKey"} {
		t.Run(method, func(t *testing.T) {
			p := mustPKI(t)
			srvs, addrs := mustServers(t, p, 3)
			start := time.Now()
			for _, s := range srvs {
				s.setFail(noLeaderUntil(start.Add(outage)))
			}
			c := mustClient(t, p, defaultBackoff, addrs...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var err error
			if method == "GenerateKey" {
				_, err = c.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "r"})
			} else {
				_, err = c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"})
			}
			if err != nil {
				t.Fatalf("%s through a %v election: %v", method, outage, err)
			}
			if elapsed := time.Since(start); elapsed < outage {
				t.Fatalf("answered after %v, during the election", elapsed)
			}
			var calls []call
			for _, s := range srvs {
				calls = append(calls, s.seen()...)
			}
			if len(calls) <= 5 {
				t.Fatalf("%d attempts; the election outlasts five", len(calls))
			}
			for _, cl := range calls {
				if cl.requestID != calls[0].requestID {
					t.Fatalf("request id changed across attempts: %q and %q", calls[0].requestID, cl.requestID)
				}
			}
		})
	}
}

// TestClient_NeverRecoversFailsAtDeadline: a cluster that stays without a
// leader fails the call at its deadline, not after a count of attempts,
// with an error that names the attempts, the last node and its error.
func TestClient_NeverRecoversFailsAtDeadline(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 3)
	for _, s := range srvs {
		s.setFail(noLeader)
	}
	c := mustClient(t, p, func(cfg *Config) { cfg.Backoff, cfg.MaxBackoff = 10*time.Millisecond, 100*time.Millisecond }, addrs...)
	const deadline = 1500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	_, err := c.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "r"})
	ce := mustGiveUpAtDeadline(t, err, time.Since(start), deadline, c.cfg.MaxBackoff)
	if total := totalCalls(srvs); ce.Attempts != total || total <= 5 {
		t.Fatalf("Error.Attempts = %d, the nodes saw %d (want more than 5)", ce.Attempts, total)
	}
	if !slices.Contains(addrs, ce.Endpoint) || ce.Method != "GenerateKey" {
		t.Fatalf("Error names method %q, endpoint %q", ce.Method, ce.Endpoint)
	}
	if msg := status.Convert(err).Message(); !strings.HasSuffix(msg, ": no leader") {
		t.Fatalf("status message %q does not end with the last error", msg)
	}
	t.Logf("error: %v", err)
}

// TestClient_NoDeadlineUsesRetryDeadline: a context without a deadline is
// bounded by Config.RetryDeadline.
func TestClient_NoDeadlineUsesRetryDeadline(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 2)
	for _, s := range srvs {
		s.setFail(noLeader)
	}
	const retryDeadline = 800 * time.Millisecond
	c := mustClient(t, p, func(cfg *Config) { cfg.RetryDeadline, cfg.MaxBackoff = retryDeadline, 100*time.Millisecond }, addrs...)
	start := time.Now()
	err := within(t, func() error {
		_, err := c.DescribeKey(context.Background(), &cofferv1.DescribeKeyRequest{Gkid: "g"})
		return err
	})
	ce := mustGiveUpAtDeadline(t, err, time.Since(start), retryDeadline, c.cfg.MaxBackoff)
	if total := totalCalls(srvs); ce.Attempts != total {
		t.Fatalf("Error.Attempts = %d, the nodes saw %d", ce.Attempts, total)
	}
}

// TestClient_CallerDeadlineOverridesRetryDeadline: a caller's deadline
// beyond RetryDeadline is the one that counts.
func TestClient_CallerDeadlineOverridesRetryDeadline(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 2)
	start := time.Now()
	for _, s := range srvs {
		s.setFail(noLeaderUntil(start.Add(time.Second)))
	}
	c := mustClient(t, p, func(cfg *Config) { cfg.RetryDeadline = 300 * time.Millisecond }, addrs...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); err != nil {
		t.Fatalf("GetKey with a 5s deadline through a 1s outage: %v", err)
	}
}

// TestClient_AttemptTimeoutClippedToDeadline: an attempt that hangs ends at
// the call's deadline, not after RequestTimeout.
func TestClient_AttemptTimeoutClippedToDeadline(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 1)
	srvs[0].setFail(func(ctx context.Context, _ string) error {
		<-ctx.Done() // hang until the attempt ends
		return ctx.Err()
	})
	const deadline = 500 * time.Millisecond
	c := mustClient(t, p, func(cfg *Config) { cfg.RequestTimeout, cfg.RetryDeadline = time.Minute, deadline }, addrs...)
	for name, ctxFn := range map[string]func() (context.Context, context.CancelFunc){
		"caller deadline": func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), deadline)
		},
		"RetryDeadline": func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := ctxFn()
			defer cancel()
			before := srvs[0].callCount()
			start := time.Now()
			err := within(t, func() error {
				_, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"})
				return err
			})
			if elapsed := time.Since(start); elapsed < deadline-50*time.Millisecond || elapsed > deadline+time.Second {
				t.Fatalf("returned after %v, want about %v", elapsed, deadline)
			}
			if status.Code(err) != codes.DeadlineExceeded || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrRetriesExhausted) {
				t.Fatalf("err = %v, want DeadlineExceeded matching context.DeadlineExceeded and ErrRetriesExhausted", err)
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.Attempts != 1 || srvs[0].callCount()-before != 1 {
				t.Fatalf("err = %#v, want one attempt", err)
			}
		})
	}
}

// TestClient_MaxAttemptsLimits: a positive MaxAttempts stops the call after
// that many attempts, well before the deadline.
func TestClient_MaxAttemptsLimits(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 2)
	for _, s := range srvs {
		s.setFail(noLeader)
	}
	c := mustClient(t, p, func(cfg *Config) { cfg.MaxAttempts = 3 }, addrs...)
	_, err := c.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: "g"})
	if status.Code(err) != codes.Unavailable || !errors.Is(err, ErrRetriesExhausted) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want Unavailable matching ErrRetriesExhausted only", err)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Attempts != 3 || totalCalls(srvs) != 3 {
		t.Fatalf("err = %#v after %d calls, want 3 attempts", err, totalCalls(srvs))
	}
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "and 3 attempt(s) (the attempt limit), last to ") {
		t.Fatalf("status message %q", msg)
	}
}

// TestClient_NonRetryableFailsAtOnce: a failure that another node would
// repeat ends the call at its first attempt, whatever the deadline.
func TestClient_NonRetryableFailsAtOnce(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 3)
	for _, s := range srvs {
		s.setFail(func(context.Context, string) error {
			return status.Error(codes.PermissionDenied, "no grant")
		})
	}
	c := mustClient(t, p, defaultBackoff, addrs...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	start := time.Now()
	_, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"})
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("took %v", elapsed)
	}
	st := status.Convert(err)
	if st.Code() != codes.PermissionDenied || st.Message() != "no grant" || errors.Is(err, ErrRetriesExhausted) {
		t.Fatalf("err = %v, want the node's PermissionDenied as is", err)
	}
	if total := totalCalls(srvs); total != 1 {
		t.Fatalf("%d attempts, want 1", total)
	}
}

// TestClient_LastWaitFitsDeadline: when the next wait would run past the
// deadline the client waits half the time left instead and makes one last
// attempt, which succeeds if the cluster is back by then; otherwise the call
// gives up after it, before the deadline.
func TestClient_LastWaitFitsDeadline(t *testing.T) {
	const deadline = time.Second
	for _, name := range []string{"recovers", "stays down"} {
		t.Run(name, func(t *testing.T) {
			p := mustPKI(t)
			srvs, addrs := mustServers(t, p, 1)
			if name == "recovers" {
				srvs[0].setFail(noLeaderUntil(time.Now().Add(deadline / 4)))
			} else {
				srvs[0].setFail(noLeader)
			}
			c := mustClient(t, p, func(cfg *Config) { cfg.Backoff, cfg.MaxBackoff = time.Minute, time.Minute }, addrs...)
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			_, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"})
			elapsed := time.Since(start)
			if elapsed < deadline/2-50*time.Millisecond || elapsed >= deadline {
				t.Fatalf("took %v, want about half the %v deadline", elapsed, deadline)
			}
			if n := srvs[0].callCount(); n != 2 {
				t.Fatalf("%d attempts, want 2", n)
			}
			if name == "recovers" {
				if err != nil {
					t.Fatalf("last attempt after the outage: %v", err)
				}
				return
			}
			if status.Code(err) != codes.Unavailable || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrRetriesExhausted) {
				t.Fatalf("err = %v, want Unavailable matching context.DeadlineExceeded and ErrRetriesExhausted", err)
			}
		})
	}
}

// TestClient_CanceledDuringBackoff: cancelling the caller's context ends
// the call at once, with an error that matches context.Canceled and does not
// claim the retries ran out.
func TestClient_CanceledDuringBackoff(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 1)
	called := make(chan struct{}, 1)
	srvs[0].setFail(func(ctx context.Context, method string) error {
		select {
		case called <- struct{}{}:
		default:
		}
		return noLeader(ctx, method)
	})
	c := mustClient(t, p, func(cfg *Config) {
		cfg.Backoff, cfg.MaxBackoff, cfg.RetryDeadline = time.Minute, time.Minute, time.Hour
	}, addrs...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"})
		done <- err
	}()
	select {
	case <-called:
	case <-time.After(testTimeout):
		t.Fatal("no attempt reached the node")
	}
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(testTimeout):
		t.Fatal("the call did not end when its context was cancelled")
	}
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrRetriesExhausted) {
		t.Fatalf("err = %v, want it to match context.Canceled and not ErrRetriesExhausted", err)
	}
	if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, "context canceled after ") {
		t.Fatalf("status message %q", msg)
	}
}

// TestClient_HintLoopBacksOff: two nodes that name each other as the leader
// do not make the client spin until the deadline.
func TestClient_HintLoopBacksOff(t *testing.T) {
	p := mustPKI(t)
	srvs, _ := mustServers(t, p, 2)
	for i, s := range srvs {
		other := srvs[1-i].addr
		s.setFail(func(ctx context.Context, _ string) error {
			return withLeaderHint(ctx, other, status.Error(codes.Unavailable, "not the leader"))
		})
	}
	c := mustClient(t, p, func(cfg *Config) { cfg.Backoff, cfg.MaxBackoff = 50*time.Millisecond, 50*time.Millisecond },
		srvs[0].addr, srvs[1].addr)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := c.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "r"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the deadline to end the call", err)
	}
	// Every other attempt waits at least 40 ms: at most about 25 in 500 ms.
	if total := totalCalls(srvs); total < 4 || total > 30 {
		t.Fatalf("%d attempts in 500ms", total)
	}
}

// TestClient_SnapshotRidesThroughElection: Snapshot, a streaming call,
// retries under the same policy.
func TestClient_SnapshotRidesThroughElection(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 2)
	start := time.Now()
	for _, s := range srvs {
		s.setFail(noLeaderUntil(start.Add(outage)))
	}
	c := mustClient(t, p, defaultBackoff, addrs...)
	var buf bytes.Buffer
	idx, err := c.Snapshot(testCtx(t), &buf)
	if err != nil || idx != 7 {
		t.Fatalf("Snapshot through a %v election = %d, %v", outage, idx, err)
	}
	if got := buf.String(); got != "snap-n1" && got != "snap-n2" {
		t.Fatalf("snapshot = %q, want one node's", got)
	}
	if elapsed := time.Since(start); elapsed < outage {
		t.Fatalf("answered after %v, during the election", elapsed)
	}

	// A cluster that never recovers: the call ends at RetryDeadline.
	for _, s := range srvs {
		s.setFail(noLeader)
	}
	c = mustClient(t, p, func(cfg *Config) { cfg.RetryDeadline, cfg.MaxBackoff = 600*time.Millisecond, 100*time.Millisecond }, addrs...)
	start = time.Now()
	err = within(t, func() error {
		_, err := c.Snapshot(context.Background(), &bytes.Buffer{})
		return err
	})
	mustGiveUpAtDeadline(t, err, time.Since(start), 600*time.Millisecond, 100*time.Millisecond)
}
