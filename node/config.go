package node

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"time"

	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/internal/duration"
	"github.com/coffer-kms/coffer/transport"
)

// Peer is another (or this) member of the cluster as the configuration knows
// it. The Raft configuration is authoritative for membership; peers supply the
// client address and site for each Raft server id.
type Peer struct {
	ID       string `json:"id"`
	Site     string `json:"site"`
	APIAddr  string `json:"api_addr"`
	RaftAddr string `json:"raft_addr"`
}

// RaftTimings are Raft's timeouts. The defaults are tuned for a LAN or
// loopback cluster so that a dead leader is replaced in well under a second:
// a follower starts an election after HeartbeatTimeout (randomised up to 2x)
// without contact, and a candidate retries after ElectionTimeout (likewise).
// Across data centres raise them to a few round trips' worth.
type RaftTimings struct {
	// Profile names the timings the others start from: "lan" (the
	// default, DefaultRaftTimings) or "wan" (WANRaftTimings); fields given
	// beside it override them.
	Profile            string            `json:"profile,omitempty"`
	HeartbeatTimeout   duration.Duration `json:"heartbeat_timeout"`
	ElectionTimeout    duration.Duration `json:"election_timeout"`
	LeaderLeaseTimeout duration.Duration `json:"leader_lease_timeout"`
	CommitTimeout      duration.Duration `json:"commit_timeout"`
	// SnapshotInterval is how often Raft checks whether to snapshot;
	// SnapshotThreshold is how many new entries trigger one; TrailingLogs is
	// how many entries stay in the log after a snapshot so slow followers
	// catch up without an install.
	SnapshotInterval  duration.Duration `json:"snapshot_interval"`
	SnapshotThreshold uint64            `json:"snapshot_threshold"`
	TrailingLogs      uint64            `json:"trailing_logs"`
	// MaxAppendEntries bounds entries per replication message and per apply
	// batch.
	MaxAppendEntries int `json:"max_append_entries"`
}

// Raft timing profiles.
const (
	ProfileLAN = "lan"
	ProfileWAN = "wan"
)

// WANRaftTimings are the timings of a cluster whose voters sit in data
// centres up to about 100 ms apart (round trip): a leader is suspected after
// 1.5–3 s without contact, so that a slow link or a long fsync does not
// cause elections, and a dead leader is replaced within a few seconds.
// Followers learn of commits at most 20 ms late.
func WANRaftTimings() RaftTimings {
	t := DefaultRaftTimings()
	t.Profile = ProfileWAN
	t.HeartbeatTimeout = duration.Duration(1500 * time.Millisecond)
	t.ElectionTimeout = duration.Duration(1500 * time.Millisecond)
	t.LeaderLeaseTimeout = duration.Duration(750 * time.Millisecond)
	t.CommitTimeout = duration.Duration(20 * time.Millisecond)
	return t
}

// UnmarshalJSON starts from the named profile's timings ("lan", the
// default, or "wan") and applies the fields given.
func (t *RaftTimings) UnmarshalJSON(b []byte) error {
	var p struct {
		Profile string `json:"profile"`
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	base := DefaultRaftTimings()
	switch p.Profile {
	case "", ProfileLAN:
	case ProfileWAN:
		base = WANRaftTimings()
	default:
		return fmt.Errorf("raft.profile %q: want %q or %q", p.Profile, ProfileLAN, ProfileWAN)
	}
	type plain RaftTimings
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode((*plain)(&base)); err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	*t = base
	return nil
}

// DefaultRaftTimings returns loopback/LAN settings.
func DefaultRaftTimings() RaftTimings {
	return RaftTimings{
		HeartbeatTimeout:   duration.Duration(250 * time.Millisecond),
		ElectionTimeout:    duration.Duration(250 * time.Millisecond),
		LeaderLeaseTimeout: duration.Duration(125 * time.Millisecond),
		CommitTimeout:      duration.Duration(5 * time.Millisecond),
		SnapshotInterval:   duration.Duration(30 * time.Second),
		SnapshotThreshold:  16384,
		TrailingLogs:       10240,
		MaxAppendEntries:   512,
	}
}

// AuditConfig sets how often the leader signs a checkpoint of the audit
// chain: after CheckpointInterval or CheckpointEvery new entries, whichever
// comes first (and only when there are new entries).
type AuditConfig struct {
	CheckpointInterval duration.Duration `json:"checkpoint_interval"`
	CheckpointEvery    uint64            `json:"checkpoint_every"`
}

// DefaultAuditConfig returns a checkpoint every 10 s or 10,000 entries.
func DefaultAuditConfig() AuditConfig {
	return AuditConfig{CheckpointInterval: duration.Duration(10 * time.Second), CheckpointEvery: 10000}
}

// Limits are the bounds the request path enforces.
type Limits struct {
	// RequestTimeout bounds one request end to end on the server.
	RequestTimeout duration.Duration `json:"request_timeout"`
	// MaxInflightForwards bounds concurrent writes a follower forwards.
	MaxInflightForwards int `json:"max_inflight_forwards"`
}

// DefaultLimits returns the default request bounds.
func DefaultLimits() Limits {
	return Limits{RequestTimeout: duration.Duration(10 * time.Second), MaxInflightForwards: 4096}
}

// GossipSettings say where a node gossips (hashicorp/memberlist, always
// encrypted) and which members it contacts to join a running cluster.
// Gossip is off when BindAddr is empty: the node then knows only the
// members of its peers list and the Raft configuration.
type GossipSettings struct {
	// BindAddr is the host:port of the gossip listener (TCP and UDP).
	BindAddr string `json:"bind_addr,omitempty"`
	// AdvertiseAddr is the host:port the others reach it at; empty means
	// BindAddr.
	AdvertiseAddr string `json:"advertise_addr,omitempty"`
	// KeyFile holds the cluster's gossip key (32 bytes, base64), one of
	// the cluster's secrets: there is no built-in default.
	KeyFile string `json:"key_file,omitempty"`
	// Join lists gossip addresses of existing members. A node with no Raft
	// state and no bootstrap joins through them; the leader then checks its
	// node certificate over mTLS and adds it as a non-voter.
	Join []string `json:"join,omitempty"`
	// WAN selects gossip timings for links across data centres.
	WAN bool `json:"wan,omitempty"`
}

// Config configures one node.
type Config struct {
	ID      string `json:"id"`
	Site    string `json:"site"`
	DataDir string `json:"data_dir"`
	// APIAddr is where the gRPC API listens (clients and other nodes).
	APIAddr string `json:"api_addr"`
	// RaftAddr is where Raft listens; it is also the address peers dial
	// unless RaftAdvertiseAddr is set.
	RaftAddr string `json:"raft_addr"`
	// APIAdvertiseAddr and RaftAdvertiseAddr are the addresses others
	// reach this node at when it binds another (0.0.0.0, or behind NAT):
	// what it gossips, and what the leader records at its admission.
	// Empty: the bound address. A bootstrap peers list names the advertised
	// addresses.
	APIAdvertiseAddr  string `json:"api_advertise_addr,omitempty"`
	RaftAdvertiseAddr string `json:"raft_advertise_addr,omitempty"`
	// MetricsAddr serves Prometheus metrics over plain HTTP if set. It serves
	// metrics only; bind it to loopback or a management network.
	MetricsAddr string `json:"metrics_addr,omitempty"`
	// Pprof also serves Go's profiler under /debug/pprof/ on MetricsAddr.
	// It exposes internals (not key material); enable it only on a
	// loopback or management address.
	Pprof bool `json:"pprof,omitempty"`
	// Peers lists every member, this node included.
	Peers []Peer `json:"peers"`
	// Bootstrap forms a new cluster from Peers when this node has no Raft
	// state yet. Every initial member may set it with the same Peers.
	Bootstrap bool `json:"bootstrap"`
	// BootstrapAdmins are client names registered with every role and a
	// grant of every operation on every resource when the cluster is first
	// initialised. Dev mode sets "admin"; a production cluster normally
	// names one officer here and lets that officer grant the rest, or none.
	BootstrapAdmins []string            `json:"bootstrap_admins,omitempty"`
	TLS             transport.TLSConfig `json:"tls"`
	Raft            RaftTimings         `json:"raft"`
	Limits          Limits              `json:"limits"`
	Audit           AuditConfig         `json:"audit"`
	// KeyRotationCheck is how often the leader looks for keys due for
	// automatic rotation (their use policy's rotation period or count, or
	// the random-nonce bound); 0 selects 30 s.
	KeyRotationCheck duration.Duration `json:"key_rotation_check,omitempty"`
	Gossip           GossipSettings    `json:"gossip"`
	// Membership: how many voters, how stable a server must be before it
	// votes (see cluster.Settings).
	Membership cluster.Settings `json:"membership"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"log_level"`
	// AllowUnsignedRequests accepts requests that release key material
	// or change state without the caller's signature (msgsig/FORMAT.md);
	// they are refused by default. Their audit entries then hold no
	// statement, so nothing shows offline that the client asked.
	AllowUnsignedRequests bool `json:"allow_unsigned_requests,omitempty"`
}

// DefaultConfig returns a Config with every optional field set.
func DefaultConfig() Config {
	return Config{Raft: DefaultRaftTimings(), Limits: DefaultLimits(), Audit: DefaultAuditConfig(), Membership: cluster.DefaultSettings(), LogLevel: "info"}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Validate reports the first problem with the configuration.
func (c Config) Validate() error {
	if !nameRE.MatchString(c.ID) {
		return fmt.Errorf("%w: node id %q must be 1-64 of [A-Za-z0-9._-]", ErrConfig, c.ID)
	}
	if c.Site == "" {
		return fmt.Errorf("%w: site is required", ErrConfig)
	}
	if c.DataDir == "" {
		return fmt.Errorf("%w: data_dir is required", ErrConfig)
	}
	for name, a := range map[string]string{"api_addr": c.APIAddr, "raft_addr": c.RaftAddr} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("%w: %s %q: %v", ErrConfig, name, a, err)
		}
	}
	for name, a := range map[string]string{"api_advertise_addr": c.APIAdvertiseAddr, "raft_advertise_addr": c.RaftAdvertiseAddr} {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("%w: %s %q: %v", ErrConfig, name, a, err)
		}
	}
	if err := c.TLS.ValidateNode(); err != nil {
		return fmt.Errorf("%w: tls: %w", ErrConfig, err)
	}
	self := false
	seen := map[string]bool{}
	for _, p := range c.Peers {
		if !nameRE.MatchString(p.ID) || p.APIAddr == "" || p.RaftAddr == "" {
			return fmt.Errorf("%w: peer %+v needs id, api_addr and raft_addr", ErrConfig, p)
		}
		if seen[p.ID] {
			return fmt.Errorf("%w: peer %q listed twice", ErrConfig, p.ID)
		}
		seen[p.ID] = true
		self = self || p.ID == c.ID
	}
	for _, a := range c.BootstrapAdmins {
		if err := authz.ValidateClientName(a); err != nil {
			return fmt.Errorf("%w: bootstrap_admins: %v", ErrConfig, err)
		}
	}
	if c.Bootstrap && !self {
		return fmt.Errorf("%w: bootstrap needs this node (%q) among peers", ErrConfig, c.ID)
	}
	r := c.Raft
	if r.HeartbeatTimeout.Std() < 5*time.Millisecond || r.ElectionTimeout.Std() < 5*time.Millisecond ||
		r.LeaderLeaseTimeout <= 0 || r.LeaderLeaseTimeout > r.HeartbeatTimeout || r.CommitTimeout <= 0 {
		return fmt.Errorf("%w: raft timeouts must be positive with leader_lease_timeout <= heartbeat_timeout", ErrConfig)
	}
	if r.MaxAppendEntries <= 0 || r.MaxAppendEntries > 1024 {
		return fmt.Errorf("%w: raft max_append_entries must be 1..1024", ErrConfig)
	}
	if c.Audit.CheckpointInterval.Std() < 100*time.Millisecond || c.Audit.CheckpointEvery == 0 {
		return fmt.Errorf("%w: audit checkpoint_interval must be >= 100ms and checkpoint_every > 0", ErrConfig)
	}
	if d := c.KeyRotationCheck.Std(); d != 0 && d < 100*time.Millisecond {
		return fmt.Errorf("%w: key_rotation_check must be 0 (30s) or at least 100ms, not %v", ErrConfig, d)
	}
	if c.Limits.RequestTimeout <= 0 || c.Limits.MaxInflightForwards <= 0 {
		return fmt.Errorf("%w: limits must be positive", ErrConfig)
	}
	if err := c.Membership.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	g := c.Gossip
	if g.BindAddr == "" && (len(g.Join) > 0 || g.KeyFile != "" || g.AdvertiseAddr != "") {
		return fmt.Errorf("%w: gossip settings without gossip.bind_addr", ErrConfig)
	}
	if g.BindAddr != "" && g.KeyFile == "" {
		return fmt.Errorf("%w: gossip.key_file is required: gossip is always encrypted with the cluster's gossip key", ErrConfig)
	}
	if !c.Bootstrap && g.BindAddr != "" && len(g.Join) == 0 && len(c.Peers) == 0 {
		return fmt.Errorf("%w: a node that does not bootstrap needs gossip.join (or peers) to find the cluster", ErrConfig)
	}
	return nil
}

// RaftAdvertise is the address other nodes dial for Raft.
func (c Config) RaftAdvertise() string {
	if c.RaftAdvertiseAddr != "" {
		return c.RaftAdvertiseAddr
	}
	return c.RaftAddr
}
