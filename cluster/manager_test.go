package cluster

import (
	"testing"
	"time"

	autopilot "github.com/hashicorp/raft-autopilot"

	"github.com/coffer-kms/coffer/internal/duration"
)

// A member dead or gone in gossip is reported failed (and so removable)
// only after DeadServerAfter; coming back alive resets its clock.
func TestGossipStatus_DeadServerAfter(t *testing.T) {
	s := DefaultSettings()
	s.DeadServerAfter = duration.Duration(time.Minute)
	d := &delegate{settings: s}
	t0 := time.Unix(1000, 0)
	members := func(n1, n2 string) []Member {
		return []Member{{Meta: Meta{ID: "n1"}, State: n1}, {Meta: Meta{ID: "n2"}, State: n2}}
	}
	check := func(at time.Time, ms []Member, want1, want2 autopilot.NodeStatus) {
		t.Helper()
		got := d.gossipStatus(ms, at)
		if got["n1"] != want1 || got["n2"] != want2 {
			t.Fatalf("at +%v: n1 %v n2 %v, want %v %v", at.Sub(t0), got["n1"], got["n2"], want1, want2)
		}
	}
	check(t0, members("alive", "dead"), autopilot.NodeAlive, autopilot.NodeAlive)
	check(t0.Add(59*time.Second), members("suspect", "dead"), autopilot.NodeAlive, autopilot.NodeAlive)
	check(t0.Add(time.Minute), members("alive", "dead"), autopilot.NodeAlive, autopilot.NodeFailed)
	// n2 returns, then leaves: its clock starts again.
	check(t0.Add(61*time.Second), members("alive", "alive"), autopilot.NodeAlive, autopilot.NodeAlive)
	check(t0.Add(62*time.Second), members("alive", "left"), autopilot.NodeAlive, autopilot.NodeAlive)
	check(t0.Add(122*time.Second), members("alive", "left"), autopilot.NodeAlive, autopilot.NodeLeft)
}
