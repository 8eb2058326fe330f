package node

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// TestNode_ForwardWithLostAnswerHasOneEntry forwards a write through a
// follower over the real internal channel: the leader commits the key with
// its entry. Then, as if the answer had been lost on the way back, the
// follower records the request's entry itself, as it does after any
// forward that failed without an answer. The log must still hold exactly
// one entry for the request: the leader's, also for a request named only
// by the caller's header. A request the leader never saw keeps the
// follower's entry.
func TestNode_ForwardWithLostAnswerHasOneEntry(t *testing.T) {
	// The forwards are made in process, without a client to sign them.
	tc := mustCluster(t, 3, func(c *Config) { c.AllowUnsignedRequests = true })
	ctx := ctxT(t)
	l, f := tc.waitLeader(), tc.follower()
	n := tc.nodes[f]
	c := caller{id: transport.Identity{Kind: transport.KindClient, Name: "app"}, serial: "1"}
	entry := func(requestID string) *request {
		return &request{caller: c, entry: &cofferv1.AuditEntry{TimeUnixNano: time.Now().UnixNano(), Node: n.cfg.ID,
			Caller: c.String(), Operation: "generate", RequestId: requestID}}
	}
	lost := func(r *request) {
		t.Helper()
		setOutcome(r.entry, status.Error(codes.Unavailable, "connection reset before the answer arrived"))
		if err := n.svc.commitRequestAudit(ctx, r); err != nil {
			t.Fatal(err)
		}
	}

	answered := entry("lost-answer-1")
	if _, err := n.forward(ctx, answered, &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_GenerateKey{
		GenerateKey: &cofferv1.GenerateKeyRequest{Resource: "fallback/1", RequestId: "lost-answer-1"}}}, true); err != nil {
		t.Fatal(err)
	}
	if !answered.carried || !answered.attempted {
		t.Fatalf("after the forward: carried=%v attempted=%v", answered.carried, answered.attempted)
	}
	lost(answered)
	unseen := entry("lost-answer-2")
	unseen.attempted = true
	lost(unseen)

	// The follower gave up first and its entry was linked; the leader
	// proposes the change only afterwards. The change is refused, so the
	// follower's failed entry stays the request's one, true entry.
	late := entry("lost-answer-3")
	late.attempted = true
	lost(late)
	_, err := n.forward(ctx, late, &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_GenerateKey{
		GenerateKey: &cofferv1.GenerateKeyRequest{Resource: "fallback/3", RequestId: "lost-answer-3"}}}, true)
	if status.Code(err) != codes.Aborted {
		t.Fatalf("a change proposed after its request's entry was linked: %v, want Aborted", err)
	}

	// A Grant carries no request id of its own: the id of the follower's
	// entry (from the caller's header) travels with the forward, so the
	// leader's entry and the follower's fallback name the same request.
	headed := entry("header-id-4")
	headed.entry.Operation = "acl.manage"
	if _, err := n.forward(ctx, headed, &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_Grant{
		Grant: &cofferv1.GrantRequest{Subject: "group:fallback", Operations: []string{"get"}, ResourcePattern: "fallback/**"}}}, true); err != nil {
		t.Fatal(err)
	}
	lost(headed)

	got := map[string][]*cofferv1.AuditEntry{}
	for _, op := range []string{"generate", "acl.manage"} {
		entries, _, err := tc.nodes[l].FSM().AuditEntries(0, 100000, fsm.AuditFilter{Operation: op})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			got[e.GetRequestId()] = append(got[e.GetRequestId()], e)
		}
	}
	if es := got["lost-answer-1"]; len(es) != 1 || es[0].GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED || es[0].GetNode() != n.cfg.ID {
		t.Fatalf("answered request: %v, want the leader's one granted entry naming %s", es, n.cfg.ID)
	}
	if es := got["lost-answer-2"]; len(es) != 1 || es[0].GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED {
		t.Fatalf("unseen request: %v, want the follower's failed entry", es)
	}
	if es := got["lost-answer-3"]; len(es) != 1 || es[0].GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED {
		t.Fatalf("request given up before the leader proposed it: %v, want the follower's one failed entry", es)
	}
	if es := got["header-id-4"]; len(es) != 1 || es[0].GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED || es[0].GetNode() != n.cfg.ID {
		t.Fatalf("answered grant named by the header: %v, want the leader's one granted entry", es)
	}
	keys, _, err := tc.nodes[l].FSM().ListKeys(fsm.ListFilter{Resource: "fallback/3"}, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Fatalf("the abandoned change was applied: %s", keys[0].GetGkid())
	}
}
