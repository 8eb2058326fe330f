package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/node"
)

func buildCofferd(t *testing.T) string {
	t.Helper()
	return filepath.Join(testenv.Build(t, "../cmd/cofferd"), "cofferd")
}

func freeBase(t *testing.T, nodes int) int { return testenv.FreeBase(t, nodes) }

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// ackLog records every write the cluster acknowledged, with the material a
// read returned right after it.
type ackLog struct {
	mu   sync.Mutex
	keys map[string][]byte
}

func (a *ackLog) add(gk string, m []byte) {
	a.mu.Lock()
	a.keys[gk] = m
	a.mu.Unlock()
}

// TestChaos_LeaderKill kills the leader with SIGKILL again and again while
// clients write, measures the time from each kill to the first acknowledged
// write, and proves at the end that every acknowledged key is still there
// with the same material.
func TestChaos_LeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	kills := envInt("CHAOS_KILLS", 3)
	c, err := NewCluster(Config{Cofferd: buildCofferd(t), Dir: filepath.Join(t.TempDir(), "cluster"), Nodes: 3, BasePort: freeBase(t, 3)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(kills)*30*time.Second+60*time.Second)
	defer cancel()
	if _, err := c.Leader(ctx); err != nil {
		t.Fatal(err)
	}

	// Background writers: generate, then read back; only acknowledged keys
	// are recorded.
	acks := &ackLog{keys: map[string][]byte{}}
	wctx, stopWriters := context.WithCancel(ctx)
	// Clients retry within their deadline (10 s with none given), so a
	// leader kill must cost no request: every error is counted.
	var failMu sync.Mutex
	var failures []error
	failed := func(err error) {
		if wctx.Err() != nil {
			return
		}
		failMu.Lock()
		failures = append(failures, err)
		failMu.Unlock()
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl, err := c.Client(time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			defer cl.Close()
			for wctx.Err() == nil {
				resp, err := cl.GenerateKey(wctx, &cofferv1.GenerateKeyRequest{Resource: "chaos"})
				if err != nil {
					failed(err)
					continue
				}
				g, err := cl.GetKey(wctx, &cofferv1.GetKeyRequest{Gkid: resp.GetKey().GetGkid()})
				if err != nil {
					failed(err)
					acks.add(resp.GetKey().GetGkid(), nil)
					continue
				}
				acks.add(resp.GetKey().GetGkid(), g.GetMaterial())
			}
		}()
	}

	var failovers []time.Duration
	for k := 0; k < kills; k++ {
		leader, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var survivors []int
		for i := 0; i < 3; i++ {
			if i != leader {
				survivors = append(survivors, i)
			}
		}
		probe, err := c.Probe(200*time.Millisecond, survivors...)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // let writes flow under this leader
		if err := c.Kill(leader); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		for {
			_, err := probe.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "probe"})
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("no successful write after killing %s: %v", c.ID(leader), err)
			}
		}
		d := time.Since(killed)
		failovers = append(failovers, d)
		_ = probe.Close()
		t.Logf("kill %d: leader %s killed, first write after %v", k+1, c.ID(leader), d.Round(time.Millisecond))
		if err := c.Start(leader); err != nil {
			t.Fatal(err)
		}
	}
	stopWriters()
	wg.Wait()
	t.Logf("%d acknowledged keys; %d failed requests", len(acks.keys), len(failures))
	if len(failures) > 0 {
		t.Errorf("%d requests failed across the leader kills (the client retries within its deadline); first: %v", len(failures), failures[0])
	}

	// Every acknowledged key is readable on every node with its material,
	// once the restarted node has rejoined (reads retry while the cluster
	// settles; a key that is truly lost fails with NotFound).
	acks.mu.Lock()
	defer acks.mu.Unlock()
	if len(acks.keys) == 0 {
		t.Fatal("no write was acknowledged")
	}
	if _, err := c.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		cl, err := c.Client(5*time.Second, i)
		if err != nil {
			t.Fatal(err)
		}
		for gk, m := range acks.keys {
			var g *cofferv1.GetKeyResponse
			for {
				g, err = cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk})
				if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
					break
				}
			}
			if err != nil {
				t.Fatalf("acknowledged key %s lost on %s: %v", gk, c.ID(i), err)
			}
			if m != nil && !bytes.Equal(g.GetMaterial(), m) {
				t.Fatalf("key %s changed material on %s", gk, c.ID(i))
			}
		}
		_ = cl.Close()
	}
	checkAuditLog(ctx, t, c, acks.keys)
	report(t, failovers, len(acks.keys))
}

// checkAuditLog proves the audit log came through the kills whole: an
// export verifies against the nodes' signing keys, every acknowledged key's
// creation has its granted entry (no change without its entry), and no
// request has two entries.
func checkAuditLog(ctx context.Context, t *testing.T, c *Cluster, acked map[string][]byte) {
	t.Helper()
	cl, err := c.Client(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var export bytes.Buffer
	if err := cl.AuditExport(ctx, 0, &export); err != nil {
		t.Fatalf("audit export after the kills: %v", err)
	}
	var keyFiles []string
	for i := 0; i < c.cfg.Nodes; i++ {
		keyFiles = append(keyFiles, filepath.Join(c.cfg.Dir, c.ID(i), "data", node.AuditKeyFile))
	}
	trusted, err := audit.LoadTrustedKeys(keyFiles...)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.VerifyJSONL(bytes.NewReader(export.Bytes()), trusted, audit.DefaultVerifyOptions())
	if err != nil {
		t.Fatalf("the audit log after the kills does not verify: %v", err)
	}
	type request struct {
		node, caller, op, id string
		at                   int64
	}
	seen := map[request]uint64{}
	created := map[string]bool{}
	r := audit.NewReader(bytes.NewReader(export.Bytes()))
	for {
		it, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		e := it.Entry
		if e == nil {
			continue
		}
		if e.GetRequestId() != "" {
			k := request{e.GetNode(), e.GetCaller(), e.GetOperation(), e.GetRequestId(), e.GetTimeUnixNano()}
			if first, dup := seen[k]; dup {
				t.Fatalf("request %+v has two audit entries: seq %d and %d", k, first, e.GetSeq())
			}
			seen[k] = e.GetSeq()
		}
		if e.GetOperation() == "generate" && e.GetOutcome() == cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
			created[e.GetGkid()] = true
		}
	}
	for gk := range acked {
		if !created[gk] {
			t.Fatalf("acknowledged key %s has no granted generate entry in the audit log", gk)
		}
	}
	t.Logf("audit log: %d entries verified, %d checkpoints, every acknowledged key's creation recorded", rep.Entries, rep.Checkpoints)
}

func report(t *testing.T, ds []time.Duration, acked int) {
	sorted := append([]time.Duration(nil), ds...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	pct := func(p float64) time.Duration { return sorted[int(p*float64(len(sorted)-1)+0.5)] }
	t.Logf("leader kills: %d, acknowledged keys checked: %d, failover to first write: median %v p90 %v max %v",
		len(ds), acked, pct(0.5).Round(time.Millisecond), pct(0.9).Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond))
	if path := os.Getenv("CHAOS_REPORT"); path != "" {
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		var all []float64
		for _, d := range ds {
			all = append(all, ms(d))
		}
		data, _ := json.MarshalIndent(map[string]any{
			"kills": len(ds), "acknowledged_keys_checked": acked,
			"failover_ms": all, "median_ms": ms(pct(0.5)), "p90_ms": ms(pct(0.9)), "max_ms": ms(sorted[len(sorted)-1]),
		}, "", "  ")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Error(err)
		}
	}
}
