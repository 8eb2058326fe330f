package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
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

// TestNode_RefusedAndMalformedRequestsAudited: a request with an unknown
// enum value is refused with InvalidArgument and still leaves its one audit
// entry, whoever sends it; a revoked certificate is refused as
// Unauthenticated before the request itself is looked at, and audited too.
func TestNode_RefusedAndMalformedRequestsAudited(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	l, f := tc.waitLeader(), tc.follower()
	admin := tc.identity("app")
	eve := tc.ungrantedClient(admin, l, "eve")
	key := tc.mustGenerate(l, "audited/1", "")
	with := func(id string) context.Context { return metadata.AppendToOutgoingContext(ctx, RequestIDKey, id) }

	_, err := admin.keys[f].GetKey(with("bad-enum-1"), &cofferv1.GetKeyRequest{Gkid: key.GetGkid(), Consistency: 99})
	wantCode(t, "admin get, consistency 99", err, codes.InvalidArgument, "consistency")
	_, err = admin.keys[l].ListKeys(with("bad-enum-2"), &cofferv1.ListKeysRequest{Consistency: 99})
	wantCode(t, "admin list, consistency 99", err, codes.InvalidArgument, "consistency")
	_, err = eve.keys[f].GetKey(with("bad-enum-3"), &cofferv1.GetKeyRequest{Gkid: key.GetGkid(), Consistency: 99})
	wantCode(t, "ungranted get, consistency 99", err, codes.InvalidArgument, "consistency")
	if _, err := admin.access[l].RevokeCertificate(ctx, &cofferv1.RevokeCertificateRequest{Serial: eve.serial, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	_, err = eve.keys[l].GetKey(with("revoked-4"), &cofferv1.GetKeyRequest{Gkid: key.GetGkid(), Consistency: 99})
	wantCode(t, "revoked certificate, consistency 99", err, codes.Unauthenticated, "revoked")

	byID := tc.entriesByRequestID(l, fsm.AuditFilter{})
	for id, want := range map[string]struct {
		outcome cofferv1.AuditOutcome
		reason  string
	}{
		"bad-enum-1": {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, "InvalidArgument"},
		"bad-enum-2": {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, "InvalidArgument"},
		"bad-enum-3": {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, "InvalidArgument"},
		"revoked-4":  {cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED, "Unauthenticated"},
	} {
		es := byID[id]
		if len(es) != 1 {
			t.Errorf("%s: %d audit entries, want 1", id, len(es))
			continue
		}
		if es[0].GetOutcome() != want.outcome || !strings.HasPrefix(es[0].GetReason(), want.reason) {
			t.Errorf("%s: entry %v %q, want %v %s...", id, es[0].GetOutcome(), es[0].GetReason(), want.outcome, want.reason)
		}
	}
}

// TestNode_RefusedInternalCallAudited: a client calling the node-to-node
// API is refused and the refusal is audited.
func TestNode_RefusedInternalCallAudited(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	l, f := tc.waitLeader(), tc.follower()
	_, err := cofferv1.NewInternalServiceClient(tc.conn(f)).ReadIndex(ctx, &cofferv1.ReadIndexRequest{})
	wantCode(t, "a client calling ReadIndex", err, codes.PermissionDenied, "")
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, _, err := tc.nodes[l].FSM().AuditEntries(0, 100000, fsm.AuditFilter{Caller: "client:app"})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.GetOutcome() == cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED && strings.Contains(e.GetOperation(), "read") {
				return
			}
		}
		if time.Now().After(deadline) {
			for _, e := range entries {
				t.Logf("%s %v %s", e.GetOperation(), e.GetOutcome(), e.GetReason())
			}
			t.Fatal("no audit entry for the refused internal call")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// entriesByRequestID returns node i's audit entries matching flt, by
// request id.
func (tc *testCluster) entriesByRequestID(i int, flt fsm.AuditFilter) map[string][]*cofferv1.AuditEntry {
	tc.t.Helper()
	entries, _, err := tc.nodes[i].FSM().AuditEntries(0, 100000, flt)
	if err != nil {
		tc.t.Fatal(err)
	}
	byID := map[string][]*cofferv1.AuditEntry{}
	for _, e := range entries {
		byID[e.GetRequestId()] = append(byID[e.GetRequestId()], e)
	}
	return byID
}

// ungrantedClient has admin register an application client called name,
// with no grants, through node i, and returns its identity.
func (tc *testCluster) ungrantedClient(admin *identity, i int, name string) *identity {
	tc.t.Helper()
	tc.mustRegisterApp(admin, i, name)
	return tc.identity(name)
}
