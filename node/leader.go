package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/custody"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/gkid"
)

// DefaultPolicy is the custody policy that exists out of the box.
const DefaultPolicy = "default"

// leaderLoop initialises the cluster the first time a leader is elected: the
// cluster id and the default custody policy with its first KEK.
func (n *Node) leaderLoop() {
	defer n.wg.Done()
	obs := make(chan raft.Observation, 16)
	observer := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(observer)
	defer n.raft.DeregisterObserver(observer)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if n.IsLeader() {
			if err := n.ensureInitialised(); err != nil && !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) {
				n.logger.Warn("cluster initialisation failed; will retry", "err", err)
			}
			if err := n.admitMembers(); err != nil && !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) {
				n.logger.Warn("admitting members failed; will retry", "err", err)
			}
			n.keepLeadershipAway()
			if err := n.maybeCheckpoint(); err != nil {
				n.logger.Warn("audit checkpoint failed; will retry", "err", err)
			}
			n.maybeMaintainKeys()
		}
		select {
		case <-n.stopCh:
			return
		case <-obs:
		case <-tick.C:
		}
	}
}

// defaultKeyRotationCheck is Config.KeyRotationCheck's default.
const defaultKeyRotationCheck = 30 * time.Second

// maybeMaintainKeys runs the key scan (service.maintainKeys: automatic
// rotations, escrow purges) once
// KeyRotationCheck has passed since the last one.
func (n *Node) maybeMaintainKeys() {
	every := n.cfg.KeyRotationCheck.Std()
	if every <= 0 {
		every = defaultKeyRotationCheck
	}
	if time.Since(n.lastRotationScan) < every {
		return
	}
	n.lastRotationScan = time.Now()
	if _, err := n.fsm.Cluster(); err != nil {
		return // not initialised yet
	}
	ctx, cancel := n.stopContext(context.Background())
	defer cancel()
	if k, err := n.svc.maintainKeys(ctx); err != nil && ctx.Err() == nil {
		n.logger.Warn("automatic key rotation scan failed; will retry", "rotated", k, "err", err)
	} else if k > 0 {
		n.logger.Info("keys rotated automatically", "count", k)
	}
}

func (n *Node) ensureInitialised() error {
	if _, err := n.fsm.Cluster(); err == nil {
		return nil
	}
	// Apply everything earlier leaders committed before deciding.
	if err := n.futureError(n.raft.Barrier(5 * time.Second)); err != nil {
		return err
	}
	if _, err := n.fsm.Cluster(); err == nil {
		return nil
	}
	idRand, err := n.barrier.Random(gkid.ClusterIDRandomBytes)
	if err != nil {
		return err
	}
	cid, err := gkid.NewClusterID(idRand)
	if err != nil {
		return err
	}
	now := time.Now().UnixNano()
	pol, err := newPolicy(n.barrier, DefaultPolicy, now)
	if err != nil {
		return err
	}
	info := &cofferv1.ClusterInfo{ClusterId: cid, CreatedUnixNano: now}
	if err := n.barrier.InitCluster(info); err != nil {
		return err
	}
	initCmd := &cofferv1.InitClusterCommand{Info: info, DefaultPolicy: pol}
	if err := n.barrier.Tag("p/"+pol.GetName(), pol, info); err != nil {
		return err
	}
	for _, name := range n.cfg.BootstrapAdmins {
		cl, rule := authz.BootstrapAdmin(name)
		cl.CreatedUnixNano, rule.CreatedUnixNano = now, now
		if err := n.barrier.Tag("c/"+cl.GetName(), cl, info); err != nil {
			return err
		}
		if err := n.barrier.Tag("a/"+rule.GetId(), rule, info); err != nil {
			return err
		}
		initCmd.BootstrapClients = append(initCmd.BootstrapClients, cl)
		initCmd.BootstrapRules = append(initCmd.BootstrapRules, rule)
	}
	data, err := fsm.Encode(cofferv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, initCmd)
	if err != nil {
		return err
	}
	res, _, err := n.proposeWait(context.Background(), data, n.futureError)
	if err != nil {
		return err
	}
	if res.Err != nil && !errors.Is(res.Err, fsm.ErrAlreadyInitialized) {
		return res.Err
	}
	n.logger.Info("cluster initialised", "cluster_id", res.Cluster.GetClusterId())
	return nil
}

// newPolicy builds a policy record with a fresh KEK (version 1) generated in
// the keystore and wrapped under the master key.
func newPolicy(b *custody.Barrier, name string, now int64) (*cofferv1.PolicyRecord, error) {
	wrapped, err := b.NewPolicyKEK(name, 1)
	if err != nil {
		return nil, err
	}
	return &cofferv1.PolicyRecord{
		Name:       name,
		KekVersion: 1,
		Keks:       []*cofferv1.WrappedKEK{{Version: 1, Wrapped: wrapped, CreatedUnixNano: now}},
		AllowedAlgorithms: []cofferv1.Algorithm{
			cofferv1.Algorithm_ALGORITHM_AES_128, cofferv1.Algorithm_ALGORITHM_AES_192,
			cofferv1.Algorithm_ALGORITHM_AES_256, cofferv1.Algorithm_ALGORITHM_HMAC_SHA256,
		},
		CachePolicy:     &cofferv1.KeyCachePolicy{Cacheable: false},
		CreatedUnixNano: now,
		Revision:        1,
	}, nil
}

// propose replicates a command and returns its result once applied here.
func (n *Node) propose(ctx context.Context, data []byte) (fsm.Result, error) {
	res, _, err := n.proposeIndexed(ctx, data)
	return res, err
}

// proposeIndexed is propose that also returns the command's log index.
func (n *Node) proposeIndexed(ctx context.Context, data []byte) (fsm.Result, uint64, error) {
	return n.proposeWait(ctx, data, raft.Future.Error)
}

// proposeWait is proposeIndexed with its wait for the outcome: the leader
// loop, which Close waits for, passes futureError; requests wait on the
// future itself, without a goroutine per proposal.
func (n *Node) proposeWait(ctx context.Context, data []byte, wait func(raft.Future) error) (fsm.Result, uint64, error) {
	timeout := n.cfg.Limits.RequestTimeout.Std()
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return fsm.Result{}, 0, context.DeadlineExceeded
	}
	f := n.raft.Apply(data, timeout)
	if err := wait(f); err != nil {
		return fsm.Result{}, 0, n.raftError(err)
	}
	res, ok := f.Response().(fsm.Result)
	if !ok {
		return fsm.Result{}, 0, fmt.Errorf("node: unexpected apply response %T", f.Response())
	}
	return res, f.Index(), nil
}

// stopContext returns a context that also ends when the node stops.
func (n *Node) stopContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return untilStopped(ctx, n.stopCh)
}

// untilStopped returns ctx, also cancelled when stop is closed.
func untilStopped(ctx context.Context, stop <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// futureError waits for f's outcome, for the leader loop. It stops waiting
// when the node closes: a command or barrier still in Raft's apply buffer
// (BatchApplyCh) when Raft shuts down is never answered, and its future
// would block the leader loop, and Close waiting for it, forever. Request
// handlers wait on their futures directly: Close does not wait for them.
func (n *Node) futureError(f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-n.stopCh:
		return fmt.Errorf("%w: stopped while a command was being committed", ErrShuttingDown)
	}
}

// raftError turns Raft's errors into the request path's sentinels, with a
// leader hint where one is known.
func (n *Node) raftError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return n.notLeader(err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %v", ErrShuttingDown, err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %v", ErrOverloaded, err)
	}
	return err
}

func (n *Node) notLeader(cause error) error {
	_, id := n.raft.LeaderWithID()
	if id == "" {
		return &leaderHint{err: fmt.Errorf("%w: %v", ErrNoLeader, cause)}
	}
	return &leaderHint{err: fmt.Errorf("%w: %v", ErrNotLeader, cause), leaderAddr: n.peerAPIAddr(string(id))}
}

// raftLog is the node's logger with its Raft position (current term and
// applied index), for request-path logs that need placing in the log.
func (n *Node) raftLog() *slog.Logger {
	return n.logger.With("term", n.raft.CurrentTerm(), "applied_index", n.fsm.AppliedIndex())
}

// hasLeader reports whether this node knows a leader.
func (n *Node) hasLeader() bool {
	_, id := n.raft.LeaderWithID()
	return id != ""
}
