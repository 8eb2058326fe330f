package node

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/fsm"
)

// TestNode_RequestIDHeader sends requests that carry the coffer-request-id
// header: a key read and a list on a follower, and a Grant sent to a
// follower, which forwards it to the leader. Each has exactly one audit
// entry, and it carries the header's id; the Grant's is the entry the
// leader committed with the change, naming the follower that accepted it.
// A create's own request id wins over the header.
func TestNode_RequestIDHeader(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	start := tc.nodes[l].FSM().AuditHeadSeq()
	with := func(id string) context.Context { return metadata.AppendToOutgoingContext(ctx, RequestIDKey, id) }

	gen, err := admin.keys[f].GenerateKey(with("header-loses"), &cofferv1.GenerateKeyRequest{Resource: "rid/r", RequestId: "message-wins"})
	if err != nil {
		t.Fatal(err)
	}
	gk := gen.GetKey().GetGkid()
	if _, err := admin.keys[f].GetKey(with("get-1"), &cofferv1.GetKeyRequest{Gkid: gk}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.keys[f].ListKeys(with("list-1"), &cofferv1.ListKeysRequest{Resource: "rid/r"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.access[f].Grant(with("grant-1"), &cofferv1.GrantRequest{Subject: "group:rid", Operations: []string{"get"}, ResourcePattern: "rid/**"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.keys[l].DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: gk}); err != nil {
		t.Fatal(err)
	}

	entries, _, err := tc.nodes[l].FSM().AuditEntries(start, 1000, fsm.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string][]*cofferv1.AuditEntry{}
	for _, e := range entries {
		byID[e.GetRequestId()] = append(byID[e.GetRequestId()], e)
	}
	for _, w := range []struct{ id, op, gkid string }{
		{"message-wins", "generate", gk},
		{"get-1", "get", gk},
		{"list-1", "list", ""},
		{"grant-1", "acl.manage", ""},
	} {
		es := byID[w.id]
		if len(es) != 1 {
			t.Fatalf("request %s: %d entries, want 1: %v", w.id, len(es), es)
		}
		e := es[0]
		if e.GetOperation() != w.op || e.GetGkid() != w.gkid || e.GetNode() != tc.cfgs[f].ID ||
			e.GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
			t.Fatalf("request %s: entry %v, want a granted %s of %q accepted by %s", w.id, e, w.op, w.gkid, tc.cfgs[f].ID)
		}
	}
	if es := byID["header-loses"]; len(es) != 0 {
		t.Fatalf("the header's id replaced the message's own: %v", es)
	}
	var mine []*cofferv1.AuditEntry
	for _, e := range byID[""] {
		if e.GetCaller() == "client:app" {
			mine = append(mine, e)
		}
	}
	if len(mine) != 1 || mine[0].GetOperation() != "describe" {
		t.Fatalf("this test's entries without a request id: %v, want only the describe sent without a header", mine)
	}
}

// The header's value is made fit for an audit entry: control characters
// dropped, invalid UTF-8 replaced, clipped to the field limit; the first
// value counts.
func TestHeaderRequestID(t *testing.T) {
	for _, tc := range []struct {
		vals []string
		want string
	}{
		{nil, ""},
		{[]string{"req-1", "req-2"}, "req-1"},
		{[]string{"a\x01b\nc"}, "abc"},
		{[]string{"a\xffb"}, "a\uFFFDb"},
		{[]string{strings.Repeat("é", 600)}, strings.Repeat("é", 512)},
	} {
		md := metadata.MD{}
		for _, v := range tc.vals {
			md.Append(RequestIDKey, v)
		}
		if got := headerRequestID(metadata.NewIncomingContext(context.Background(), md)); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.vals, got, tc.want)
		}
	}
}
