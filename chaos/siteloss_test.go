package chaos

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// siteOf is the site of each node of the 2+2+1 layout.
var siteOf = []string{"a", "a", "b", "b", "c"}

// waitVoters is Cluster.WaitVoters for a test.
func waitVoters(ctx context.Context, t *testing.T, c *Cluster, want int) *cofferv1.ClusterStatusResponse {
	t.Helper()
	st, err := c.WaitVoters(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// firstWrite generates keys through the given nodes, one attempt at a
// time, until one is acknowledged, and returns how long that took.
func firstWrite(ctx context.Context, t *testing.T, c *Cluster, from time.Time, nodes []int, acked *ackLog) time.Duration {
	t.Helper()
	probe, err := c.Probe(time.Second, nodes...)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	for i := 0; ; i++ {
		resp, err := probe.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "site/loss", RequestId: fmt.Sprintf("siteloss-%d-%d", from.UnixNano(), i)})
		if err == nil {
			d := time.Since(from)
			// Read it back with retries: the probe makes one attempt, and
			// leadership may still move right after the first write.
			cl, err := c.Client(10*time.Second, nodes...)
			if err != nil {
				t.Fatal(err)
			}
			get, err := cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: resp.GetKey().GetGkid()})
			cl.Close()
			if err != nil {
				t.Fatalf("read back the first key after the loss: %v", err)
			}
			acked.add(resp.GetKey().GetGkid(), get.GetMaterial())
			return d
		}
		if ctx.Err() != nil {
			t.Fatalf("no write acknowledged after the site loss: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestChaos_SiteLoss runs five real processes over three sites (2+2+1),
// waits for autopilot to give all five votes, then kills every node of one
// site, once the leader's and once another: writes resume on the other
// sites, every acknowledged key reads back from every surviving node, and
// the lost site's nodes catch up when they return.
func TestChaos_SiteLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	dir := filepath.Join(t.TempDir(), "cluster")
	c, err := NewCluster(Config{Cofferd: buildCofferd(t), Dir: dir, Nodes: 5, BasePort: freeBase(t, 5), Sites: strings.Join(siteOf, ",")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	waitVoters(ctx, t, c, 5)

	acked := &ackLog{keys: map[string][]byte{}}
	cl, err := c.Client(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := range 10 {
		resp, err := cl.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "site/loss", RequestId: fmt.Sprintf("before-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		get, err := cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: resp.GetKey().GetGkid()})
		if err != nil {
			t.Fatal(err)
		}
		acked.add(resp.GetKey().GetGkid(), get.GetMaterial())
	}

	for _, withLeader := range []bool{true, false} {
		l, err := c.Leader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		site := siteOf[l]
		if !withLeader {
			for _, s := range siteOf {
				if s != siteOf[l] {
					site = s
					break
				}
			}
		}
		var lost, alive []int
		for i, s := range siteOf {
			if s == site {
				lost = append(lost, i)
			} else {
				alive = append(alive, i)
			}
		}
		start := time.Now()
		for _, i := range lost {
			if err := c.Kill(i); err != nil {
				t.Fatal(err)
			}
		}
		d := firstWrite(ctx, t, c, start, alive, acked)
		t.Logf("site %s lost (leader inside: %v): first acknowledged write after %v", site, withLeader, d.Round(time.Millisecond))

		// Every acknowledged key reads back from every surviving node.
		for _, i := range alive {
			one, err := c.Client(2*time.Second, i)
			if err != nil {
				t.Fatal(err)
			}
			acked.mu.Lock()
			keys := maps.Clone(acked.keys)
			acked.mu.Unlock()
			for gk, m := range keys {
				got, err := one.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk})
				if err != nil || string(got.GetMaterial()) != string(m) {
					t.Fatalf("node %s after losing site %s: key %s: %v", c.ID(i), site, gk, err)
				}
			}
			one.Close()
		}

		// The lost site returns and catches up.
		back := time.Now()
		for _, i := range lost {
			if err := c.Start(i); err != nil {
				t.Fatal(err)
			}
		}
		st := waitVoters(ctx, t, c, 5)
		var target uint64
		for _, n := range st.GetNodes() {
			if n.GetRole() == cofferv1.NodeRole_NODE_ROLE_LEADER {
				target = n.GetAppliedIndex()
			}
		}
		applied := waitApplied(ctx, t, c, target)
		t.Logf("site %s back: every node applied index %d %v after it returned (%s)", site, target, time.Since(back).Round(time.Millisecond), sortedApplied(applied))
	}
}

func sortedApplied(m map[string]uint64) string {
	var ids []string
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var parts []string
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("%s=%d", id, m[id]))
	}
	return strings.Join(parts, " ")
}

// waitApplied waits until every node has applied index target.
func waitApplied(ctx context.Context, t *testing.T, c *Cluster, target uint64) map[string]uint64 {
	t.Helper()
	cl, err := c.Client(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for {
		applied := map[string]uint64{}
		st, err := cl.ClusterStatus(ctx, &cofferv1.ClusterStatusRequest{})
		if err == nil {
			low := false
			for _, n := range st.GetNodes() {
				applied[n.GetId()] = n.GetAppliedIndex()
				low = low || n.GetAppliedIndex() < target
			}
			if !low && len(applied) == len(siteOf) {
				return applied
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("nodes did not catch up to index %d: %v (%s)", target, err, sortedApplied(applied))
		case <-time.After(100 * time.Millisecond):
		}
	}
}
