package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// cacheClients is a CacheService client per node for one identity.
func (tc *testCluster) cacheClients(name string) []cofferv1.CacheServiceClient {
	tc.t.Helper()
	conf := tc.issue(transport.Identity{Kind: transport.KindClient, Name: name})
	var out []cofferv1.CacheServiceClient
	for i := range tc.cfgs {
		out = append(out, cofferv1.NewCacheServiceClient(tc.dialAs(conf, i)))
	}
	return out
}

func clientCachePolicy(ttl time.Duration, entries uint32, ops ...string) *cofferv1.ClientCachePolicy {
	return &cofferv1.ClientCachePolicy{Ttl: durationpb.New(ttl), MaxEntries: entries, AllowedOperations: ops}
}

// TestNode_CachePolicy sets, reads and clears the default and a client's own
// policy through a follower, refuses bad input and non-officers with clear
// codes, and raises the cache generation on every node.
func TestNode_CachePolicy(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	tc.mustRegisterApp(admin, f, "bob")
	adminCache, bobCache := tc.cacheClients("app"), tc.cacheClients("bob")

	// Nothing set: the built-in default.
	got, err := bobCache[f].GetCachePolicy(ctx, &cofferv1.GetCachePolicyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if p := got.GetPolicy(); got.GetClient() != "bob" || p.GetSource() != "default" || p.GetRevision() != 0 || p.GetTtl().AsDuration() != 5*time.Minute ||
		p.GetMaxEntries() != 1000 || strings.Join(p.GetAllowedOperations(), ",") != "get" || p.GetPersist() || p.GetGeneration() != 0 {
		t.Fatalf("built-in default: %v", got)
	}

	// The default, set through a follower.
	set, err := adminCache[f].SetCachePolicy(ctx, &cofferv1.SetCachePolicyRequest{Policy: clientCachePolicy(time.Minute, 50, "get", "decrypt")})
	if err != nil {
		t.Fatal(err)
	}
	if p := set.GetPolicy(); p.GetSource() != "default" || p.GetRevision() != 1 || p.GetTtl().AsDuration() != time.Minute {
		t.Fatalf("set default answered %v", p)
	}
	got, err = bobCache[l].GetCachePolicy(ctx, &cofferv1.GetCachePolicyRequest{})
	if err != nil || got.GetPolicy().GetRevision() != 1 || got.GetPolicy().GetMaxEntries() != 50 {
		t.Fatalf("bob after the default: %v, %v", got, err)
	}

	// bob's own policy wins; the admin still has the default.
	set, err = adminCache[f].SetCachePolicy(ctx, &cofferv1.SetCachePolicyRequest{Client: "bob", Policy: clientCachePolicy(10*time.Second, 5, "encrypt")})
	if err != nil {
		t.Fatal(err)
	}
	if p := set.GetPolicy(); p.GetSource() != "client" || p.GetTtl().AsDuration() != 10*time.Second || p.GetRevision() == 0 {
		t.Fatalf("set bob's answered %v", p)
	}
	for i := range tc.nodes {
		got, err = bobCache[i].GetCachePolicy(ctx, &cofferv1.GetCachePolicyRequest{})
		if err != nil || got.GetPolicy().GetSource() != "client" || got.GetPolicy().GetMaxEntries() != 5 {
			t.Fatalf("bob's own on node %d: %v, %v", i, got, err)
		}
	}
	if got, err := adminCache[f].GetCachePolicy(ctx, &cofferv1.GetCachePolicyRequest{Consistency: cofferv1.Consistency_CONSISTENCY_STALE}); err != nil || got.GetPolicy().GetSource() != "default" {
		t.Fatalf("admin's: %v, %v", got, err)
	}
	// The record's integrity tag was made again: bob is still admitted,
	// and an update of his groups keeps his policy.
	if _, err := admin.access[f].RegisterClient(ctx, &cofferv1.RegisterClientRequest{Name: "bob", Groups: []string{"g1"}, Roles: []string{"application"}, Update: true}); err != nil {
		t.Fatal(err)
	}
	if got, err := bobCache[f].GetCachePolicy(ctx, &cofferv1.GetCachePolicyRequest{}); err != nil || got.GetPolicy().GetSource() != "client" {
		t.Fatalf("bob's after an update of his groups: %v, %v", got, err)
	}

	// Cleared: the default again.
	set, err = adminCache[l].SetCachePolicy(ctx, &cofferv1.SetCachePolicyRequest{Client: "bob", Clear: true})
	if err != nil || set.GetPolicy().GetSource() != "default" || set.GetPolicy().GetRevision() != 1 {
		t.Fatalf("clear bob's: %v, %v", set, err)
	}

	// Refusals.
	long := clientCachePolicy(48*time.Hour, 1, "get")
	for _, c := range []struct {
		req  *cofferv1.SetCachePolicyRequest
		code codes.Code
		want string
	}{
		{&cofferv1.SetCachePolicyRequest{Policy: long}, codes.InvalidArgument, "policy.ttl"},
		{&cofferv1.SetCachePolicyRequest{Policy: clientCachePolicy(-time.Second, 1, "get")}, codes.InvalidArgument, "policy.ttl"},
		{&cofferv1.SetCachePolicyRequest{Policy: clientCachePolicy(time.Minute, 1<<30, "get")}, codes.InvalidArgument, "policy.max_entries"},
		{&cofferv1.SetCachePolicyRequest{Policy: clientCachePolicy(time.Minute, 1, "sign")}, codes.InvalidArgument, "policy.allowed_operations"},
		{&cofferv1.SetCachePolicyRequest{Policy: &cofferv1.ClientCachePolicy{Source: "client"}}, codes.InvalidArgument, "policy.source"},
		{&cofferv1.SetCachePolicyRequest{Policy: &cofferv1.ClientCachePolicy{Generation: 3}}, codes.InvalidArgument, "policy.generation"},
		{&cofferv1.SetCachePolicyRequest{Policy: &cofferv1.ClientCachePolicy{Revision: 3}}, codes.InvalidArgument, "policy.revision"},
		{&cofferv1.SetCachePolicyRequest{Client: "bob", Clear: true, Policy: clientCachePolicy(time.Minute, 1)}, codes.InvalidArgument, "exclusive"},
		{&cofferv1.SetCachePolicyRequest{Client: "bob"}, codes.InvalidArgument, "policy is required"},
		{&cofferv1.SetCachePolicyRequest{Client: "bad name", Clear: true}, codes.InvalidArgument, "client"},
		{&cofferv1.SetCachePolicyRequest{Client: "ghost", Policy: clientCachePolicy(time.Minute, 1)}, codes.NotFound, "ghost"},
	} {
		for _, i := range []int{l, f} {
			_, err := adminCache[i].SetCachePolicy(ctx, c.req)
			wantCode(t, "set "+c.want, err, c.code, c.want)
		}
	}
	_, err = bobCache[f].SetCachePolicy(ctx, &cofferv1.SetCachePolicyRequest{Client: "bob", Policy: clientCachePolicy(time.Hour, 1, "get")})
	wantCode(t, "bob sets his own", err, codes.PermissionDenied, "cache.manage")
	_, err = bobCache[f].FlushCaches(ctx, &cofferv1.FlushCachesRequest{Reason: "because"})
	wantCode(t, "bob flushes", err, codes.PermissionDenied, "cache.flush")
	_, err = adminCache[f].FlushCaches(ctx, &cofferv1.FlushCachesRequest{Reason: "bad\x00reason"})
	wantCode(t, "control character", err, codes.InvalidArgument, "reason")

	// Flush through a follower: every node has the new generation.
	fl, err := adminCache[f].FlushCaches(ctx, &cofferv1.FlushCachesRequest{Reason: "incident 42"})
	if err != nil || fl.GetGeneration() != 1 {
		t.Fatalf("flush: %v, %v", fl, err)
	}
	idx := tc.nodes[l].FSM().AppliedIndex()
	for i, n := range tc.nodes {
		tc.waitApplied(i, idx)
		if g, err := n.FSM().CacheGeneration(); err != nil || g != 1 {
			t.Fatalf("node %d: generation %d, %v", i, g, err)
		}
	}
	if got, err := bobCache[f].GetCachePolicy(ctx, &cofferv1.GetCachePolicyRequest{}); err != nil || got.GetPolicy().GetGeneration() != 1 {
		t.Fatalf("bob after the flush: %v, %v", got, err)
	}

	// One entry per change, saying what it changed.
	reasons := map[string]bool{}
	for _, op := range []string{"cache.manage", "cache.flush"} {
		es, _, err := tc.nodes[l].FSM().AuditEntries(0, 1000, fsm.AuditFilter{Operation: op})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.GetOutcome() == cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
				reasons[e.GetReason()] = true
			}
		}
	}
	for _, want := range []string{
		"set cache policy of the cluster default: ttl 1m0s; max_entries 50; max_uses none; allowed_operations [get,decrypt]; persist false",
		"set cache policy of client bob: ttl 10s; max_entries 5; max_uses none; allowed_operations [encrypt]; persist false",
		"cleared cache policy of client bob: the cluster default applies",
		"ordered every client to drop its key cache: incident 42",
	} {
		if !reasons[want] {
			t.Errorf("no granted entry says %q; have %v", want, reasons)
		}
	}
}

// watchEvents reads a Watch stream into a channel until it ends.
type watchEvents struct {
	t      *testing.T
	events chan *cofferv1.CacheEvent
	ended  chan error
}

func startWatch(t *testing.T, ctx context.Context, c cofferv1.CacheServiceClient, after uint64) *watchEvents {
	t.Helper()
	stream, err := c.Watch(ctx, &cofferv1.WatchCacheRequest{AfterSeq: after})
	if err != nil {
		t.Fatal(err)
	}
	w := &watchEvents{t: t, events: make(chan *cofferv1.CacheEvent, 100), ended: make(chan error, 1)}
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				w.ended <- err
				return
			}
			w.events <- ev
		}
	}()
	return w
}

// next returns the next event, failing after 10 s.
func (w *watchEvents) next() *cofferv1.CacheEvent {
	w.t.Helper()
	select {
	case ev := <-w.events:
		return ev
	case err := <-w.ended:
		w.t.Fatalf("watch ended: %v", err)
	case <-time.After(10 * time.Second):
		w.t.Fatal("no event within 10s")
	}
	return nil
}

// waitGauge waits until the open watch streams gauge reads n.
func waitGauge(t *testing.T, n float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(metricCacheWatchStreams) != n {
		if time.Now().After(deadline) {
			t.Fatalf("coffer_cache_watch_streams is %v, want %v", testutil.ToFloat64(metricCacheWatchStreams), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNode_CacheWatch watches bob's invalidations on a follower: drop_key
// for a key he may get that is deactivated (not for one he may not), his
// policy when his own or the default changes, drop_all on a flush and on his deactivation, which ends the stream. A
// second stream resumes after a seq and gets the same events again; a
// caller that goes away ends its stream quietly, and a stopping node ends
// it with Unavailable.
func TestNode_CacheWatch(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	tc.mustRegisterApp(admin, l, "bob")
	tc.mustGrant(admin, l, "client:bob", "cache/**", "get")
	adminCache, bobCache := tc.cacheClients("app"), tc.cacheClients("bob")
	mine, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "cache/k"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "hr/k"})
	if err != nil {
		t.Fatal(err)
	}
	before := testutil.ToFloat64(metricCacheWatchStreams)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := startWatch(t, sctx, bobCache[f], 0)
	waitGauge(t, before+1)

	deactivate := func(gk string) {
		t.Helper()
		if _, err := admin.keys[l].SetKeyState(ctx, &cofferv1.SetKeyStateRequest{Gkid: gk, State: cofferv1.KeyState_KEY_STATE_DEACTIVATED}); err != nil {
			t.Fatal(err)
		}
	}
	deactivate(other.GetKey().GetGkid()) // not bob's to read: no event
	deactivate(mine.GetKey().GetGkid())
	ev := w.next()
	if ev.GetDropKey() != mine.GetKey().GetGkid() || ev.GetSeq() == 0 {
		t.Fatalf("first event %v, want drop_key %s", ev, mine.GetKey().GetGkid())
	}
	resumeAt := ev.GetSeq()

	if _, err := adminCache[l].SetCachePolicy(ctx, &cofferv1.SetCachePolicyRequest{Client: "bob", Policy: clientCachePolicy(time.Second, 3, "get")}); err != nil {
		t.Fatal(err)
	}
	ev = w.next()
	if p := ev.GetPolicy(); p.GetSource() != "client" || p.GetMaxEntries() != 3 || ev.GetSeq() <= resumeAt {
		t.Fatalf("policy event %v", ev)
	}
	if _, err := adminCache[f].FlushCaches(ctx, &cofferv1.FlushCachesRequest{Reason: "drill"}); err != nil {
		t.Fatal(err)
	}
	if ev = w.next(); !ev.GetDropAll() {
		t.Fatalf("after a flush: %v, want drop_all", ev)
	}
	// The default changes while bob has his own, then his is cleared: the
	// default's policy. (A watch that reads both entries after the clear
	// sends it for each: an event carries the policy in force when it is
	// sent.)
	if _, err := adminCache[l].SetCachePolicy(ctx, &cofferv1.SetCachePolicyRequest{Policy: clientCachePolicy(time.Minute, 7, "get")}); err != nil {
		t.Fatal(err)
	}
	if _, err := adminCache[l].SetCachePolicy(ctx, &cofferv1.SetCachePolicyRequest{Client: "bob", Clear: true}); err != nil {
		t.Fatal(err)
	}
	if ev = w.next(); ev.GetPolicy().GetSource() != "default" || ev.GetPolicy().GetMaxEntries() != 7 {
		t.Fatalf("after the clear: %v, want the default's policy", ev)
	}

	// Resuming after the drop_key's seq, on another node, sends the rest
	// again, in order.
	w2 := startWatch(t, sctx, bobCache[l], resumeAt)
	for _, want := range []string{"policy", "drop_all", "policy"} {
		ev := w2.next()
		var kind string
		switch {
		case ev.GetPolicy() != nil:
			kind = "policy"
		case ev.GetDropAll():
			kind = "drop_all"
		default:
			kind = "drop_key"
		}
		if kind != want || ev.GetSeq() <= resumeAt {
			t.Fatalf("resumed stream: %v, want %s after seq %d", ev, want, resumeAt)
		}
	}
	_, err = bobCache[f].Watch(ctx, &cofferv1.WatchCacheRequest{AfterSeq: 1 << 40})
	if err == nil {
		// The refusal comes with the first Recv.
		s, _ := bobCache[f].Watch(ctx, &cofferv1.WatchCacheRequest{AfterSeq: 1 << 40})
		_, err = s.Recv()
	}
	wantCode(t, "watch past the head", err, codes.InvalidArgument, "after_seq")

	// bob is deactivated: drop_all, and the stream ends.
	if _, err := admin.access[f].SetClientActive(ctx, &cofferv1.SetClientActiveRequest{Name: "bob", Active: false}); err != nil {
		t.Fatal(err)
	}
	for ev = w.next(); ev.GetPolicy() != nil; ev = w.next() {
	}
	if !ev.GetDropAll() {
		t.Fatalf("after deactivation: %v, want drop_all", ev)
	}
	select {
	case err := <-w.ended:
		wantCode(t, "watch of a deactivated client", err, codes.PermissionDenied, "deactivated")
	case <-time.After(10 * time.Second):
		t.Fatal("the stream of a deactivated client did not end")
	}
	if testutil.ToFloat64(metricCacheEvents.WithLabelValues("drop_key")) < 1 {
		t.Error("coffer_cache_events_total{event=drop_key} did not count")
	}

	// The admin's stream: the caller going away ends it quietly (the
	// gauge goes back); the node stopping ends it with Unavailable.
	cancel()
	waitGauge(t, before)
	w3 := startWatch(t, ctx, adminCache[f], 0)
	waitGauge(t, before+1)
	tc.stop(f)
	select {
	case err := <-w3.ended:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("watch on a stopping node ended with %v, want Unavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not end when its node stopped")
	}
}
