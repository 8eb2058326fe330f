package custody

import (
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/hsmwrap"
)

// Config holds the barrier's settings.
type Config struct {
	// NodeID names this node in errors (Ready's) and is not otherwise used.
	NodeID string
	// Logger receives integrity failures and keystore health changes; nil
	// discards them.
	Logger *slog.Logger
	// ProbeInterval is how often Run runs the keystore's self-test.
	ProbeInterval time.Duration
}

// DefaultConfig returns a Config with every optional field set.
func DefaultConfig() Config {
	return Config{ProbeInterval: 2 * time.Second}
}

// Validate reports a Config that cannot work.
func (c Config) Validate() error {
	if c.ProbeInterval <= 0 {
		return fmt.Errorf("%w: ProbeInterval must be positive", ErrConfig)
	}
	return nil
}

// State is the committed state the barrier reads records from. The state
// machine (*fsm.FSM) satisfies it. Records come back as stored, unverified.
type State interface {
	Cluster() (*cofferv1.ClusterInfo, error)
	Policy(name string) (*cofferv1.PolicyRecord, error)
	Client(name string) (*cofferv1.ClientRecord, error)
}

// Barrier owns a node's keystore and everything done with it for stored
// records; see the package documentation for the contract. It is safe for
// concurrent use.
type Barrier struct {
	ks     hsmwrap.Keystore
	cfg    Config
	logger *slog.Logger
	// state is set once by UseState, before concurrent use.
	state State

	keks kekCache
	// hmacKey caches the unsealed audit detail HMAC key.
	hmacKey hmacKey
	// verifiedMu guards verifiedPolicies: policy name → the tag verified
	// for its stored version.
	verifiedMu       sync.Mutex
	verifiedPolicies map[string]string

	// ksErr is the keystore's last self-test failure (nil: healthy).
	ksErr atomic.Pointer[error]
	// probe asks Run for an immediate self-test.
	probe chan struct{}
}

// New returns a barrier over ks. It runs nothing and does not touch the
// keystore; call Probe to check it. The barrier owns ks from here on and
// closes it in Close; if New fails, ks stays the caller's.
func New(ks hsmwrap.Keystore, cfg Config) (*Barrier, error) {
	if ks == nil {
		return nil, fmt.Errorf("%w: a keystore is required", ErrConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Barrier{ks: ks, cfg: cfg, logger: logger, probe: make(chan struct{}, 1)}, nil
}

// UseState names the committed state the barrier reads clusters, policies
// and clients from. Call it once, before any method that reads state
// (everything but VerifyRecord, Probe, Run, Ready and the keystore
// pass-throughs) and before concurrent use. VerifyRecord needs no state, so
// the state machine can be opened with it first.
func (b *Barrier) UseState(s State) { b.state = s }

// Close closes the keystore. Stop Run first.
func (b *Barrier) Close() error { return b.ks.Close() }

// Kind names the keystore implementation ("software", "pkcs11").
func (b *Barrier) Kind() string { return b.ks.Kind() }

// Random returns n bytes from the keystore's RNG (the HSM's when there is
// one), for what must be unpredictable outside the keystore: GKIDs, the
// cluster id and generated key material. The caller wipes material it draws.
func (b *Barrier) Random(n int) ([]byte, error) {
	r, err := b.ks.Random(n)
	b.keystoreFailed(err)
	return r, err
}

// NewPolicyKEK generates a KEK for version of a custody policy and returns
// it wrapped under the master key, for the policy record. It does not load
// it: every node loads a KEK only from the committed policy record, so a
// KEK whose proposal failed is never used.
func (b *Barrier) NewPolicyKEK(policy string, version uint32) ([]byte, error) {
	w, err := b.ks.GenerateKEK(hsmwrap.KEKID{Policy: policy, Version: version})
	b.keystoreFailed(err)
	return w, err
}

// Signer returns the keystore's signing key named label (audit checkpoints
// use "audit/<node id>"). A keystore that holds no signing keys gives
// ErrCannotSign.
func (b *Barrier) Signer(label string) (crypto.Signer, error) {
	s, ok := b.ks.(hsmwrap.Signer)
	if !ok {
		return nil, fmt.Errorf("%w (%s keystore)", ErrCannotSign, b.ks.Kind())
	}
	return s.Signer(label)
}

func (b *Barrier) cluster() (*cofferv1.ClusterInfo, error) {
	if b.state == nil {
		return nil, ErrNoState
	}
	return b.state.Cluster()
}

// isIntegrity reports a keystore refusal of the data (not a device fault).
func isIntegrity(err error) bool { return errors.Is(err, hsmwrap.ErrIntegrity) }
