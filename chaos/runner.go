package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/node"
)

// RunConfig is one scheduled chaos run.
type RunConfig struct {
	// Cofferd and Coffer are the binaries.
	Cofferd, Coffer string
	// Dir holds the cluster, the history and the report.
	Dir string
	// BasePort as in `cofferd dev --base-port`.
	BasePort int
	// Sites has one entry per node.
	Sites []string
	// Duration of the faulty part of the run (the workload runs a warm-up
	// before it).
	Duration time.Duration
	// Warmup is the fault-free start over which throughput is measured.
	Warmup time.Duration
	// Seed chooses the workload and the schedule.
	Seed uint64
	// Lab runs each node in its own network namespace (root only).
	Lab bool
	// WANDelay is the one-way delay between sites in the lab.
	WANDelay time.Duration
	// MinOpsPerSec is the least acknowledged throughput over the warm-up
	// for a run to count.
	MinOpsPerSec float64
	// CheckTimeout bounds the linearizability check.
	CheckTimeout time.Duration
	Workload     WorkloadConfig
	// Logf reports progress.
	Logf func(format string, args ...any)
}

// DefaultSites is 5 voters over three sites (2+2+1) and a sixth node that
// stays a non-voter.
var DefaultSites = []string{"a", "a", "b", "b", "c", "c"}

// Runner is one run.
type Runner struct {
	cfg  RunConfig
	c    *Cluster
	lab  *Lab
	hist *History

	mu        sync.Mutex
	down      map[int]bool
	auditKeys map[string][]byte
}

// ErrInvalidRun is returned when a run cannot be judged: the cluster never
// served, or did not serve enough before the first fault.
var ErrInvalidRun = errors.New("chaos: invalid run")

func (r *Runner) setUp(i int, up bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if up {
		delete(r.down, i)
	} else {
		r.down[i] = true
	}
}

func (r *Runner) isUp(i int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.down[i]
}

// rememberAuditKey keeps node i's audit signing public key, so that the
// entries it signed verify after its data directory is gone.
func (r *Runner) rememberAuditKey(i int) {
	path := filepath.Join(r.c.cfg.Dir, r.c.ID(i), "data", node.AuditKeyFile)
	if b, err := os.ReadFile(path); err == nil {
		r.mu.Lock()
		r.auditKeys[string(b)] = b
		r.mu.Unlock()
	}
}

// Run starts the cluster, runs the workload with the fault schedule, then
// stops faults and workload, lets the cluster settle and checks it.
func Run(ctx context.Context, cfg RunConfig) (rep *Report, err error) {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	r := &Runner{cfg: cfg, hist: NewHistory(), down: map[int]bool{}, auditKeys: map[string][]byte{}}
	rep = newReport(cfg)
	ccfg := Config{Cofferd: cfg.Cofferd, Dir: filepath.Join(cfg.Dir, "cluster"), Nodes: len(cfg.Sites), BasePort: cfg.BasePort, Sites: strings.Join(cfg.Sites, ",")}
	if cfg.Lab {
		lab, err := NewLab(cfg.Sites, cfg.WANDelay)
		if err != nil {
			return rep, err
		}
		defer lab.Close()
		r.lab = lab
		ccfg.Netns, ccfg.Hosts = lab.Netns(), lab.Hosts()
		rep.Network = fmt.Sprintf("each node in its own network namespace, routed by the root namespace; partitions are blackhole rules; inter-site packets delayed %v each way by a TUN device in user space (no tc netem)", cfg.WANDelay)
	} else {
		rep.Network = "loopback: no network namespaces (not root or no iproute2), process faults only"
	}
	if err := initCluster(ccfg); err != nil {
		return rep, err
	}
	if cfg.Lab {
		if err := PlaceInLab(ccfg.Dir, cfg.BasePort, ccfg.Hosts); err != nil {
			return rep, err
		}
	}
	c, err := startCluster(ccfg)
	if err != nil {
		return rep, err
	}
	r.c = c
	defer c.Close()
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := c.WaitVoters(sctx, 5); err != nil {
		return rep, fmt.Errorf("%w: %v", ErrInvalidRun, err)
	}
	cfg.Logf("cluster of %d nodes up with 5 voters (%s)", len(cfg.Sites), rep.Network)
	w, err := NewWorkload(sctx, c, r.hist, cfg.Workload, r.isUp)
	if err != nil {
		return rep, err
	}
	defer w.Close()

	wctx, stopWork := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.Run(wctx)
	}()
	// Warm-up without faults: the throughput a run must reach.
	select {
	case <-ctx.Done():
	case <-time.After(cfg.Warmup):
	}
	rep.FirstFault = r.hist.Now()
	kinds := []FaultKind{FaultKillNode, FaultKillLeader, FaultFreezeLeader, FaultKillSite, FaultWipeNode}
	if cfg.Lab {
		kinds = append(kinds, FaultPartitionNode, FaultPartitionLeader, FaultCutSite)
	}
	inj := &injector{r: r, rng: rand.New(rand.NewPCG(cfg.Seed, 0xfa017))}
	end := time.Now().Add(cfg.Duration)
	for time.Now().Before(end) && ctx.Err() == nil {
		kind := kinds[inj.pick(len(kinds))]
		f := inj.inject(ctx, kind)
		cfg.Logf("fault %s on %v: %.1fs, whole again after %.0f ms %s", f.Kind, f.Nodes, float64(f.End-f.Start)/1e9, f.RecoveryMS, f.Err)
		rep.Faults = append(rep.Faults, f)
		if f.Err != "" {
			// The cluster is not whole: more faults would only pile up.
			cfg.Logf("schedule stopped: the cluster did not recover from %s", f.Kind)
			break
		}
		gap := time.Second + time.Duration(inj.rng.Int64N(int64(2*time.Second)))
		select {
		case <-ctx.Done():
		case <-time.After(gap):
		}
	}
	stopWork()
	wg.Wait()
	cfg.Logf("workload stopped: %d operations", len(r.hist.Ops()))

	// Settle and check.
	if r.lab != nil {
		_ = r.lab.Heal()
	}
	for i := range cfg.Sites {
		if !r.isUp(i) {
			_ = r.restart(i)
		}
	}
	for i := range cfg.Sites {
		r.rememberAuditKey(i)
	}
	// Reading every key back from every node and exporting the audit log
	// take longer the longer the run: allow ten minutes plus the run's
	// length.
	cctx, cancelCheck := context.WithTimeout(ctx, 10*time.Minute+cfg.Duration)
	defer cancelCheck()
	r.check(cctx, rep)
	if err := r.writeArtifacts(rep); err != nil {
		return rep, err
	}
	return rep, nil
}

// status asks the cluster (any node) for its status.
func (r *Runner) status(ctx context.Context, digest bool) (*cofferv1.ClusterStatusResponse, error) {
	// Each member computes its digest (the fan-out waits up to 4 s for
	// one), so the attempt must outlast that.
	timeout := 3 * time.Second
	if digest {
		timeout = 10 * time.Second
	}
	cl, err := r.c.Client(timeout)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return cl.ClusterStatus(sctx, &cofferv1.ClusterStatusRequest{Digest: digest})
}

// appliedIndex returns the highest applied index among the nodes not
// named in except (the side that kept the quorum).
func (r *Runner) appliedIndex(ctx context.Context, except []string) (uint64, error) {
	st, err := r.status(ctx, false)
	if err != nil {
		return 0, err
	}
	skip := map[string]bool{}
	for _, id := range except {
		skip[id] = true
	}
	var max uint64
	for _, n := range st.GetNodes() {
		if !skip[n.GetId()] && n.GetAppliedIndex() > max {
			max = n.GetAppliedIndex()
		}
	}
	return max, nil
}

// waitWhole waits until a leader is known, every node answers and every
// node has applied at least target.
func (r *Runner) waitWhole(ctx context.Context, target uint64) error {
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var last string
	for {
		st, err := r.status(wctx, false)
		if err == nil && st.GetAuthoritative() {
			behind := ""
			seen := 0
			for _, n := range st.GetNodes() {
				seen++
				switch {
				case n.GetRole() == cofferv1.NodeRole_NODE_ROLE_UNREACHABLE:
					behind = n.GetId() + " unreachable"
				case n.GetSuffrage() == "none" || n.GetSuffrage() == "":
					behind = n.GetId() + " not a member yet"
				case n.GetAppliedIndex() < target:
					behind = fmt.Sprintf("%s at %d < %d", n.GetId(), n.GetAppliedIndex(), target)
				}
			}
			if behind == "" && seen >= len(r.cfg.Sites) {
				return nil
			}
			last = behind
		} else if err != nil {
			last = err.Error()
		} else {
			last = "no leader"
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("%w: cluster not whole again: %s", ErrTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
