package node

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// TestNode_OperatorActions: transfer leadership to a named voter, drain the
// leader (leadership moves away and stays away), refuse a removal that
// would leave fewer voters than the minimum quorum or empty a site, remove
// with force, and audit each; a client without cluster.manage is refused.
func TestNode_OperatorActions(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	cs := func(i int) cofferv1.ClusterServiceClient { return cofferv1.NewClusterServiceClient(tc.connTo(i)) }
	l := tc.waitLeader()
	f := (l + 1) % 3
	start := tc.nodes[l].FSM().AuditHeadSeq()

	eve := tc.dialAs(tc.issue(transport.Identity{Kind: transport.KindClient, Name: "eve"}), f)
	_, err := cofferv1.NewClusterServiceClient(eve).TransferLeadership(ctx, &cofferv1.TransferLeadershipRequest{})
	wantCode(t, "transfer without cluster.manage", err, codes.PermissionDenied, "")
	_, err = cs(f).TransferLeadership(ctx, &cofferv1.TransferLeadershipRequest{To: "n9"})
	wantCode(t, "transfer to a non-member", err, codes.NotFound, "not a member")

	// Transfer to the follower f, sent through f (forwarded to the leader).
	resp, err := cs(f).TransferLeadership(ctx, &cofferv1.TransferLeadershipRequest{To: tc.cfgs[f].ID})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetFrom() != tc.cfgs[l].ID || resp.GetTo() != tc.cfgs[f].ID {
		t.Fatalf("transfer response %+v", resp)
	}
	if got := tc.waitLeader(); got != f {
		t.Fatalf("leader is node %d after the transfer to %d", got, f)
	}

	// Drain the new leader: it hands leadership over and keeps it away.
	if _, err := cs(l).DrainNode(ctx, &cofferv1.DrainNodeRequest{Node: tc.cfgs[f].ID}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for tc.nodes[f].IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("the drained node still leads")
		}
		time.Sleep(20 * time.Millisecond)
	}
	nl := tc.waitLeader()
	_, err = cs(nl).TransferLeadership(ctx, &cofferv1.TransferLeadershipRequest{To: tc.cfgs[f].ID})
	wantCode(t, "transfer to a drained node", err, codes.FailedPrecondition, "is drained")
	if _, err := cs(nl).DrainNode(ctx, &cofferv1.DrainNodeRequest{Node: tc.cfgs[f].ID, Undrain: true}); err != nil {
		t.Fatal(err)
	}

	// Removals: the leader, and a voter below the minimum quorum (each the
	// last node of its site too), are refused; forced, a follower goes.
	nl = tc.waitLeader()
	victim := (nl + 1) % 3
	_, err = cs(victim).RemoveNode(ctx, &cofferv1.RemoveNodeRequest{Node: tc.cfgs[nl].ID})
	wantCode(t, "remove the leader", err, codes.FailedPrecondition, "transfer-leader")
	_, err = cs(nl).RemoveNode(ctx, &cofferv1.RemoveNodeRequest{Node: tc.cfgs[victim].ID})
	wantCode(t, "remove below the minimum quorum", err, codes.FailedPrecondition, "fewer than membership.min_quorum")
	if !strings.Contains(err.Error(), "last node of site") {
		t.Fatalf("the refusal does not name the site: %v", err)
	}
	rr, err := cs(nl).RemoveNode(ctx, &cofferv1.RemoveNodeRequest{Node: tc.cfgs[victim].ID, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rr.GetWasVoter() || rr.GetVotersLeft() != 2 {
		t.Fatalf("remove response %+v", rr)
	}
	for _, s := range tc.nodes[nl].Raft().GetConfiguration().Configuration().Servers {
		if string(s.ID) == tc.cfgs[victim].ID {
			t.Fatalf("%s still in the configuration: %+v", s.ID, s)
		}
	}
	if rec := tc.nodes[nl].FSM().NodePins()[tc.cfgs[victim].ID]; !rec.GetRemoved() {
		t.Fatalf("no removal tombstone: %+v", rec)
	}
	// Still a working two-voter cluster.
	tc.mustGenerate(nl, "after/remove", "")

	want := []string{"leadership transferred from", "drained " + tc.cfgs[f].ID, "undrained", "forced although",
		"removed from the Raft configuration (was a voter"}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		entries, _, err := tc.nodes[tc.waitLeader()].FSM().AuditEntries(start, 100000, fsm.AuditFilter{Operation: "cluster.manage"})
		if err != nil {
			t.Fatal(err)
		}
		missing := ""
		for _, w := range want {
			found := false
			for _, e := range entries {
				found = found || (e.GetOutcome() == cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED && strings.Contains(e.GetReason(), w))
			}
			if !found {
				missing = w
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("no audit entry saying %q", missing)
		}
	}
}
