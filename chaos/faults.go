package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// FaultKind is a fault of the schedule.
type FaultKind string

// The faults. The network ones need the lab (root); the others are process
// faults and run anywhere.
const (
	FaultKillNode        FaultKind = "kill-node"        // SIGKILL a random node, restart it
	FaultKillLeader      FaultKind = "kill-leader"      // SIGKILL the leader, restart it
	FaultFreezeLeader    FaultKind = "freeze-leader"    // SIGSTOP the leader, then SIGCONT
	FaultPartitionNode   FaultKind = "partition-node"   // cut a random node off from the others
	FaultPartitionLeader FaultKind = "partition-leader" // the leader and one other node against the rest
	FaultCutSite         FaultKind = "cut-site"         // a whole site against the others
	FaultKillSite        FaultKind = "kill-site"        // SIGKILL every node of a site, restart them
	FaultWipeNode        FaultKind = "wipe-node"        // remove a node, wipe its data, bring it back empty
)

// Fault is one injected fault, as the report shows it.
type Fault struct {
	Kind  FaultKind `json:"kind"`
	Nodes []string  `json:"nodes"`
	// Start and End are nanoseconds since the run started: from the
	// injection to the moment the fault was undone.
	Start int64  `json:"start"`
	End   int64  `json:"end"`
	Note  string `json:"note,omitempty"`
	// Recovered is when the cluster was whole again after End (every node
	// reachable, caught up with the leader's applied index at End);
	// RecoveryMS is Recovered-End in milliseconds.
	Recovered  int64   `json:"recovered"`
	RecoveryMS float64 `json:"recovery_ms"`
	Err        string  `json:"error,omitempty"`
}

// injector applies faults to a cluster.
type injector struct {
	r   *Runner
	rng *rand.Rand
}

func (in *injector) pick(n int) int { return in.rng.IntN(n) }

// hold is how long a fault lasts: 2 to 6 s.
func (in *injector) hold() time.Duration {
	return 2*time.Second + time.Duration(in.rng.Int64N(int64(4*time.Second)))
}

// inject runs one fault from start to end and waits for the cluster to be
// whole again.
func (in *injector) inject(ctx context.Context, kind FaultKind) Fault {
	r := in.r
	f := Fault{Kind: kind}
	var undo func() error
	leader, err := r.c.Leader(ctx)
	if err != nil {
		f.Err = err.Error()
		return f
	}
	hold := in.hold()
	nodes := r.cfg.Sites
	switch kind {
	case FaultKillNode, FaultKillLeader:
		i := leader
		if kind == FaultKillNode {
			i = in.pick(len(nodes))
		}
		f.Nodes = []string{r.c.ID(i)}
		f.Start = r.hist.Now()
		err = r.kill(i)
		undo = func() error { return r.restart(i) }
	case FaultFreezeLeader:
		f.Nodes = []string{r.c.ID(leader)}
		f.Start = r.hist.Now()
		err = r.c.Freeze(leader)
		undo = func() error { return r.c.Thaw(leader) }
	case FaultPartitionNode, FaultPartitionLeader, FaultCutSite:
		var side []int
		switch kind {
		case FaultPartitionNode:
			side = []int{in.pick(len(nodes))}
		case FaultPartitionLeader:
			others := r.c.Others(leader)
			side = []int{leader, others[in.pick(len(others))]}
		case FaultCutSite:
			side = r.site(nodes[in.pick(len(nodes))])
		}
		for _, i := range side {
			f.Nodes = append(f.Nodes, r.c.ID(i))
		}
		f.Start = r.hist.Now()
		err = r.lab.Partition(side, complement(side, len(nodes)))
		undo = r.lab.Heal
	case FaultKillSite:
		side := r.site(nodes[in.pick(len(nodes))])
		f.Start = r.hist.Now()
		for _, i := range side {
			f.Nodes = append(f.Nodes, r.c.ID(i))
			if e := r.kill(i); e != nil && err == nil {
				err = e
			}
		}
		undo = func() error {
			for _, i := range side {
				if err := r.restart(i); err != nil {
					return err
				}
			}
			return nil
		}
	case FaultWipeNode:
		others := r.c.Others(leader)
		i := others[in.pick(len(others))]
		f.Nodes = []string{r.c.ID(i)}
		f.Start = r.hist.Now()
		err = r.wipe(ctx, i)
		hold = 0
		undo = func() error { return r.restart(i) }
	}
	if err != nil {
		f.Err = err.Error()
	}
	select {
	case <-ctx.Done():
	case <-time.After(hold):
	}
	target, _ := r.appliedIndex(ctx, f.Nodes)
	if err := undo(); err != nil && f.Err == "" {
		f.Err = err.Error()
	}
	f.End = r.hist.Now()
	if err := r.waitWhole(ctx, target); err != nil {
		if f.Err == "" {
			f.Err = err.Error()
		}
		return f
	}
	f.Recovered = r.hist.Now()
	f.RecoveryMS = float64(f.Recovered-f.End) / 1e6
	if kind == FaultWipeNode {
		f.Note = "removed from the cluster, its certificate pinned again, data directory deleted, restarted empty: rejoined over gossip"
	}
	return f
}

func complement(side []int, n int) []int {
	in := map[int]bool{}
	for _, i := range side {
		in[i] = true
	}
	var out []int
	for i := 0; i < n; i++ {
		if !in[i] {
			out = append(out, i)
		}
	}
	return out
}

// site returns the nodes of site s.
func (r *Runner) site(s string) []int {
	var out []int
	for i, x := range r.cfg.Sites {
		if x == s {
			out = append(out, i)
		}
	}
	return out
}

// kill SIGKILLs node i and keeps clients away from it.
func (r *Runner) kill(i int) error {
	r.setUp(i, false)
	return r.c.Kill(i)
}

func (r *Runner) restart(i int) error {
	if err := r.c.Start(i); err != nil {
		return err
	}
	r.setUp(i, true)
	return nil
}

// wipe removes node i from the cluster (the operator's procedure for a
// node that lost its disk), deletes its data directory and makes its
// config join instead of bootstrapping; restart brings it back empty.
func (r *Runner) wipe(ctx context.Context, i int) error {
	if err := r.kill(i); err != nil {
		return err
	}
	r.rememberAuditKey(i)
	cl, err := r.c.Client(3 * time.Second)
	if err != nil {
		return err
	}
	defer cl.Close()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := cl.RemoveNode(rctx, &cofferv1.RemoveNodeRequest{Node: r.c.ID(i), Force: true}); err != nil {
		return fmt.Errorf("chaos: remove %s before wiping it: %w", r.c.ID(i), err)
	}
	// A removed node joins again only with a certificate an operator
	// pinned for it.
	nd := filepath.Join(r.c.cfg.Dir, r.c.ID(i))
	cert, err := os.ReadFile(filepath.Join(nd, "tls", "node.pem"))
	if err != nil {
		return err
	}
	if _, err := cl.PinNode(rctx, &cofferv1.PinNodeRequest{Node: r.c.ID(i), CertificatePem: cert}); err != nil {
		return fmt.Errorf("chaos: pin %s's certificate so that it may join again: %w", r.c.ID(i), err)
	}
	if err := os.RemoveAll(filepath.Join(nd, "data")); err != nil {
		return err
	}
	path := filepath.Join(nd, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		return err
	}
	cfg["bootstrap"], cfg["peers"] = false, nil
	if data, err = json.MarshalIndent(cfg, "", "  "); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}
