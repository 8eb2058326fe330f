package client

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/transport"
)

// LeaderAddrKey is the metadata key under which a node may attach the
// leader's client address to an Unavailable error.
const LeaderAddrKey = "coffer-leader-addr"

// reconnectBackoff keeps gRPC's reconnect backoff short: a node that comes
// back is used again within seconds, not the two minutes of the default.
var reconnectBackoff = grpc.ConnectParams{
	Backoff: backoff.Config{
		BaseDelay:  100 * time.Millisecond,
		Multiplier: 1.6,
		Jitter:     0.2,
		MaxDelay:   3 * time.Second,
	},
	MinConnectTimeout: 5 * time.Second,
}

// Client is a Coffer client over a set of nodes. It is safe for concurrent
// use; create one with New and release it with Close.
type Client struct {
	cfg Config

	// eps is the current endpoint set, copied on write under mu; readers
	// load it without locking.
	eps atomic.Pointer[[]*endpoint]
	// mu serialises changes to eps and closing.
	mu     sync.Mutex
	closed atomic.Bool

	// next is the round-robin counter.
	next atomic.Uint64
	// leader is the address of the node that last answered a write as (or
	// for) the leader; writes try it first.
	leader atomic.Pointer[string]
	// now is the clock, replaceable in tests.
	now func() time.Time
	// cache holds keys whose cache policy allows caching (nil: disabled);
	// gov keeps it governed by the cluster (cachepolicy.go, cachewatch.go).
	cache *keyCache
	gov   cacheGovernor

	// id is this client's identity from its certificate, found once
	// (identity; sealed.go).
	idOnce sync.Once
	id     string
	idErr  error

	// signing signs the requests that need it and verifies the
	// responses that must be signed (msgsig).
	signing grpc.UnaryClientInterceptor

	// envKeys maps policy and resource to the GKID envelopes wrap their
	// data keys under (envkeys.go); envMu serialises looking one up.
	envKeys sync.Map
	envMu   sync.Mutex
}

// endpoint is one node and the connection to it.
type endpoint struct {
	addr     string
	conn     *grpc.ClientConn
	keys     cofferv1.KeyServiceClient
	cluster  cofferv1.ClusterServiceClient
	policies cofferv1.PolicyServiceClient
	access   cofferv1.AccessServiceClient
	audit    cofferv1.AuditServiceClient
	crypto   cofferv1.CryptoServiceClient
	// downUntil is the end of the endpoint's cool-down in Unix nanoseconds;
	// zero when it is not cooling down.
	downUntil atomic.Int64
}

// New validates cfg and creates a client with one connection per endpoint.
// Connections are established lazily, on first use.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.Endpoints = slices.Clone(cfg.Endpoints)
	c := &Client{cfg: cfg, now: time.Now}
	c.gov.interval = cachePolicyRefresh
	if !cfg.DisableKeyCache {
		cache, err := newKeyCache(func() time.Time { return c.now() })
		if err != nil {
			return nil, fmt.Errorf("client: key cache: %w", err)
		}
		c.cache = cache
		if err := c.openCacheFile(); err != nil {
			return nil, err
		}
	}
	signing, err := newSigning(cfg.TLS)
	if err != nil {
		return nil, err
	}
	c.signing = signing
	eps := make([]*endpoint, 0, len(cfg.Endpoints))
	for _, addr := range cfg.Endpoints {
		ep, err := c.dial(addr)
		if err != nil {
			closeAll(eps)
			return nil, err
		}
		eps = append(eps, ep)
	}
	c.eps.Store(&eps)
	return c, nil
}

// dial creates the connection to one node.
func (c *Client) dial(addr string) (*endpoint, error) {
	opts := append([]grpc.DialOption{grpc.WithConnectParams(reconnectBackoff), grpc.WithChainUnaryInterceptor(c.signing)}, c.cfg.DialOptions...)
	conn, err := transport.Dial(addr, c.cfg.TLS, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	return &endpoint{
		addr:     addr,
		conn:     conn,
		keys:     cofferv1.NewKeyServiceClient(conn),
		cluster:  cofferv1.NewClusterServiceClient(conn),
		policies: cofferv1.NewPolicyServiceClient(conn),
		access:   cofferv1.NewAccessServiceClient(conn),
		audit:    cofferv1.NewAuditServiceClient(conn),
		crypto:   cofferv1.NewCryptoServiceClient(conn),
	}, nil
}

// Close closes every connection and writes the key cache file, if any,
// with the uses served (giving back those reserved). Calls made after
// Close fail with ErrClosed;
// calls in flight fail with Canceled.
func (c *Client) Close() error {
	// Before mu: the governor's calls may need it (endpointFor).
	c.stopCacheGovernor()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return nil
	}
	c.closed.Store(true)
	var ferr error
	if c.cache != nil {
		ferr = c.cache.release()
	}
	return errors.Join(ferr, closeAll(*c.eps.Load()))
}

func closeAll(eps []*endpoint) error {
	var errs []error
	for _, ep := range eps {
		if err := ep.conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("client: close %s: %w", ep.addr, err))
		}
	}
	return errors.Join(errs...)
}

// Endpoints returns the current endpoint addresses: the configured ones in
// order, then those learnt from leader hints.
func (c *Client) Endpoints() []string {
	eps := *c.eps.Load()
	out := make([]string, len(eps))
	for i, ep := range eps {
		out[i] = ep.addr
	}
	return out
}

// pick chooses the endpoint for the next attempt. A hinted address wins if it
// is known (or can be added). Otherwise the round-robin counter chooses among
// the endpoints that are not cooling down, avoiding prev (the endpoint of the
// previous attempt) while there is another; if every endpoint is cooling down
// the plain round-robin choice is used.
func (c *Client) pick(prev *endpoint, hint string) *endpoint {
	if hint != "" {
		if ep := c.endpointFor(hint); ep != nil {
			return ep
		}
	}
	eps := *c.eps.Load()
	n := uint64(len(eps))
	start := c.next.Add(1) - 1
	now := c.now().UnixNano()
	var fallback *endpoint
	for i := range n {
		ep := eps[(start+i)%n]
		if ep == prev && n > 1 {
			continue
		}
		if fallback == nil {
			fallback = ep
		}
		if ep.available(now) {
			return ep
		}
	}
	return fallback
}

// available reports whether ep is out of its cool-down at now. The first
// caller to see a cool-down end resets the connection's reconnect backoff,
// so the endpoint is tried at once.
func (ep *endpoint) available(now int64) bool {
	until := ep.downUntil.Load()
	if until == 0 {
		return true
	}
	if now < until {
		return false
	}
	if ep.downUntil.CompareAndSwap(until, 0) {
		ep.conn.ResetConnectBackoff()
	}
	return true
}

// markDown starts ep's cool-down.
func (c *Client) markDown(ep *endpoint) {
	if c.cfg.Cooldown > 0 {
		ep.downUntil.Store(c.now().Add(c.cfg.Cooldown).UnixNano())
	}
}

// endpointFor returns the endpoint for addr, dialling and adding it when it
// is new. It returns nil when the client is closed, the endpoint set is full,
// or the dial fails.
func (c *Client) endpointFor(addr string) *endpoint {
	if ep := find(*c.eps.Load(), addr); ep != nil {
		return ep
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	eps := *c.eps.Load()
	if ep := find(eps, addr); ep != nil {
		return ep
	}
	if c.closed.Load() || len(eps) >= MaxEndpoints {
		return nil
	}
	ep, err := c.dial(addr)
	if err != nil {
		return nil
	}
	grown := append(slices.Clip(eps), ep)
	c.eps.Store(&grown)
	return ep
}

func find(eps []*endpoint, addr string) *endpoint {
	for _, ep := range eps {
		if ep.addr == addr {
			return ep
		}
	}
	return nil
}
