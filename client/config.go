package client

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/coffer-kms/coffer/keyseal"
)

// Limits on the configuration.
const (
	// MaxEndpoints bounds the endpoint set, configured endpoints and those
	// learnt from leader hints together.
	MaxEndpoints = 64
	// MaxAttemptsLimit bounds Config.MaxAttempts.
	MaxAttemptsLimit = 100
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
	// RequestTimeout bounds one attempt of a unary call, clipped to what is
	// left of the call's deadline. Required.
	RequestTimeout time.Duration
	// RetryDeadline bounds a call, retries included, when the caller's
	// context has no deadline; a context with a deadline bounds the call by
	// that deadline instead, however far it is. For the streaming calls it
	// bounds the retrying, not the transfer: no attempt of AuditExport or
	// Snapshot starts after it, and AuditFollow gives up on an outage that
	// lasts longer. Required.
	RetryDeadline time.Duration
	// MaxAttempts, when positive, also limits the attempts of a call, the
	// first included (1 disables retries). Zero sets no count: the client
	// retries until the call's deadline. At most MaxAttemptsLimit.
	MaxAttempts int
	// Backoff is the wait before the first retry; it doubles for each
	// further retry up to MaxBackoff, and every wait is varied by ±20%
	// jitter. Zero retries at once, which needs a positive MaxAttempts.
	Backoff time.Duration
	// MaxBackoff caps the doubling of Backoff; at least Backoff.
	MaxBackoff time.Duration
	// Cooldown is how long an endpoint that failed with Unavailable is
	// skipped by the load balancer. Zero disables skipping.
	Cooldown time.Duration
	// DialOptions are extra gRPC dial options, appended after the client's
	// own.
	DialOptions []grpc.DialOption
	// DisableKeyCache turns off caching of keys whose cache policy allows
	// it (see GetKey).
	DisableKeyCache bool
	// CacheFile, when set, is the file the key cache is kept in across
	// restarts, provided the cluster's client cache policy allows it
	// (persist): encrypted and authenticated with AES-256-GCM under a key
	// derived from this client's credentials (see CacheFileKey; DESIGN.md
	// specifies the format). It needs the client certificate in
	// TLS.Certificates. A file that does not authenticate is ignored and
	// overwritten; CacheFileError reports it.
	CacheFile string
	// CacheFileKey, when set, derives the secret the cache file key is
	// derived from (at least 32 bytes, for example an HMAC computed by a
	// token), given the HKDF info that names the file format and this
	// client (identity and certificate). Without it the secret is the
	// PKCS#8 encoding of the client certificate's private key, which must
	// then be exportable (not held in a token), or New fails with
	// ErrInvalidConfig.
	CacheFileKey func(info []byte) ([]byte, error)
	// SealKEM is the HPKE KEM the material GetKey and GenerateDataKey
	// release is sealed with: keyseal.KEMX25519 (0, the default) or
	// keyseal.KEMMLKEM768X25519 (post-quantum hybrid).
	SealKEM uint16
	// PlainKeys asks nodes for key material in the clear inside TLS
	// instead of sealed to each call (for nodes that predate sealing).
	PlainKeys bool
}

// DefaultConfig returns a Config with the default timeouts and retry policy;
// the caller sets Endpoints and TLS.
func DefaultConfig() Config {
	return Config{
		RequestTimeout: 5 * time.Second,
		RetryDeadline:  10 * time.Second,
		Backoff:        50 * time.Millisecond,
		MaxBackoff:     time.Second,
		Cooldown:       2 * time.Second,
	}
}

// Validate reports the first problem with the configuration, wrapping
// ErrInvalidConfig.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("%w: no endpoints", ErrInvalidConfig)
	}
	if c.SealKEM != 0 && c.SealKEM != keyseal.KEMX25519 && c.SealKEM != keyseal.KEMMLKEM768X25519 {
		return fmt.Errorf("%w: SealKEM %#04x: want keyseal.KEMX25519 or keyseal.KEMMLKEM768X25519", ErrInvalidConfig, c.SealKEM)
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
		return fmt.Errorf("%w: RequestTimeout must be positive, got %v", ErrInvalidConfig, c.RequestTimeout)
	}
	if c.RetryDeadline <= 0 {
		return fmt.Errorf("%w: RetryDeadline must be positive, got %v", ErrInvalidConfig, c.RetryDeadline)
	}
	if c.MaxAttempts < 0 || c.MaxAttempts > MaxAttemptsLimit {
		return fmt.Errorf("%w: MaxAttempts %d not in [0, %d] (0: no limit but the deadline)", ErrInvalidConfig, c.MaxAttempts, MaxAttemptsLimit)
	}
	if c.Backoff < 0 {
		return fmt.Errorf("%w: negative Backoff %v", ErrInvalidConfig, c.Backoff)
	}
	if c.MaxBackoff < c.Backoff {
		return fmt.Errorf("%w: MaxBackoff %v is below Backoff %v", ErrInvalidConfig, c.MaxBackoff, c.Backoff)
	}
	if c.Backoff == 0 && c.MaxAttempts == 0 {
		return fmt.Errorf("%w: Backoff 0 needs a positive MaxAttempts: retrying at once until the deadline would flood the nodes", ErrInvalidConfig)
	}
	if c.CacheFile != "" && c.DisableKeyCache {
		return fmt.Errorf("%w: CacheFile is set but DisableKeyCache turns the cache off", ErrInvalidConfig)
	}
	if c.Cooldown < 0 {
		return fmt.Errorf("%w: negative Cooldown %v", ErrInvalidConfig, c.Cooldown)
	}
	return nil
}
