package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"

	"github.com/coffer-kms/coffer/internal/duration"
)

// Settings are the membership settings of a cluster.
type Settings struct {
	// Voters is the number of voters to aim for: 3 or 5. Extra nodes stay
	// non-voting read replicas.
	Voters int `json:"voters"`
	// MinQuorum is the fewest voters the cluster is ever reduced to by
	// autopilot (removing or demoting a dead voter).
	MinQuorum int `json:"min_quorum"`
	// StabilizationTime is how long a server must be healthy before it is
	// given a vote, and unhealthy before its vote is given to another.
	StabilizationTime duration.Duration `json:"stabilization_time"`
	// LastContactThreshold is how long a server may go without contact from
	// the leader and still count as healthy.
	LastContactThreshold duration.Duration `json:"last_contact_threshold"`
	// MaxTrailingLogs is how far behind the leader a server may be and
	// still count as healthy.
	MaxTrailingLogs uint64 `json:"max_trailing_logs"`
	// DeadServerAfter is how long a server must have been dead (or gone)
	// in gossip before autopilot removes it from the Raft configuration.
	// Until then it only counts as unhealthy: a node that is restarted, or
	// cut off for a while, comes back as the voter it was.
	DeadServerAfter duration.Duration `json:"dead_server_after"`
}

// DefaultSettings: three voters, never fewer than three, ten seconds of
// stability, a dead server removed after five minutes.
func DefaultSettings() Settings {
	return Settings{Voters: 3, MinQuorum: 3, StabilizationTime: duration.Duration(10 * time.Second),
		LastContactThreshold: duration.Duration(2 * time.Second), MaxTrailingLogs: 1024,
		DeadServerAfter: duration.Duration(5 * time.Minute)}
}

// Validate checks the settings.
func (s Settings) Validate() error {
	if s.Voters != 3 && s.Voters != 5 {
		return fmt.Errorf("%w: membership.voters must be 3 or 5, got %d", ErrConfig, s.Voters)
	}
	if s.MinQuorum < 1 || s.MinQuorum > s.Voters {
		return fmt.Errorf("%w: membership.min_quorum must be 1..%d, got %d", ErrConfig, s.Voters, s.MinQuorum)
	}
	if s.StabilizationTime <= 0 || s.LastContactThreshold <= 0 || s.MaxTrailingLogs == 0 || s.DeadServerAfter <= 0 {
		return fmt.Errorf("%w: membership.stabilization_time, last_contact_threshold, max_trailing_logs and dead_server_after must be positive", ErrConfig)
	}
	return nil
}

// Deps is what the manager needs from the node it runs in.
type Deps struct {
	// Raft is the node's Raft instance.
	Raft *raft.Raft
	// Gossip is the node's gossip membership.
	Gossip *Gossip
	// Admit checks a gossip member that is not in the Raft configuration
	// (its certificate over mTLS, its id, its addresses), pins it and
	// records that in the audit log. An error refuses it (the node logs
	// and audits the refusal); the manager then leaves it out until its
	// metadata changes or admitRetry passes. An error wrapping
	// ErrRetryLater (the cluster is not initialised yet) is no refusal:
	// the next round tries again.
	Admit func(ctx context.Context, m Member) error
	// Stats asks a member for its Raft progress (LocalStatus).
	Stats func(ctx context.Context, id string) (*autopilot.ServerStats, error)
	// Sites returns the site of every admitted member, by id (the pins).
	Sites func() map[string]string
	// Logger receives the manager's logs.
	Logger *slog.Logger
	// RaftLogger receives autopilot's logs.
	RaftLogger hclog.Logger
}

// admitRetry is how long a refused gossip member is left alone.
const admitRetry = 30 * time.Second

// Manager runs membership on the leader: it admits the nodes that join over
// gossip (through Deps.Admit, then as non-voters) and runs autopilot with
// the SitePromoter, which promotes stable servers and keeps voters spread
// across sites. On followers it only keeps this node's gossip metadata up to
// date.
type Manager struct {
	settings Settings
	deps     Deps
	ap       *autopilot.Autopilot

	mu      sync.Mutex
	refused map[string]refusal // gossip members Admit refused, by id
	running bool
	// deadSince is when gossip first reported each member dead or gone
	// (KnownServers). It has its own lock: autopilot calls KnownServers
	// while startAutopilot holds mu.
	deadMu    sync.Mutex
	deadSince map[string]time.Time
}

type refusal struct {
	meta Meta
	at   time.Time
}

// NewManager creates a manager; Run starts it.
func NewManager(s Settings, d Deps) (*Manager, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.RaftLogger == nil {
		d.RaftLogger = hclog.NewNullLogger()
	}
	m := &Manager{settings: s, deps: d, refused: map[string]refusal{}}
	m.ap = autopilot.New(d.Raft, (*delegate)(m),
		autopilot.WithPromoter(&SitePromoter{Voters: s.Voters, MinQuorum: s.MinQuorum}),
		autopilot.WithLogger(d.RaftLogger.Named("autopilot")),
		autopilot.WithUpdateInterval(time.Second),
		autopilot.WithReconcileInterval(2*time.Second))
	return m, nil
}

// State is autopilot's view of the servers (nil when this node does not
// lead or autopilot has not gathered a state yet).
func (m *Manager) State() *autopilot.State {
	m.mu.Lock()
	running := m.running
	m.mu.Unlock()
	if !running {
		return nil
	}
	return m.ap.GetState()
}

// Run manages membership until ctx ends: autopilot and admission while this
// node leads.
func (m *Manager) Run(ctx context.Context) {
	leader := make(chan raft.Observation, 4)
	obs := raft.NewObserver(leader, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	m.deps.Raft.RegisterObserver(obs)
	defer m.deps.Raft.DeregisterObserver(obs)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	defer m.stopAutopilot()
	for {
		if m.deps.Raft.State() == raft.Leader {
			m.startAutopilot(ctx)
			m.admitNew(ctx)
		} else {
			m.stopAutopilot()
		}
		select {
		case <-ctx.Done():
			return
		case <-leader:
		case <-m.deps.Gossip.Changed():
		case <-tick.C:
		}
	}
}

func (m *Manager) startAutopilot(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.running {
		m.ap.Start(ctx)
		m.running = true
	}
}

func (m *Manager) stopAutopilot() {
	m.mu.Lock()
	running := m.running
	m.running = false
	m.mu.Unlock()
	if running {
		<-m.ap.Stop()
	}
}

// admitNew admits every alive gossip member that is not in the Raft
// configuration.
func (m *Manager) admitNew(ctx context.Context) {
	f := m.deps.Raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	inConfig := map[string]raft.ServerAddress{}
	for _, s := range f.Configuration().Servers {
		inConfig[string(s.ID)] = s.Address
	}
	for _, mem := range m.deps.Gossip.Members() {
		addr, member := inConfig[mem.ID]
		if mem.State != "alive" || (member && string(addr) == mem.RaftAddr) {
			continue
		}
		// A member's id gossiped with other addresses goes to Admit too,
		// which refuses it (and records that).
		m.mu.Lock()
		r, refused := m.refused[mem.ID]
		m.mu.Unlock()
		if refused && r.meta == mem.Meta && time.Since(r.at) < admitRetry {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := m.deps.Admit(actx, mem)
		if err == nil && member {
			err = fmt.Errorf("%w: %s is a member at %s", ErrConfig, mem.ID, addr)
		}
		if err == nil {
			err = m.ap.AddServer(&autopilot.Server{ID: raft.ServerID(mem.ID), Name: mem.ID, Address: raft.ServerAddress(mem.RaftAddr),
				NodeStatus: autopilot.NodeAlive, Version: mem.Version, Meta: map[string]string{"site": mem.Site}})
		}
		cancel()
		if errors.Is(err, ErrRetryLater) {
			continue // not refused: the next round tries again
		}
		m.mu.Lock()
		if err != nil {
			m.refused[mem.ID] = refusal{meta: mem.Meta, at: time.Now()}
		} else {
			delete(m.refused, mem.ID)
		}
		m.mu.Unlock()
		if err != nil {
			m.deps.Logger.Warn("gossip member not admitted", "member", mem.ID, "addr", mem.Addr, "err", err)
		} else {
			m.deps.Logger.Info("member joined as a non-voter", "member", mem.ID, "site", mem.Site, "raft", mem.RaftAddr)
		}
	}
}

// delegate is the manager's autopilot.ApplicationIntegration.
type delegate Manager

func (d *delegate) AutopilotConfig() *autopilot.Config {
	s := d.settings
	return &autopilot.Config{CleanupDeadServers: true, LastContactThreshold: s.LastContactThreshold.Std(),
		MaxTrailingLogs: s.MaxTrailingLogs, MinQuorum: uint(s.MinQuorum), ServerStabilizationTime: s.StabilizationTime.Std()}
}

func (d *delegate) NotifyState(*autopilot.State) {}

// KnownServers are the servers of the Raft configuration, with their site
// from their pin and their status from gossip (a member gossip does not know
// counts as alive while gossip has not seen it, since nodes bootstrapped
// from a peers list may run without gossip).
func (d *delegate) KnownServers() map[raft.ServerID]*autopilot.Server {
	f := d.deps.Raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	status := d.gossipStatus(d.deps.Gossip.Members(), time.Now())
	sites := d.deps.Sites()
	_, leader := d.deps.Raft.LeaderWithID()
	out := map[raft.ServerID]*autopilot.Server{}
	for _, s := range f.Configuration().Servers {
		st, ok := status[string(s.ID)]
		if !ok {
			st = autopilot.NodeAlive
		}
		// Every server is a potential voter (SitePromoter); autopilot counts
		// potential voters from this type when it weighs a removal.
		out[s.ID] = &autopilot.Server{ID: s.ID, Name: string(s.ID), Address: s.Address, NodeStatus: st, NodeType: autopilot.NodeVoter,
			Meta: map[string]string{"site": sites[string(s.ID)]}, RaftVersion: raft.ProtocolVersionMax, IsLeader: s.ID == leader}
	}
	return out
}

// gossipStatus is each gossip member's status for autopilot. A member dead
// or gone in gossip counts as failed (autopilot may remove it) only once it
// has been so for Settings.DeadServerAfter; until then it counts as alive,
// and its Raft stats (no contact from the leader) make it unhealthy.
func (d *delegate) gossipStatus(members []Member, now time.Time) map[string]autopilot.NodeStatus {
	m := (*Manager)(d)
	m.deadMu.Lock()
	defer m.deadMu.Unlock()
	if m.deadSince == nil {
		m.deadSince = map[string]time.Time{}
	}
	status := map[string]autopilot.NodeStatus{}
	for _, mem := range members {
		failed := autopilot.NodeFailed
		switch mem.State {
		case "alive", "suspect":
			status[mem.ID] = autopilot.NodeAlive
			delete(m.deadSince, mem.ID)
			continue
		case "left":
			failed = autopilot.NodeLeft
		case "dead":
		default:
			continue
		}
		since, ok := m.deadSince[mem.ID]
		if !ok {
			since = now
			m.deadSince[mem.ID] = now
		}
		status[mem.ID] = autopilot.NodeAlive
		if now.Sub(since) >= d.settings.DeadServerAfter.Std() {
			status[mem.ID] = failed
		}
	}
	return status
}

// FetchServerStats asks every server for its Raft progress, in parallel.
func (d *delegate) FetchServerStats(ctx context.Context, servers map[raft.ServerID]*autopilot.Server) map[raft.ServerID]*autopilot.ServerStats {
	out := map[raft.ServerID]*autopilot.ServerStats{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := d.deps.Stats(ctx, string(id))
			if err != nil {
				return
			}
			mu.Lock()
			out[id] = st
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// RemoveFailedServer removes a server autopilot found failed (dead in
// gossip, or gone from it) once the minimum quorum allows.
func (d *delegate) RemoveFailedServer(s *autopilot.Server) {
	go func() {
		if err := (*Manager)(d).ap.RemoveServer(s.ID); err != nil {
			d.deps.Logger.Warn("removing a failed server failed", "member", s.ID, "err", err)
			return
		}
		d.deps.Logger.Warn("failed server removed from the Raft configuration", "member", s.ID)
	}()
}
