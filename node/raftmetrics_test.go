package node

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Every node's /metrics carries its Raft role, term, leader and indexes,
// and hashicorp/raft's own metrics.
func TestNode_RaftMetrics(t *testing.T) {
	tc := mustCluster(t, 3, func(c *Config) { c.MetricsAddr = freeAddr(t) })
	l := tc.waitLeader()
	f := (l + 1) % 3
	tc.mustGenerate(l, "metrics/app", "")
	scrape := func(i int) string {
		resp, err := http.Get("http://" + tc.cfgs[i].MetricsAddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	want := map[int][]string{
		l: {`coffer_raft_role{role="leader"} 1`, `coffer_raft_leader{leader_id="` + tc.cfgs[l].ID + `"} 1`, "coffer_raft_term ", `coffer_raft_index{kind="applied"}`},
		f: {`coffer_raft_role{role="follower"} 1`, `coffer_raft_leader{leader_id="` + tc.cfgs[l].ID + `"} 1`, "coffer_raft_last_contact_seconds "},
	}
	for i, subs := range want {
		got := scrape(i)
		for _, s := range subs {
			if !strings.Contains(got, s) {
				t.Fatalf("node %d's metrics lack %q", i, s)
			}
		}
	}
	// hashicorp/raft's own metrics reach the first node of the process that
	// serves metrics (one sink per process); they appear within a few
	// seconds of activity.
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := scrape(0) + scrape(1) + scrape(2)
		if strings.Contains(all, "coffer_raft_fsm_applyBatch") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no hashicorp/raft metric (coffer_raft_fsm_applyBatch) on any node")
		}
		tc.mustGenerate(l, "metrics/app", "")
		time.Sleep(200 * time.Millisecond)
	}
}
