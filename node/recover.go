package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/internal/hclogslog"
)

// Recovery after the loss of a majority of voters (cofferd recover).
//
// With a majority of voters gone for good (the two sites of a primary/DR
// pair, three of five voters), no leader can be elected and nothing can be
// written. Recover rewrites a stopped survivor's Raft configuration to the
// voters named (hashicorp/raft's RecoverCluster: it replays the node's log
// into a snapshot that carries the new configuration). Run it on every
// survivor with the same voters, then start them: they elect a leader among
// themselves. Writes that only the lost nodes had acknowledged are lost.
//
// Each survivor leaves a marker (recovered.json in its data directory); when
// it starts and the recovered cluster has a leader, it records the recovery
// in the audit log (operation cluster.recover) and deletes the marker.

// recoveryMarker is the file a recovered node leaves for its next start.
const recoveryMarker = "recovered.json"

// ErrDataLossNotAccepted refuses a recovery the operator has not accepted
// the consequences of.
var ErrDataLossNotAccepted = errors.New("recovery needs --accept-data-loss")

// Recovery is what a recovery did, as its marker records it.
type Recovery struct {
	Time     time.Time `json:"time"`
	Node     string    `json:"node"`
	Voters   []string  `json:"voters"`
	Previous []string  `json:"previous"`
	Index    uint64    `json:"last_index"`
}

// Recover rewrites the Raft configuration of the stopped node cfg
// describes to voters (ids of its current configuration, this node
// included). acceptLoss must be true.
func Recover(cfg Config, voters []string, acceptLoss bool) (*Recovery, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(voters) == 0 {
		return nil, fmt.Errorf("%w: name the surviving voters", ErrInvalidArgument)
	}
	if !slices.Contains(voters, cfg.ID) {
		return nil, fmt.Errorf("%w: the voters must include this node (%s)", ErrInvalidArgument, cfg.ID)
	}
	raftDir := filepath.Join(cfg.DataDir, "raft")
	store, err := openRaftLog(filepath.Join(raftDir, "raft.db"))
	if err != nil {
		return nil, err
	}
	defer store.Close()
	fcfg := fsm.DefaultConfig(filepath.Join(cfg.DataDir, "state"))
	fcfg.CacheBytes = 8 << 20 // one pass over the state: a small cache will do
	f, err := openState(fcfg)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	hlog := hclogslog.New(slog.Default().With("node", cfg.ID), "raft", hclog.Warn)
	snaps, err := fsm.NewSnapshotStore(raftDir, 2, hlog)
	if err != nil {
		return nil, fmt.Errorf("node: snapshot store: %w", err)
	}
	f.UseSnapshotStore(snaps)
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return nil, fmt.Errorf("node: inspect raft state: %w", err)
	}
	if !has {
		return nil, fmt.Errorf("%w: %s holds no Raft state: nothing to recover", ErrInvalidArgument, raftDir)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hlog
	_, trans := raft.NewInmemTransport(raft.ServerAddress(cfg.RaftAddr))
	current, err := raft.GetConfiguration(rc, f, store, store, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("node: read the Raft configuration: %w", err)
	}
	addrs := map[string]raft.ServerAddress{}
	var previous []string
	for _, s := range current.Servers {
		addrs[string(s.ID)] = s.Address
		previous = append(previous, fmt.Sprintf("%s(%s)", s.ID, suffrageName(s)))
	}
	next := raft.Configuration{}
	for _, id := range voters {
		addr, ok := addrs[id]
		if !ok {
			return nil, fmt.Errorf("%w: %s is not in this node's configuration (%s)", ErrInvalidArgument, id, strings.Join(previous, ", "))
		}
		next.Servers = append(next.Servers, raft.Server{ID: raft.ServerID(id), Address: addr, Suffrage: raft.Voter})
	}
	if !acceptLoss {
		return nil, fmt.Errorf("%w: recovery makes %s the only voters. Writes that a majority of the old voters (%s) acknowledged without any of these may be lost, and must not be recovered on the lost nodes later: never start them again with their old data",
			ErrDataLossNotAccepted, strings.Join(voters, ", "), strings.Join(previous, ", "))
	}
	rc2 := raft.DefaultConfig()
	rc2.LocalID = raft.ServerID(cfg.ID)
	rc2.Logger = hlog
	if err := raft.RecoverCluster(rc2, f, store, store, snaps, trans, next); err != nil {
		return nil, fmt.Errorf("node: recover: %w", err)
	}
	rec := &Recovery{Time: time.Now().UTC(), Node: cfg.ID, Voters: voters, Previous: previous, Index: f.AppliedIndex()}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.DataDir, recoveryMarker), append(b, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("node: write the recovery marker: %w", err)
	}
	return rec, nil
}

// auditRecovery records, once the recovered cluster has a leader, the
// recovery whose marker this node found at start, then deletes the marker.
func (n *Node) auditRecovery() {
	defer n.wg.Done()
	path := filepath.Join(n.cfg.DataDir, recoveryMarker)
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var rec Recovery
	if err := json.Unmarshal(b, &rec); err != nil {
		n.logger.Error("recovery marker unreadable; the recovery is not audited", "file", path, "err", err)
		return
	}
	e := &cofferv1.AuditEntry{TimeUnixNano: rec.Time.UnixNano(), Node: n.cfg.ID, Caller: "node:" + n.cfg.ID,
		Operation: "cluster.recover", Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, Client: "node:" + n.cfg.ID,
		Reason: clip(fmt.Sprintf("majority loss recovered with cofferd recover at %s: voters reset to %s (were %s) at index %d; writes only the lost voters acknowledged may be lost",
			rec.Time.Format(time.RFC3339), strings.Join(rec.Voters, ", "), strings.Join(rec.Previous, ", "), rec.Index), audit.MaxFieldLen)}
	for {
		if _, err := n.fsm.Cluster(); err == nil {
			if _, id := n.raft.LeaderWithID(); id != "" {
				ctx, cancel := n.stopContext(context.Background())
				err := n.svc.commitAudit(ctx, e)
				cancel()
				if err == nil {
					_ = os.Remove(path)
					n.logger.Warn("recovery recorded in the audit log", "voters", rec.Voters)
					return
				}
			}
		}
		select {
		case <-n.stopCh:
			return
		case <-time.After(time.Second):
		}
	}
}
