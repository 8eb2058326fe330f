package client

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
)

// Limits on the configuration.
const (
	// MaxEndpoints bounds the endpoint set, configured endpoints and those
	// learnt from leader hints together.
	MaxEndpoints = 64
	// MaxAttemptsLimit bounds Config.MaxAttempts.
	MaxAttemptsLimit = 100
	// maxBackoffFactor bounds the exponential backoff at this multiple of
	// Config.Backoff.
	maxBackoffFactor = 16
)

// Config configures a Client.
type Config struct {
	// Endpoints are the client (gRPC) addresses of the nodes, host:port.
	// At least one is required; duplicates are refused.
	Endpoints []string
	// TLS is the client side of the mutual TLS every node requires: the
	// cluster CA as RootCAs and the client certificate. Required; build it
	// with transport.TLSConfig.ClientTLS.
	TLS *tls.Config
	// RequestTimeout bounds one attempt. The caller's context bounds the
	// whole call, retries included.
	RequestTimeout time.Duration
	// MaxAttempts is the number of attempts per call, the first included
	// (1 disables retries). At most MaxAttemptsLimit.
	MaxAttempts int
	// Backoff is the wait before the first retry; it doubles for each
	// further retry, up to 16 times its value, with ±20% jitter. Zero
	// retries at once.
	Backoff time.Duration
	// Cooldown is how long an endpoint that failed with Unavailable is
	// skipped by the load balancer. Zero disables skipping.
	Cooldown time.Duration
	// DialOptions are extra gRPC dial options, appended after the client's
	// own.
	DialOptions []grpc.DialOption
	// DisableKeyCache turns off caching of keys whose cache policy allows
	// it (see GetKey).
	DisableKeyCache bool
}

// DefaultConfig returns a Config with the default timeouts and retry policy;
// the caller sets Endpoints and TLS.
func DefaultConfig() Config {
	return Config{
		RequestTimeout: 5 * time.Second,
		MaxAttempts:    5,
		Backoff:        50 * time.Millisecond,
		Cooldown:       2 * time.Second,
	}
}

// Validate reports the first problem with the configuration, wrapping
// ErrInvalidConfig.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("%w: no endpoints", ErrInvalidConfig)
	}
	if len(c.Endpoints) > MaxEndpoints {
		return fmt.Errorf("%w: %d endpoints, at most %d", ErrInvalidConfig, len(c.Endpoints), MaxEndpoints)
	}
	seen := make(map[string]bool, len(c.Endpoints))
	for _, ep := range c.Endpoints {
		if strings.TrimSpace(ep) == "" || ep != strings.TrimSpace(ep) {
			return fmt.Errorf("%w: bad endpoint %q", ErrInvalidConfig, ep)
		}
		if seen[ep] {
			return fmt.Errorf("%w: duplicate endpoint %q", ErrInvalidConfig, ep)
		}
		seen[ep] = true
	}
	if c.TLS == nil {
		return fmt.Errorf("%w: TLS is required", ErrInvalidConfig)
	}
	if c.RequestTimeout <= 0 {
		return fmt.Errorf("%w: RequestTimeout must be positive", ErrInvalidConfig)
	}
	if c.MaxAttempts < 1 || c.MaxAttempts > MaxAttemptsLimit {
		return fmt.Errorf("%w: MaxAttempts %d not in [1, %d]", ErrInvalidConfig, c.MaxAttempts, MaxAttemptsLimit)
	}
	if c.Backoff < 0 {
		return fmt.Errorf("%w: negative Backoff", ErrInvalidConfig)
	}
	if c.Cooldown < 0 {
		return fmt.Errorf("%w: negative Cooldown", ErrInvalidConfig)
	}
	return nil
}
