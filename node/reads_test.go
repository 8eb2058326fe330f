package node

import (
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	dto "github.com/prometheus/client_model/go"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/fsm"
)

// TestNode_DecidedReadsFollowAcknowledgedAccessChanges alternates grants
// and revocations acknowledged by the leader with reads through every
// follower at once: each read must see the change acknowledged before it
// (granted right after the grant, refused right after the revocation), and
// its audit entry must record exactly what the caller got.
func TestNode_DecidedReadsFollowAcknowledgedAccessChanges(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l := tc.waitLeader()
	tc.mustRegisterApp(admin, l, "carol")
	carol := tc.identity("carol")
	key, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "lin/1"})
	if err != nil {
		t.Fatal(err)
	}
	gkid := key.GetKey().GetGkid()
	start := tc.nodes[l].FSM().AuditHeadSeq()
	var want []cofferv1.AuditOutcome
	for round := 0; round < 5; round++ {
		if _, err := admin.access[l].Grant(ctx, &cofferv1.GrantRequest{Id: "lin", Subject: "client:carol", Operations: []string{"get"}, ResourcePattern: "lin/**"}); err != nil {
			t.Fatal(err)
		}
		for i := range tc.nodes {
			if i == l {
				continue
			}
			if _, err := carol.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gkid}); err != nil {
				t.Fatalf("round %d: get through node %d right after the grant: %v", round, i, err)
			}
			want = append(want, cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED)
		}
		if _, err := admin.access[l].RevokeGrant(ctx, &cofferv1.RevokeGrantRequest{Id: "lin"}); err != nil {
			t.Fatal(err)
		}
		for i := range tc.nodes {
			if i == l {
				continue
			}
			_, err := carol.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gkid})
			wantCode(t, fmt.Sprintf("round %d: get through node %d right after the revocation", round, i), err, codes.PermissionDenied, "carol")
			want = append(want, cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED)
		}
	}
	entries, _, err := tc.nodes[l].FSM().AuditEntries(start, 1000, fsm.AuditFilter{Caller: "client:carol", Operation: "get"})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		t.Fatalf("%d audit entries for carol's gets, want %d", len(entries), len(want))
	}
	for i, e := range entries {
		if e.GetOutcome() != want[i] || e.GetGkid() != gkid || e.GetResource() != "lin/1" {
			t.Errorf("entry %d: %v %s %s, want %v for %s on lin/1", i, e.GetOutcome(), e.GetGkid(), e.GetResource(), want[i], gkid)
		}
	}
}

// TestNode_MergedRoundsKeepEachReadsDecision sends many gets at once
// through every node, from a client granted one resource and not the
// other, so that the leader merges followers' batches and its own entries
// into shared rounds. Every caller must get its own read's decision back,
// and the log must record, per key, exactly the grants and refusals the
// callers saw.
func TestNode_MergedRoundsKeepEachReadsDecision(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l := tc.waitLeader()
	tc.mustRegisterApp(admin, l, "dave")
	tc.mustGrant(admin, l, "client:dave", "open/**", "get")
	open, closed := tc.mustGenerate(l, "open/1", ""), tc.mustGenerate(l, "closed/1", "")
	dave := tc.identity("dave")
	start := tc.nodes[l].FSM().AuditHeadSeq()

	roundEntries := func() float64 {
		var m dto.Metric
		if err := metricRoundEntries.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram().GetSampleSum()
	}
	entriesBefore := roundEntries()

	const perNode = 40
	type result struct {
		gkid    string
		granted bool
		err     error
	}
	results := make(chan result, perNode*len(tc.nodes))
	var wg sync.WaitGroup
	for i := range tc.nodes {
		for j := range perNode {
			gkid := open.GetGkid()
			if j%2 == 1 {
				gkid = closed.GetGkid()
			}
			wg.Go(func() {
				resp, err := dave.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gkid})
				switch {
				case err == nil && len(resp.GetMaterial()) > 0:
					results <- result{gkid: gkid, granted: true}
				case status.Code(err) == codes.PermissionDenied:
					results <- result{gkid: gkid}
				default:
					results <- result{gkid: gkid, err: fmt.Errorf("node %d: %v", i, err)}
				}
			})
		}
	}
	wg.Wait()
	close(results)
	seen := map[string][2]int{} // per gkid: granted, denied
	for r := range results {
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.granted != (r.gkid == open.GetGkid()) {
			t.Fatalf("get of %s: granted=%v, want the grant to follow the resource", r.gkid, r.granted)
		}
		c := seen[r.gkid]
		if r.granted {
			c[0]++
		} else {
			c[1]++
		}
		seen[r.gkid] = c
	}
	entries, _, err := tc.nodes[l].FSM().AuditEntries(start, 10000, fsm.AuditFilter{Caller: "client:dave", Operation: "get"})
	if err != nil {
		t.Fatal(err)
	}
	logged := map[string][2]int{}
	for _, e := range entries {
		c := logged[e.GetGkid()]
		switch e.GetOutcome() {
		case cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED:
			c[0]++
		case cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED:
			c[1]++
		default:
			t.Fatalf("entry %d: outcome %v", e.GetSeq(), e.GetOutcome())
		}
		logged[e.GetGkid()] = c
	}
	for gkid, c := range seen {
		if logged[gkid] != c {
			t.Errorf("%s: callers saw %d granted and %d refused, the log says %d and %d", gkid, c[0], c[1], logged[gkid][0], logged[gkid][1])
		}
	}
	if len(entries) != perNode*len(tc.nodes) {
		t.Errorf("%d entries for %d gets", len(entries), perNode*len(tc.nodes))
	}
	// Every entry went through a round on its own node (and followers'
	// again on the leader): coffer_audit_round_entries counts them.
	if got := roundEntries() - entriesBefore; got < float64(perNode*len(tc.nodes)) {
		t.Errorf("coffer_audit_round_entries grew by %v for %d audited gets", got, perNode*len(tc.nodes))
	}
}
