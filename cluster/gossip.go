package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// GossipKeyLen is the length of a gossip key: AES-256 (memberlist accepts
// 16, 24 or 32 bytes; Coffer uses 32).
const GossipKeyLen = 32

// maxMetaLen bounds a node's gossiped metadata (memberlist's own limit is
// 512 bytes).
const maxMetaLen = 512

// Meta is what a node tells the others about itself over gossip. Gossip is
// advisory: nothing in it is trusted until the leader has checked the
// node's certificate over mTLS (see package node, members.go).
type Meta struct {
	ID       string `json:"id"`
	Site     string `json:"site"`
	APIAddr  string `json:"api"`
	RaftAddr string `json:"raft"`
	// Role is "voter", "non-voter", "staging" or "none" (not in the Raft
	// configuration yet), as the node itself last saw it.
	Role string `json:"role"`
	// Version is the node's build version.
	Version string `json:"version"`
}

// Member is a gossip member and its state.
type Member struct {
	Meta
	// Addr is the member's gossip address.
	Addr string
	// State is "alive", "suspect", "dead" or "left".
	State string
}

// GossipConfig configures StartGossip.
type GossipConfig struct {
	// BindAddr is the host:port the gossip listener binds (TCP and UDP).
	BindAddr string
	// AdvertiseAddr is the host:port the others reach this node at; empty
	// means BindAddr, which must then not be unspecified.
	AdvertiseAddr string
	// Keys are the gossip keys: the first encrypts, every one decrypts
	// (a rotation adds the new key, makes it first, then drops the old).
	// At least one is required: gossip is never unencrypted.
	Keys [][]byte
	// WAN selects memberlist's WAN timings (probes and suspicion sized for
	// links across data centres) instead of its LAN ones.
	WAN bool
	// Logger receives gossip events and memberlist's own log lines.
	Logger *slog.Logger
	// OnForeignKey, when set, is told of gossip traffic this node could not
	// decrypt with its keys (a node with another gossip key, or none), with
	// the sender's address as memberlist reports it.
	OnForeignKey func(from string)
}

// Validate checks the configuration.
func (c GossipConfig) Validate() error {
	if _, _, err := splitHostPort(c.BindAddr); err != nil {
		return fmt.Errorf("%w: gossip bind address %q: %v", ErrConfig, c.BindAddr, err)
	}
	adv := c.AdvertiseAddr
	if adv == "" {
		adv = c.BindAddr
	}
	host, _, err := splitHostPort(adv)
	if err != nil {
		return fmt.Errorf("%w: gossip advertise address %q: %v", ErrConfig, adv, err)
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("%w: gossip advertise address %q must be an IP address others can reach; set gossip.advertise_addr", ErrConfig, adv)
	}
	if len(c.Keys) == 0 {
		return fmt.Errorf("%w: no gossip key: gossip is always encrypted (gossip.key_file)", ErrConfig)
	}
	for i, k := range c.Keys {
		if len(k) != GossipKeyLen {
			return fmt.Errorf("%w: gossip key %d is %d bytes, want %d", ErrConfig, i+1, len(k), GossipKeyLen)
		}
	}
	return nil
}

func splitHostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, fmt.Errorf("invalid port %q", port)
	}
	return host, p, nil
}

// Gossip is this node's membership in the gossip pool (hashicorp/memberlist,
// encrypted with the cluster's gossip key).
type Gossip struct {
	ml     *memberlist.Memberlist
	keys   *memberlist.Keyring
	logger *slog.Logger

	mu   sync.Mutex
	meta []byte
	// members is this node's copy of the pool, kept by the event delegate:
	// memberlist's own Node values change under its lock while Members()
	// readers would read them without it.
	members map[string]Member
	// changed is signalled (without blocking) after every join, leave or
	// update of a member.
	changed chan struct{}
}

// StartGossip starts this node's gossip listener with meta as its
// metadata. It does not join anyone: call Join.
func StartGossip(cfg GossipConfig, meta Meta) (*Gossip, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	b, err := encodeMeta(meta)
	if err != nil {
		return nil, err
	}
	keyring, err := memberlist.NewKeyring(cfg.Keys, cfg.Keys[0])
	if err != nil {
		return nil, fmt.Errorf("%w: gossip keys: %v", ErrConfig, err)
	}
	g := &Gossip{keys: keyring, logger: logger, meta: b, members: map[string]Member{}, changed: make(chan struct{}, 1)}
	mc := memberlist.DefaultLANConfig()
	if cfg.WAN {
		mc = memberlist.DefaultWANConfig()
	}
	mc.Name = meta.ID
	host, port, _ := splitHostPort(cfg.BindAddr)
	mc.BindAddr, mc.BindPort = host, port
	adv := cfg.AdvertiseAddr
	if adv == "" {
		adv = cfg.BindAddr
	}
	ahost, aport, _ := splitHostPort(adv)
	mc.AdvertiseAddr, mc.AdvertisePort = ahost, aport
	mc.Keyring = keyring
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	mc.Delegate = (*metaDelegate)(g)
	mc.Events = (*eventDelegate)(g)
	mc.Logger = log.New(&slogWriter{logger: logger, onForeignKey: cfg.OnForeignKey}, "", 0)
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cluster: start gossip on %s: %w", cfg.BindAddr, err)
	}
	g.ml = ml
	return g, nil
}

// Join contacts the given gossip addresses (host:port) and joins their
// pool. It succeeds if at least one answered.
func (g *Gossip) Join(addrs []string) error {
	if len(addrs) == 0 {
		return nil
	}
	n, err := g.ml.Join(addrs)
	if n == 0 {
		if err == nil {
			err = errors.New("no member answered")
		}
		return fmt.Errorf("%w: join %s: %v (is the gossip key the cluster's?)", ErrJoin, strings.Join(addrs, ", "), err)
	}
	return nil
}

// SetMeta replaces this node's metadata and spreads it.
func (g *Gossip) SetMeta(meta Meta) error {
	b, err := encodeMeta(meta)
	if err != nil {
		return err
	}
	g.mu.Lock()
	same := string(b) == string(g.meta)
	g.meta = b
	g.mu.Unlock()
	if same {
		return nil
	}
	return g.ml.UpdateNode(time.Second)
}

// Members returns every member the pool knows, this node included, with
// the metadata it gossips, sorted by id. Members whose metadata does not
// decode are left out (and logged when they join).
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	out := make([]Member, 0, len(g.members))
	for _, m := range g.members {
		out = append(out, m)
	}
	g.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Changed is signalled after a member joins, leaves, fails or updates.
func (g *Gossip) Changed() <-chan struct{} { return g.changed }

// Keyring is the gossip keyring, for key rotation.
func (g *Gossip) Keyring() *memberlist.Keyring { return g.keys }

// Leave announces that this node leaves, then stops gossip.
func (g *Gossip) Leave(timeout time.Duration) error {
	err := g.ml.Leave(timeout)
	if serr := g.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// Close stops gossip without announcing a leave (the others will see the
// node fail).
func (g *Gossip) Close() error { return g.ml.Shutdown() }

func encodeMeta(m Meta) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > maxMetaLen {
		return nil, fmt.Errorf("%w: gossip metadata is %d bytes, at most %d", ErrConfig, len(b), maxMetaLen)
	}
	return b, nil
}

func memberOf(n *memberlist.Node) (Member, error) {
	var m Member
	if err := json.Unmarshal(n.Meta, &m.Meta); err != nil {
		return Member{}, err
	}
	if m.ID != n.Name {
		return Member{}, fmt.Errorf("metadata names %q, gossip name is %q", m.ID, n.Name)
	}
	m.Addr = n.Address()
	switch n.State {
	case memberlist.StateAlive:
		m.State = "alive"
	case memberlist.StateSuspect:
		m.State = "suspect"
	case memberlist.StateDead:
		m.State = "dead"
	case memberlist.StateLeft:
		m.State = "left"
	default:
		m.State = "unknown"
	}
	return m, nil
}

// metaDelegate serves this node's metadata; Coffer sends no user messages
// over gossip.
type metaDelegate Gossip

func (d *metaDelegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.meta) > limit {
		return nil
	}
	return append([]byte(nil), d.meta...)
}
func (d *metaDelegate) NotifyMsg([]byte)                           {}
func (d *metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *metaDelegate) LocalState(join bool) []byte                { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

// eventDelegate keeps the copy of the pool, logs member changes and
// signals Changed. memberlist calls it under its own lock, so the Node it
// passes is read here without a race.
type eventDelegate Gossip

func (d *eventDelegate) event(what string, n *memberlist.Node) {
	m, err := memberOf(n)
	if err != nil {
		d.logger.Warn("gossip member with unreadable metadata ignored", "name", n.Name, "addr", n.Address(), "err", err)
		return
	}
	if what == "left or failed" && m.State == "alive" {
		m.State = "dead"
	}
	d.mu.Lock()
	d.members[m.ID] = m
	d.mu.Unlock()
	d.logger.Info("gossip: member "+what, "member", n.Name, "addr", n.Address())
	select {
	case d.changed <- struct{}{}:
	default:
	}
}
func (d *eventDelegate) NotifyJoin(n *memberlist.Node)   { d.event("joined", n) }
func (d *eventDelegate) NotifyLeave(n *memberlist.Node)  { d.event("left or failed", n) }
func (d *eventDelegate) NotifyUpdate(n *memberlist.Node) { d.event("updated", n) }

// slogWriter turns memberlist's log lines ("[LEVEL] memberlist: ...") into
// slog records at the matching level, and reports the lines that say a
// sender's traffic did not decrypt.
type slogWriter struct {
	logger       *slog.Logger
	onForeignKey func(from string)
}

func (w *slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if w.onForeignKey != nil && (strings.Contains(line, "could decrypt") || strings.Contains(line, "Decrypt packet failed") ||
		strings.Contains(line, "remote state is not encrypted")) {
		from := "unknown"
		if i := strings.Index(line, "from="); i >= 0 {
			from = strings.Fields(line[i+len("from="):])[0]
		}
		w.onForeignKey(from)
	}
	level := slog.LevelInfo
	switch {
	case strings.HasPrefix(line, "[ERR]"):
		level = slog.LevelError
	case strings.HasPrefix(line, "[WARN]"):
		level = slog.LevelWarn
	case strings.HasPrefix(line, "[DEBUG]"):
		level = slog.LevelDebug
	}
	w.logger.Log(context.Background(), level, "gossip: "+line)
	return len(p), nil
}

// ReadKeyFile reads a gossip key file: one key per line, each 32 bytes in
// base64 (standard encoding). The first key encrypts; every key decrypts.
// To rotate: add the new key on a second line on every node (each node
// reads the file when it starts: restart them one at a time), then make it
// the first line everywhere, then remove the old one.
func ReadKeyFile(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: gossip key file: %v", ErrConfig, err)
	}
	var keys [][]byte
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		key, err := base64.StdEncoding.DecodeString(line)
		if err != nil || len(key) != GossipKeyLen {
			return nil, fmt.Errorf("%w: gossip key file %s, line %d: want %d bytes in base64", ErrConfig, path, i+1, GossipKeyLen)
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: gossip key file %s holds no key", ErrConfig, path)
	}
	return keys, nil
}

// WriteKeyFile writes key to path (mode 0600), refusing to overwrite.
func WriteKeyFile(path string, key []byte) error {
	if len(key) != GossipKeyLen {
		return fmt.Errorf("%w: gossip key must be %d bytes", ErrConfig, GossipKeyLen)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("cluster: gossip key file: %w", err)
	}
	_, err = io.WriteString(f, base64.StdEncoding.EncodeToString(key)+"\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
