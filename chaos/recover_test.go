package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// TestChaos_MajorityLost kills two of three voters for good, checks that
// the survivor cannot write, runs `cofferd recover` on it (refused without
// --accept-data-loss), restarts it, and checks that it leads a one-voter
// cluster that writes, still serves every acknowledged key, and has the
// recovery in its audit log.
func TestChaos_MajorityLost(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	cofferd := buildCofferd(t)
	dir := filepath.Join(t.TempDir(), "cluster")
	c, err := NewCluster(Config{Cofferd: cofferd, Dir: dir, Nodes: 3, BasePort: freeBase(t, 3)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	cl, err := c.Client(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	acked := map[string][]byte{}
	for i := range 5 {
		r, err := cl.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "dr/app", RequestId: fmt.Sprintf("dr-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		g, err := cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: r.GetKey().GetGkid()})
		if err != nil {
			t.Fatal(err)
		}
		acked[r.GetKey().GetGkid()] = g.GetMaterial()
	}
	// Every node applies everything, so the survivor holds it.
	for {
		st, err := cl.ClusterStatus(ctx, &cofferv1.ClusterStatusRequest{})
		if err == nil && len(st.GetNodes()) == 3 {
			lo, hi := ^uint64(0), uint64(0)
			for _, n := range st.GetNodes() {
				lo, hi = min(lo, n.GetAppliedIndex()), max(hi, n.GetAppliedIndex())
			}
			if lo == hi {
				break
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("nodes never agreed on their applied index: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	cl.Close()

	for _, i := range []int{1, 2} {
		if err := c.Kill(i); err != nil {
			t.Fatal(err)
		}
	}
	probe, err := c.Probe(time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
	if _, err := probe.GenerateKey(wctx, &cofferv1.GenerateKeyRequest{Resource: "dr/app"}); err == nil {
		t.Fatal("a write succeeded with two of three voters gone")
	}
	wcancel()
	probe.Close()
	if err := c.Stop(0); err != nil {
		t.Fatal(err)
	}

	conf := filepath.Join(dir, "n1", "config.json")
	out, err := exec.Command(cofferd, "recover", "--config", conf, "--voters", "n1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "accept-data-loss") || !strings.Contains(string(out), "may be lost") {
		t.Fatalf("recover without --accept-data-loss: %v\n%s", err, out)
	}
	out, err = exec.Command(cofferd, "recover", "--config", conf, "--voters", "n1,n9", "--accept-data-loss").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "n9 is not in this node's configuration") {
		t.Fatalf("recover naming a stranger: %v\n%s", err, out)
	}
	out, err = exec.Command(cofferd, "recover", "--config", conf, "--voters", "n1", "--accept-data-loss").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "voters are now n1") {
		t.Fatalf("recover: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "n1", "data", "recovered.json")); err != nil {
		t.Fatalf("no recovery marker: %v", err)
	}

	if err := c.Start(0); err != nil {
		t.Fatal(err)
	}
	cl, err = c.Client(2*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	start := time.Now()
	if _, err := cl.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "dr/after", RequestId: "dr-after"}); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	t.Logf("recovered node started: first write acknowledged %v after start", time.Since(start).Round(time.Millisecond))
	for gk, m := range acked {
		g, err := cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk})
		if err != nil || string(g.GetMaterial()) != string(m) {
			t.Fatalf("key %s after recovery: %v", gk, err)
		}
	}
	for {
		resp, err := cl.AuditQuery(ctx, &cofferv1.AuditQueryRequest{Operation: "cluster.recover"})
		if err == nil && len(resp.GetEntries()) == 1 && strings.Contains(resp.GetEntries()[0].GetReason(), "voters reset to n1") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the recovery was never audited: %v %v", resp, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "n1", "data", "recovered.json")); !os.IsNotExist(err) {
		t.Fatalf("the recovery marker stayed after it was audited: %v", err)
	}
}

// Cluster status answers on a cluster that lost its quorum, marked not
// authoritative, with each surviving node's own view.
func TestChaos_StatusWithoutQuorum(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	c, err := NewCluster(Config{Cofferd: buildCofferd(t), Dir: filepath.Join(t.TempDir(), "cluster"), Nodes: 3, BasePort: freeBase(t, 3)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		if err := c.Kill(i); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := c.Client(2*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for {
		st, err := cl.ClusterStatus(ctx, &cofferv1.ClusterStatusRequest{})
		if err == nil && !st.GetAuthoritative() {
			if len(st.GetNodes()) != 3 || st.GetNodes()[0].GetRole() == cofferv1.NodeRole_NODE_ROLE_UNREACHABLE ||
				st.GetNodes()[1].GetRole() != cofferv1.NodeRole_NODE_ROLE_UNREACHABLE {
				t.Fatalf("status without quorum: %v", st)
			}
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no status without quorum: %v %v", st, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
