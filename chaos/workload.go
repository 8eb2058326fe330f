package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/transport"
)

// WorkloadConfig shapes the recording clients.
type WorkloadConfig struct {
	// Workers is the number of concurrent recording clients (at least 16).
	Workers int
	// Parts is the number of partitions: a resource, its reader client and
	// the reader's grant each.
	Parts int
	// MaxKeysPerPart stops generating in a partition that has this many
	// keys (so that a list answers in one page).
	MaxKeysPerPart int
	// Timeout bounds one operation (one attempt).
	Timeout time.Duration
	// Seed seeds each worker's choices.
	Seed uint64
}

// DefaultWorkload is the workload of `make chaos`.
func DefaultWorkload(seed uint64) WorkloadConfig {
	return WorkloadConfig{Workers: 16, Parts: 12, MaxKeysPerPart: 800, Timeout: 3 * time.Second, Seed: seed}
}

// Workload runs recording clients against every node of a cluster.
type Workload struct {
	cfg  WorkloadConfig
	c    *Cluster
	hist *History
	// up says which nodes clients may send to (a killed node would only
	// refuse connections).
	up func(i int) bool

	admin   []*client.Client   // per node
	readers [][]*client.Client // per partition, per node

	mu    sync.Mutex
	pools [][]string // per partition: gkids seen
	count []int      // per partition: keys generated (acknowledged)

	seq atomic.Uint64
}

// Reader is the client name of partition p's reader.
func Reader(p int) string { return fmt.Sprintf("reader-p%d", p) }

// Resource is partition p's resource.
func Resource(p int) string { return fmt.Sprintf("chaos/p%d", p) }

// RuleID is the id of partition p's grant.
func RuleID(p int) string { return fmt.Sprintf("chaos-p%d", p) }

// NewWorkload registers the partitions' reader clients, issues their
// certificates from the cluster's client CA, grants each get on its
// resource, and opens one single-attempt client per node and identity.
func NewWorkload(ctx context.Context, c *Cluster, hist *History, cfg WorkloadConfig, up func(int) bool) (*Workload, error) {
	w := &Workload{cfg: cfg, c: c, hist: hist, up: up, pools: make([][]string, cfg.Parts), count: make([]int, cfg.Parts)}
	admin, err := c.Client(10 * time.Second)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	ca, err := transport.LoadCA(filepath.Join(c.cfg.Dir, "ca", "client-ca.pem"), filepath.Join(c.cfg.Dir, "ca", "client-ca-key.pem"))
	if err != nil {
		return nil, err
	}
	for p := 0; p < cfg.Parts; p++ {
		if _, err := admin.RegisterClient(ctx, &cofferv1.RegisterClientRequest{Name: Reader(p)}); err != nil {
			return nil, fmt.Errorf("chaos: register %s: %w", Reader(p), err)
		}
		if _, err := admin.Grant(ctx, &cofferv1.GrantRequest{Id: RuleID(p), Subject: "client:" + Reader(p),
			Operations: []string{"get"}, ResourcePattern: Resource(p)}); err != nil {
			return nil, fmt.Errorf("chaos: grant %s: %w", Reader(p), err)
		}
		certPEM, keyPEM, err := ca.Issue(transport.IssueRequest{Identity: transport.Identity{Kind: transport.KindClient, Name: Reader(p)}, Validity: 24 * time.Hour})
		if err != nil {
			return nil, err
		}
		cert, key := filepath.Join(c.cfg.Dir, "client", Reader(p)+".pem"), filepath.Join(c.cfg.Dir, "client", Reader(p)+"-key.pem")
		if err := transport.WriteKeyPair(cert, key, certPEM, keyPEM); err != nil {
			return nil, err
		}
		var row []*client.Client
		for i := 0; i < c.cfg.Nodes; i++ {
			cl, err := c.ClientAs(transport.TLSConfig{CAFile: c.tls.CAFile, CertFile: cert, KeyFile: key}, cfg.Timeout, i)
			if err != nil {
				return nil, err
			}
			row = append(row, cl)
		}
		w.readers = append(w.readers, row)
	}
	for i := 0; i < c.cfg.Nodes; i++ {
		cl, err := c.ClientAs(c.tls, cfg.Timeout, i)
		if err != nil {
			return nil, err
		}
		w.admin = append(w.admin, cl)
	}
	return w, nil
}

// Close closes every client.
func (w *Workload) Close() {
	for _, cl := range w.admin {
		_ = cl.Close()
	}
	for _, row := range w.readers {
		for _, cl := range row {
			_ = cl.Close()
		}
	}
}

// Run runs the workers until ctx ends.
func (w *Workload) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := 0; i < w.cfg.Workers; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(w.cfg.Seed, uint64(id)))
			for ctx.Err() == nil {
				w.step(ctx, id, rng)
			}
		}(i)
	}
	wg.Wait()
}

// weights of the operations, in per mille.
var weights = []struct {
	k Kind
	w int
}{
	{OpGenerate, 220}, {OpGet, 330}, {OpDescribe, 100}, {OpList, 50},
	{OpGrant, 75}, {OpRevoke, 75}, {OpActivate, 75}, {OpDeactivate, 75},
}

func (w *Workload) step(ctx context.Context, worker int, rng *rand.Rand) {
	var nodes []int
	for i := 0; i < w.c.cfg.Nodes; i++ {
		if w.up(i) {
			nodes = append(nodes, i)
		}
	}
	if len(nodes) == 0 {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
		return
	}
	n := nodes[rng.IntN(len(nodes))]
	p := rng.IntN(w.cfg.Parts)
	r := rng.IntN(1000)
	var k Kind
	for _, x := range weights {
		if r < x.w {
			k = x.k
			break
		}
		r -= x.w
	}
	w.mu.Lock()
	pool := w.pools[p]
	var gk string
	if len(pool) > 0 {
		gk = pool[rng.IntN(len(pool))]
	}
	full := w.count[p] >= w.cfg.MaxKeysPerPart
	w.mu.Unlock()
	if (k == OpGet || k == OpDescribe) && gk == "" || k == OpGenerate && full {
		k = OpList
	}
	op := Op{Worker: worker, Node: w.c.ID(n), Kind: k, Part: p, Gkid: gk,
		RequestID: fmt.Sprintf("chaos-%d-%d", w.cfg.Seed, w.seq.Add(1))}
	// A call's context outlives the run's: an operation in flight when the
	// run ends completes (or times out) and is recorded.
	octx, cancel := context.WithTimeout(client.WithRequestID(context.WithoutCancel(ctx), op.RequestID), w.cfg.Timeout)
	defer cancel()
	admin, reader := w.admin[n], w.readers[p][n]
	op.Call = w.hist.Now()
	var err error
	switch k {
	case OpGenerate:
		var resp *cofferv1.GenerateKeyResponse
		resp, err = admin.GenerateKey(octx, &cofferv1.GenerateKeyRequest{Resource: Resource(p), RequestId: op.RequestID})
		if err == nil {
			op.Gkid = resp.GetKey().GetGkid()
		}
	case OpGet:
		var resp *cofferv1.GetKeyResponse
		resp, err = reader.GetKey(octx, &cofferv1.GetKeyRequest{Gkid: gk, Consistency: cofferv1.Consistency_CONSISTENCY_LINEARIZABLE})
		if err == nil {
			op.Material = digest(resp.GetMaterial())
		}
	case OpDescribe:
		var resp *cofferv1.DescribeKeyResponse
		resp, err = admin.DescribeKey(octx, &cofferv1.DescribeKeyRequest{Gkid: gk, Consistency: cofferv1.Consistency_CONSISTENCY_LINEARIZABLE})
		if err == nil && resp.GetKey().GetResource() != Resource(p) {
			err = fmt.Errorf("%w: describe %s: resource %q, want %q", ErrWrongAnswer, gk, resp.GetKey().GetResource(), Resource(p))
		}
	case OpList:
		var resp *cofferv1.ListKeysResponse
		resp, err = admin.ListKeys(octx, &cofferv1.ListKeysRequest{Resource: Resource(p), PageSize: 1000, Consistency: cofferv1.Consistency_CONSISTENCY_LINEARIZABLE})
		if err == nil {
			op.Keys = []string{}
			for _, m := range resp.GetKeys() {
				op.Keys = append(op.Keys, m.GetGkid())
			}
			if resp.GetNextPageToken() != "" {
				err = fmt.Errorf("%w: list of %s spans pages", ErrWrongAnswer, Resource(p))
			}
		}
	case OpGrant:
		_, err = admin.Grant(octx, &cofferv1.GrantRequest{Id: RuleID(p), Subject: "client:" + Reader(p), Operations: []string{"get"}, ResourcePattern: Resource(p)})
	case OpRevoke:
		_, err = admin.RevokeGrant(octx, &cofferv1.RevokeGrantRequest{Id: RuleID(p)})
	case OpActivate, OpDeactivate:
		_, err = admin.SetClientActive(octx, &cofferv1.SetClientActiveRequest{Name: Reader(p), Active: k == OpActivate})
	}
	op.Return = w.hist.Now()
	op.Outcome, op.Code = classify(err)
	if err != nil {
		op.Err = err.Error()
	}
	if errors.Is(err, ErrWrongAnswer) {
		op.Outcome, op.Code = Ok, "WRONG"
	}
	w.hist.Add(op)
	w.learn(op)
}

// learn adds the gkids an operation revealed to its partition's pool.
func (w *Workload) learn(op Op) {
	if op.Outcome != Ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch op.Kind {
	case OpGenerate:
		w.pools[op.Part] = append(w.pools[op.Part], op.Gkid)
		w.count[op.Part]++
	case OpList:
		known := map[string]bool{}
		for _, g := range w.pools[op.Part] {
			known[g] = true
		}
		for _, g := range op.Keys {
			if !known[g] {
				w.pools[op.Part] = append(w.pools[op.Part], g)
			}
		}
	}
}

// ClientAs returns a single-attempt client (no retry, no cool-down) of
// node i with the given credentials: one operation is one request.
func (c *Cluster) ClientAs(tlsCfg transport.TLSConfig, timeout time.Duration, i int) (*client.Client, error) {
	conf, err := tlsCfg.ClientTLS()
	if err != nil {
		return nil, err
	}
	cfg := client.DefaultConfig()
	cfg.TLS = conf
	cfg.Endpoints = []string{c.Addr(i)}
	cfg.RequestTimeout, cfg.MaxAttempts, cfg.Backoff, cfg.Cooldown = timeout, 1, 0, 0
	return client.New(cfg)
}
