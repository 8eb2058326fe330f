package node

import (
	"fmt"
	"log/slog"
	"testing"

	"google.golang.org/grpc/codes"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// A read refused in Apply must reach the caller, and the log, with the same
// words as one this node refuses itself: the entry Apply writes and the
// error the caller gets are built in two places.
func TestReadRefusalMatchesApplyReason(t *testing.T) {
	n := &Node{logger: slog.New(slog.DiscardHandler)}
	for r := range cofferv1.ReadRefusal_name {
		refusal := cofferv1.ReadRefusal(r)
		if refusal == cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED {
			continue
		}
		err := n.readRefusal(authz.OpGet, "k", fsm.ReadResult{Refusal: refusal, Detail: "some detail"})
		if err == nil {
			t.Fatalf("%v: no error", refusal)
		}
		e := &cofferv1.AuditEntry{}
		setOutcome(e, err)
		if want := fsm.RefusalReason(refusal, "some detail"); e.GetReason() != want {
			t.Errorf("%v: the node records %q, Apply records %q", refusal, e.GetReason(), want)
		}
	}
}

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
	if _, err := admin.access[l].RegisterClient(ctx, &cofferv1.RegisterClientRequest{Name: "carol", Roles: []string{"application"}}); err != nil {
		t.Fatal(err)
	}
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
