package node

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// TestNode_AuditLog sends a known set of requests (writes, reads, refusals,
// malformed input) to different nodes and checks that the replicated log
// holds exactly one entry per request with the right outcome, identical on
// every node, and that the exported chain verifies.
func TestNode_AuditLog(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	eve := tc.identity("eve")
	l, f := tc.waitLeader(), tc.follower()
	start := tc.nodes[l].FSM().AuditHeadSeq()

	gen, err := admin.keys[f].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "audit/r", RequestId: "req-audit-1"})
	if err != nil {
		t.Fatal(err)
	}
	gk := gen.GetKey().GetGkid()
	for i := range tc.nodes {
		if _, err := admin.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := admin.keys[l].DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: gk}); err != nil {
		t.Fatal(err)
	}
	_, _ = admin.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "malformed"})
	_, _ = eve.keys[f].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "audit/r"})
	_, _ = eve.keys[l].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk})
	_, _ = admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "audit/r", Policy: "missing"})

	want := []struct {
		op      string
		outcome cofferv1.AuditOutcome
		caller  string
	}{
		{"generate", cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, "client:app"},
		{"get", cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, "client:app"},
		{"get", cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, "client:app"},
		{"get", cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, "client:app"},
		{"describe", cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, "client:app"},
		{"get", cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, "client:app"},
		{"generate", cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED, "client:eve"},
		{"get", cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED, "client:eve"},
		{"generate", cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, "client:app"},
	}
	// Every entry is committed before its response: the leader has them all.
	entries, _, err := tc.nodes[l].FSM().AuditEntries(start, 1000, fsm.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		for _, e := range entries {
			t.Logf("%d %s %s %v %s", e.GetSeq(), e.GetCaller(), e.GetOperation(), e.GetOutcome(), e.GetReason())
		}
		t.Fatalf("%d audit entries for %d requests", len(entries), len(want))
	}
	for i, w := range want {
		e := entries[i]
		if e.GetOperation() != w.op || e.GetOutcome() != w.outcome || e.GetCaller() != w.caller {
			t.Errorf("entry %d: %s %s %v (%s), want %s %s %v", e.GetSeq(), e.GetCaller(), e.GetOperation(), e.GetOutcome(), e.GetReason(), w.caller, w.op, w.outcome)
		}
	}
	if e := entries[0]; e.GetGkid() != gk || e.GetResource() != "audit/r" || e.GetRequestId() != "req-audit-1" || e.GetNode() != tc.cfgs[f].ID {
		t.Errorf("generate entry lacks its target: %+v", e)
	}
	if e := entries[1]; e.GetGkid() != gk || e.GetResource() != "audit/r" || e.GetPolicy() != "default" {
		t.Errorf("get entry lacks its target: %+v", e)
	}
	if entries[6].GetReason() == "" {
		t.Error("denied entry has no reason")
	}
	// Refused or failed before anything was looked up, an entry still
	// names what was asked for.
	if e := entries[6]; e.GetResource() != "audit/r" {
		t.Errorf("refused generate does not name its resource: %+v", e)
	}
	if e := entries[8]; e.GetResource() != "audit/r" || e.GetPolicy() != "missing" {
		t.Errorf("failed generate does not name its resource and policy: %+v", e)
	}

	// Identical chain on every node, and it verifies.
	deadline := time.Now().Add(10 * time.Second)
	for i := range tc.nodes {
		for tc.nodes[i].FSM().AuditHeadSeq() < entries[len(entries)-1].GetSeq() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		var buf bytes.Buffer
		if err := tc.nodes[i].FSM().ExportAudit(0, &buf); err != nil {
			t.Fatal(err)
		}
		rep, err := audit.VerifyJSONL(&buf, tc.trustedKeys(), audit.DefaultVerifyOptions())
		if err != nil {
			t.Fatalf("node %d: chain does not verify: %v", i, err)
		}
		if rep.LastSeq < entries[len(entries)-1].GetSeq() {
			t.Fatalf("node %d: chain ends at %d", i, rep.LastSeq)
		}
	}
	// The generate entry holds an HMAC of the material, which Match tests.
	if len(entries[0].GetDetailHmac()) == 0 {
		t.Fatal("generate entry has no detail_hmac")
	}
	g, err := admin.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk})
	if err != nil {
		t.Fatal(err)
	}
	ac := cofferv1.NewAuditServiceClient(tc.connTo(f))
	if m, err := ac.Match(ctx, &cofferv1.AuditMatchRequest{Seq: entries[0].GetSeq(), Material: g.GetMaterial()}); err != nil || !m.GetMatch() {
		t.Fatalf("match with the real material: %v %v", m, err)
	}
	other := bytes.Clone(g.GetMaterial())
	other[0] ^= 1
	if m, err := ac.Match(ctx, &cofferv1.AuditMatchRequest{Seq: entries[0].GetSeq(), Material: other}); err != nil || m.GetMatch() {
		t.Fatalf("match with other material: %v %v", m, err)
	}
	if _, err := ac.Match(ctx, &cofferv1.AuditMatchRequest{Seq: entries[1].GetSeq(), Material: other}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("match on a get entry: %v", err)
	}
	if _, err := cofferv1.NewAuditServiceClient(tc.connTo(l)).Match(ctx, &cofferv1.AuditMatchRequest{Seq: 1 << 40, Material: other}); status.Code(err) != codes.NotFound {
		t.Fatalf("match on a missing entry: %v", err)
	}

	// No key material in any entry.
	m, _ := admin.keys[l].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk})
	var all bytes.Buffer
	_ = tc.nodes[l].FSM().ExportAudit(0, &all)
	if bytes.Contains(all.Bytes(), m.GetMaterial()) {
		t.Fatal("audit log holds key material")
	}
}

// TestAuditOpNames checks that every method of every public service records
// its entries under an operation of the authorisation catalogue, not under
// its bare method name.
func TestAuditOpNames(t *testing.T) {
	for _, sd := range []grpc.ServiceDesc{cofferv1.KeyService_ServiceDesc, cofferv1.PolicyService_ServiceDesc,
		cofferv1.ClusterService_ServiceDesc, cofferv1.AccessService_ServiceDesc, cofferv1.AuditService_ServiceDesc, cofferv1.CacheService_ServiceDesc} {
		var names []string
		for _, m := range sd.Methods {
			names = append(names, m.MethodName)
		}
		for _, s := range sd.Streams {
			names = append(names, s.StreamName)
		}
		for _, name := range names {
			op, ok := opNames[name]
			if !ok {
				t.Errorf("%s/%s has no audit operation name", sd.ServiceName, name)
				continue
			}
			if _, err := authz.ParseOp(op); err != nil {
				t.Errorf("%s/%s is recorded as %q, which is not in the catalogue: %v", sd.ServiceName, name, op, err)
			}
		}
	}
}

// TestNode_AuditFollow: a Follow stream through a follower is one request
// with one entry, delivers every later entry once and in order as it is
// applied, and ends with Unavailable (not a hang) when its node stops. A
// caller without audit.read is refused, and the refusal is recorded.
func TestNode_AuditFollow(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	tc.mustGenerate(l, "follow", "before")
	start := tc.nodes[l].FSM().AuditHeadSeq()
	for tc.nodes[f].FSM().AuditHeadSeq() < start {
		if ctx.Err() != nil {
			t.Fatal("follower did not catch up")
		}
		time.Sleep(5 * time.Millisecond)
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := admin.audit[f].Follow(sctx, &cofferv1.AuditFollowRequest{AfterSeq: start})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *cofferv1.AuditEntry, 100)
	ended := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				ended <- err
				return
			}
			for _, e := range m.GetEntries() {
				got <- e
			}
		}
	}()
	// The stream's own entry is committed before it sends anything, so it
	// comes first; then the keys generated from here on.
	var seen []*cofferv1.AuditEntry
	select {
	case e := <-got:
		seen = append(seen, e)
	case err := <-ended:
		t.Fatalf("stream ended: %v", err)
	case <-ctx.Done():
		t.Fatal("the stream sent nothing")
	}
	if n := testutil.ToFloat64(metricFollowStreams); n != 1 {
		t.Fatalf("coffer_audit_follow_streams is %v with one stream open", n)
	}
	var want []string
	for i := 0; i < 3; i++ {
		want = append(want, tc.mustGenerate(l, "follow", fmt.Sprintf("req-%d", i)).GetGkid())
	}
	for len(seen) < 4 {
		select {
		case e := <-got:
			seen = append(seen, e)
		case err := <-ended:
			t.Fatalf("stream ended after %d entries: %v", len(seen), err)
		case <-ctx.Done():
			t.Fatalf("only %d entries arrived", len(seen))
		}
	}
	for i, e := range seen {
		if e.GetSeq() != start+uint64(i)+1 {
			t.Fatalf("entry %d has seq %d, want %d", i, e.GetSeq(), start+uint64(i)+1)
		}
	}
	if e := seen[0]; e.GetOperation() != "audit.read" || e.GetCaller() != "client:app" || e.GetNode() != tc.cfgs[f].ID ||
		e.GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
		t.Fatalf("the stream's own entry: %+v", e)
	}
	for i, gk := range want {
		if e := seen[i+1]; e.GetOperation() != "generate" || e.GetGkid() != gk {
			t.Fatalf("entry %d: %s %s, want generate %s", i+1, e.GetOperation(), e.GetGkid(), gk)
		}
	}

	// From the newest: the 2 entries before the stream's own, then its own.
	head := tc.nodes[l].FSM().AuditHeadSeq()
	s3, err := admin.audit[l].Follow(sctx, &cofferv1.AuditFollowRequest{FromNewest: true, Newest: 2})
	if err != nil {
		t.Fatal(err)
	}
	var tail []*cofferv1.AuditEntry
	for len(tail) < 3 {
		m, err := s3.Recv()
		if err != nil {
			t.Fatalf("newest stream: %v", err)
		}
		tail = append(tail, m.GetEntries()...)
	}
	if tail[0].GetSeq() != head-1 || tail[1].GetSeq() != head || tail[2].GetSeq() != head+1 || tail[2].GetOperation() != "audit.read" {
		t.Fatalf("newest 2 then its own: seqs %d %d %d (%s), head was %d", tail[0].GetSeq(), tail[1].GetSeq(), tail[2].GetSeq(), tail[2].GetOperation(), head)
	}
	bad, err := admin.audit[l].Follow(ctx, &cofferv1.AuditFollowRequest{FromNewest: true, Newest: 1001})
	if err == nil {
		_, err = bad.Recv()
	}
	wantCode(t, "newest above the page size", err, codes.InvalidArgument, "newest")
	// Filtered, newest counts matches: the three generates, although
	// streams' own entries came after them.
	s4, err := admin.audit[l].Follow(sctx, &cofferv1.AuditFollowRequest{FromNewest: true, Newest: 3, Operation: "generate"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s4.Recv()
	if err != nil {
		t.Fatalf("filtered newest stream: %v", err)
	}
	if got := gkidsOf(m.GetEntries()); !slices.Equal(got, want) {
		t.Fatalf("filtered newest stream began with %v, want the generates %v", got, want)
	}
	q, err := admin.audit[l].Query(ctx, &cofferv1.AuditQueryRequest{Newest: 2, Operation: "generate", AfterSeq: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := gkidsOf(q.GetEntries()); !slices.Equal(got, want[1:]) || q.GetLastSeq() != q.GetHeadSeq() || q.GetHeadSeq() <= head {
		t.Fatalf("query of the newest 2 generates: %v (last %d, head %d), want %v", got, q.GetLastSeq(), q.GetHeadSeq(), want[1:])
	}
	_, err = admin.audit[l].Query(ctx, &cofferv1.AuditQueryRequest{Newest: 1001})
	wantCode(t, "query of more than a page of the newest", err, codes.InvalidArgument, "newest")

	tc.stop(f)
	select {
	case err := <-ended:
		wantCode(t, "stream of a stopped node", err, codes.Unavailable, "")
	case <-ctx.Done():
		t.Fatal("the stream did not end when its node stopped")
	}
	// s3 and s4 are still open on the leader; the ended stream was counted.
	if n := testutil.ToFloat64(metricFollowStreams); n != 2 {
		t.Fatalf("coffer_audit_follow_streams is %v after one of three streams ended", n)
	}
	if n := testutil.ToFloat64(metricRequests.WithLabelValues("Follow", "Unavailable")); n < 1 {
		t.Fatalf("coffer_requests_total{method=Follow,code=Unavailable} is %v after a stream ended that way", n)
	}

	tc.mustRegisterApp(admin, l, "nosy")
	nosy := tc.identity("nosy")
	// A stream of refusals only: it sends nosy's refused follow below, not
	// its own (granted) entry nor the registration.
	denials, err := admin.audit[l].Follow(ctx, &cofferv1.AuditFollowRequest{AfterSeq: tc.nodes[l].FSM().AuditHeadSeq(), Outcome: "denied"})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := nosy.audit[l].Follow(ctx, &cofferv1.AuditFollowRequest{})
	if err == nil {
		_, err = s2.Recv()
	}
	wantCode(t, "follow without audit.read", err, codes.PermissionDenied, "audit.read")
	q, err = admin.audit[l].Query(ctx, &cofferv1.AuditQueryRequest{Caller: "client:nosy", Operation: "audit.read", Outcome: "denied",
		Consistency: cofferv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil {
		t.Fatal(err)
	}
	if len(q.GetEntries()) != 1 {
		t.Fatalf("%d denied audit.read entries for nosy, want 1", len(q.GetEntries()))
	}
	m, err = denials.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.GetEntries()) != 1 || m.GetEntries()[0].GetSeq() != q.GetEntries()[0].GetSeq() {
		t.Fatalf("the denied-only stream sent %v, want nosy's refusal at seq %d", m.GetEntries(), q.GetEntries()[0].GetSeq())
	}
	bad, err = admin.audit[l].Follow(ctx, &cofferv1.AuditFollowRequest{Outcome: "maybe"})
	if err == nil {
		_, err = bad.Recv()
	}
	wantCode(t, "follow with an unknown outcome", err, codes.InvalidArgument, "outcome")
}

// TestNode_AuditedStreamsHaveOneEntry: a stream's entry is committed before
// it sends anything; a caller that goes away in the middle of an export
// leaves that one entry, not a second one saying it failed.
func TestNode_AuditedStreamsHaveOneEntry(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l := tc.waitLeader()
	gk := tc.mustGenerate(l, "streams", "").GetGkid()
	// Enough entries for an export of several chunks.
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 150; i++ {
				if _, err := admin.keys[l].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	ended := func() float64 {
		var n float64
		for _, code := range []codes.Code{codes.OK, codes.Canceled, codes.Unavailable, codes.Unknown} {
			n += testutil.ToFloat64(metricRequests.WithLabelValues("Export", code.String()))
		}
		return n
	}
	before := ended()
	sctx, cancel := context.WithCancel(ctx)
	stream, err := cofferv1.NewAuditServiceClient(tc.connTo(l)).Export(sctx, &cofferv1.AuditExportRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	for ended() == before {
		if ctx.Err() != nil {
			t.Fatal("the export's handler did not end after its caller went away")
		}
		time.Sleep(10 * time.Millisecond)
	}
	q, err := admin.audit[l].Query(ctx, &cofferv1.AuditQueryRequest{Operation: "audit.export", Limit: 1000,
		Consistency: cofferv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil {
		t.Fatal(err)
	}
	if len(q.GetEntries()) != 1 || q.GetEntries()[0].GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
		t.Fatalf("an export abandoned by its caller has %d entries, want its one granted entry: %v", len(q.GetEntries()), q.GetEntries())
	}
}

func gkidsOf(entries []*cofferv1.AuditEntry) []string {
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.GetGkid())
	}
	return out
}
