package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// coalescer shares one round of an expensive check among every caller that
// arrived before the round started. A caller never reuses a round that was
// already under way when it arrived, so a round's answer is as fresh as the
// caller needs.
type coalescer struct {
	fn func(ctx context.Context) (uint64, error)

	mu      sync.Mutex
	pending *round
	running bool
}

type round struct {
	done  chan struct{}
	index uint64
	err   error
}

func newCoalescer(fn func(ctx context.Context) (uint64, error)) *coalescer {
	return &coalescer{fn: fn}
}

// Do joins the next round and returns its result.
func (c *coalescer) Do(ctx context.Context) (uint64, error) {
	c.mu.Lock()
	if c.pending == nil {
		c.pending = &round{done: make(chan struct{})}
	}
	r := c.pending
	if !c.running {
		c.running = true
		go c.loop()
	}
	c.mu.Unlock()
	select {
	case <-r.done:
		return r.index, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (c *coalescer) loop() {
	for {
		c.mu.Lock()
		r := c.pending
		c.pending = nil
		if r == nil {
			c.running = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), readRoundTimeout)
		r.index, r.err = c.fn(ctx)
		cancel()
		close(r.done)
	}
}

// readIndexRound finds an index that covers every write acknowledged before
// the round started: on the leader, its last log index once leadership is
// confirmed by a quorum; on a follower, the leader's answer to ReadIndex.
func (n *Node) readIndexRound(ctx context.Context) (uint64, error) {
	if n.IsLeader() {
		return n.leaderReadIndex()
	}
	cl, _, err := n.leaderClient()
	if errors.Is(err, errSelfLeader) {
		return n.leaderReadIndex()
	}
	if err != nil {
		return 0, err
	}
	resp, err := cl.ReadIndex(ctx, &cofferv1.ReadIndexRequest{})
	if err != nil {
		return 0, fmt.Errorf("%w: read index from leader: %v", ErrNoLeader, err)
	}
	return resp.GetIndex(), nil
}

// leaderReadIndex returns the leader's applied index once leadership is
// confirmed. Every write this leader acknowledged is applied here already
// (Apply returns after the FSM), and writes acknowledged by earlier leaders
// are applied once the leader's first barrier of its term has completed.
// The index is always one the FSM itself recorded (Raft's no-op and barrier
// entries never reach the FSM), so followers reach exactly it.
func (n *Node) leaderReadIndex() (uint64, error) {
	if err := n.ensureLeaderReady(); err != nil {
		return 0, err
	}
	idx := n.fsm.AppliedIndex()
	if err := n.raft.VerifyLeader().Error(); err != nil {
		return 0, n.raftError(err)
	}
	return idx, nil
}

// linearize waits until this node has applied every write acknowledged before
// the call.
func (n *Node) linearize(ctx context.Context, c cofferv1.Consistency) error {
	if c == cofferv1.Consistency_CONSISTENCY_STALE {
		return nil
	}
	start := time.Now()
	idx, err := n.reads.Do(ctx)
	if err != nil {
		return err
	}
	mid := time.Now()
	metricStage.WithLabelValues("read_index").Observe(mid.Sub(start).Seconds())
	if err := n.fsm.WaitApplied(ctx, idx); err != nil {
		return fmt.Errorf("waiting to apply index %d: %w", idx, err)
	}
	metricStage.WithLabelValues("wait_applied").Observe(time.Since(mid).Seconds())
	return nil
}

const readRoundTimeout = 5 * time.Second

// ensureLeaderReady makes sure this leader has applied every entry committed
// before its term began, once per term.
func (n *Node) ensureLeaderReady() error {
	term := n.raft.CurrentTerm()
	if n.readyTerm.Load() == term {
		return nil
	}
	if err := n.raft.Barrier(readRoundTimeout).Error(); err != nil {
		return n.raftError(err)
	}
	n.readyTerm.Store(term)
	return nil
}

// internalReadIndex confirms leadership and returns the index a follower must apply
// before it answers a linearizable read.
func (n *Node) internalReadIndex(ctx context.Context) (*cofferv1.ReadIndexResponse, error) {
	if _, err := n.requireMember(ctx, doorReadIndex, ""); err != nil {
		return nil, err
	}
	if !n.IsLeader() {
		return nil, n.notLeader(fmt.Errorf("read index asked of a follower"))
	}
	idx, err := n.reads.Do(ctx)
	if err != nil {
		return nil, err
	}
	return &cofferv1.ReadIndexResponse{Index: idx}, nil
}
