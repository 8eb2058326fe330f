package main

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// cacheNode is an in-memory CacheService: it records the requests it gets
// and answers from a fixed policy; Watch sends events and then waits for
// the caller to go away.
type cacheNode struct {
	cofferv1.UnimplementedCacheServiceServer
	mu      sync.Mutex
	sets    []*cofferv1.SetCachePolicyRequest
	flushes []*cofferv1.FlushCachesRequest
	watches []*cofferv1.WatchCacheRequest
	events  []*cofferv1.CacheEvent
	// dropOnce ends the next stream with Unavailable after its first
	// event.
	dropOnce bool
}

var testPolicy = &cofferv1.ClientCachePolicy{Ttl: durationpb.New(5 * time.Minute), MaxEntries: 1000, AllowedOperations: []string{"get"},
	Source: "default", Generation: 2, Revision: 1}

func (n *cacheNode) GetCachePolicy(context.Context, *cofferv1.GetCachePolicyRequest) (*cofferv1.GetCachePolicyResponse, error) {
	return &cofferv1.GetCachePolicyResponse{Client: "cli", Policy: testPolicy}, nil
}

func (n *cacheNode) SetCachePolicy(_ context.Context, req *cofferv1.SetCachePolicyRequest) (*cofferv1.SetCachePolicyResponse, error) {
	n.mu.Lock()
	n.sets = append(n.sets, req)
	n.mu.Unlock()
	if req.GetClear() {
		return &cofferv1.SetCachePolicyResponse{Policy: testPolicy}, nil
	}
	p := proto.CloneOf(req.GetPolicy())
	p.Source, p.Revision = "client", 4
	return &cofferv1.SetCachePolicyResponse{Policy: p}, nil
}

func (n *cacheNode) FlushCaches(_ context.Context, req *cofferv1.FlushCachesRequest) (*cofferv1.FlushCachesResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.flushes = append(n.flushes, req)
	if req.GetReason() == "refuse" {
		return nil, status.Error(codes.PermissionDenied, "client cli has no grant for cache.flush")
	}
	return &cofferv1.FlushCachesResponse{Generation: 3}, nil
}

func (n *cacheNode) Watch(req *cofferv1.WatchCacheRequest, stream cofferv1.CacheService_WatchServer) error {
	n.mu.Lock()
	n.watches = append(n.watches, req)
	events, drop := n.events, n.dropOnce
	n.dropOnce = false
	n.mu.Unlock()
	for _, ev := range events {
		if ev.GetSeq() <= req.GetAfterSeq() {
			continue
		}
		if err := stream.Send(ev); err != nil {
			return err
		}
		if drop {
			return status.Error(codes.Unavailable, "node going away")
		}
	}
	<-stream.Context().Done()
	return nil
}

func mustCacheNode(t *testing.T) (*cacheNode, envMap) {
	t.Helper()
	pki := newTestPKI(t, "cache-test-ca")
	serverTLS, err := pki.issue(transport.Identity{Kind: transport.KindNode, Name: "n1"}).ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &cacheNode{}
	gs := grpc.NewServer(testenv.ServerOptions(t, serverTLS)...)
	cofferv1.RegisterCacheServiceServer(gs, n)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cli := pki.issue(transport.Identity{Kind: transport.KindClient, Name: "cli"})
	return n, envMap{envAddr: lis.Addr().String(), envCA: pki.caFile, envCert: cli.CertFile, envKey: cli.KeyFile}
}

func TestCLI_CachePolicy(t *testing.T) {
	n, env := mustCacheNode(t)
	out := mustRun(t, env, "cache", "policy", "get")
	for _, want := range []string{"client:", "cli", "default (revision 1)", "5m0s", "allowed operations:", "get", "generation:", "2"} {
		if !strings.Contains(out, want) {
			t.Fatalf("policy get lacks %q:\n%s", want, out)
		}
	}
	out = mustRun(t, env, "-o", "json", "cache", "policy", "get")
	if !strings.Contains(out, `"source": "default"`) || !strings.Contains(out, `"client": "cli"`) {
		t.Fatalf("policy get -o json:\n%s", out)
	}

	out = mustRun(t, env, "cache", "policy", "set", "--client", "app", "--ttl", "1h", "--max-entries", "50", "--max-uses", "7", "--allow", "get,decrypt", "--persist")
	if !strings.Contains(out, "client (revision 4)") || !strings.Contains(out, "1h0m0s") || !strings.Contains(out, "get,decrypt") {
		t.Fatalf("policy set:\n%s", out)
	}
	mustRun(t, env, "cache", "policy", "set", "--ttl", "0s")
	mustRun(t, env, "cache", "policy", "clear", "--client", "app")
	mustRun(t, env, "cache", "policy", "clear", "--default")
	n.mu.Lock()
	sets := n.sets
	n.mu.Unlock()
	if len(sets) != 4 {
		t.Fatalf("%d set requests, want 4", len(sets))
	}
	want := &cofferv1.SetCachePolicyRequest{Client: "app", Policy: &cofferv1.ClientCachePolicy{Ttl: durationpb.New(time.Hour), MaxEntries: 50, MaxUses: 7,
		AllowedOperations: []string{"get", "decrypt"}, Persist: true}}
	if !proto.Equal(sets[0], want) {
		t.Errorf("set sent %v, want %v", sets[0], want)
	}
	if p := sets[1].GetPolicy(); sets[1].GetClient() != "" || p.GetTtl().AsDuration() != 0 || p.GetMaxEntries() != 1000 || strings.Join(p.GetAllowedOperations(), ",") != "get" {
		t.Errorf("set with defaults sent %v", sets[1])
	}
	if !sets[2].GetClear() || sets[2].GetClient() != "app" || sets[2].GetPolicy() != nil || !sets[3].GetClear() || sets[3].GetClient() != "" {
		t.Errorf("clears sent %v and %v", sets[2], sets[3])
	}

	// Usage errors are caught before any request.
	for _, args := range [][]string{
		{"cache", "policy", "set", "--client", "app"},
		{"cache", "policy", "clear"},
		{"cache", "policy", "clear", "--client", "app", "--default"},
		{"cache", "flush"},
	} {
		if code, _, errOut := runCLI(t, env, args...); code != exitUsage {
			t.Errorf("%v: exit %d (%s), want %d", args, code, errOut, exitUsage)
		}
	}
	n.mu.Lock()
	if len(n.sets) != 4 || len(n.flushes) != 0 {
		t.Errorf("usage errors sent requests: %d sets, %d flushes", len(n.sets), len(n.flushes))
	}
	n.mu.Unlock()

	out = mustRun(t, env, "cache", "flush", "--reason", "incident 42")
	if !strings.Contains(out, "cache generation is now 3") {
		t.Fatalf("flush:\n%s", out)
	}
	if code, _, errOut := runCLI(t, env, "cache", "flush", "--reason", "refuse"); code == exitOK || !strings.Contains(errOut, "cache.flush") {
		t.Fatalf("refused flush: exit %d, %q", code, errOut)
	}
	n.mu.Lock()
	if n.flushes[0].GetReason() != "incident 42" {
		t.Errorf("flush sent %v", n.flushes[0])
	}
	n.mu.Unlock()
}

// watchCLI runs cache watch until out holds mark, then interrupts it, which
// must end it with status 0.
func watchCLI(t *testing.T, env envMap, args []string, mark string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &testenv.Buffer{}
	var errOut testenv.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, args, streams{in: strings.NewReader(""), out: w, err: &errOut}, env.get)
	}()
	waitFor(t, func() bool { return strings.Contains(w.String(), mark) })
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Fatalf("cache watch ended with %d, stderr %q", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cache watch did not stop when interrupted")
	}
	return w.String()
}

func TestCLI_CacheWatch(t *testing.T) {
	n, env := mustCacheNode(t)
	n.events = []*cofferv1.CacheEvent{
		{Seq: 5, Event: &cofferv1.CacheEvent_DropKey{DropKey: "k1-abc"}},
		{Seq: 7, Event: &cofferv1.CacheEvent_Policy{Policy: testPolicy}},
		{Seq: 9, Event: &cofferv1.CacheEvent_DropAll{DropAll: true}},
	}
	out := watchCLI(t, env, []string{"cache", "watch"}, "drop every cached key")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "SEQ") {
		t.Fatalf("watch printed:\n%s", out)
	}
	for i, want := range []string{"5 drop_key k1-abc", "7 policy ttl 5m0s, max entries 1000", "9 drop_all"} {
		if got := strings.Join(strings.Fields(lines[i+1]), " "); !strings.HasPrefix(got, want) {
			t.Errorf("line %d: %q, want %q", i+1, got, want)
		}
	}
	out = watchCLI(t, env, []string{"-o", "json", "cache", "watch", "--after", "6"}, `"drop_all":true`)
	lines = strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], `{"seq":"7","policy":{`) || lines[1] != `{"seq":"9","drop_all":true}` {
		t.Fatalf("watch -o json --after 6:\n%s", out)
	}
	n.mu.Lock()
	if len(n.watches) != 2 || n.watches[1].GetAfterSeq() != 6 {
		t.Fatalf("watch requests %v", n.watches)
	}
	// A stream that ends after one event is resumed after it: every event
	// once, in order.
	n.dropOnce = true
	n.mu.Unlock()
	out = watchCLI(t, env, []string{"-o", "json", "cache", "watch"}, `"drop_all":true`)
	lines = strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], `{"seq":"5",`) || !strings.HasPrefix(lines[1], `{"seq":"7",`) {
		t.Fatalf("resumed watch printed:\n%s", out)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.watches) != 4 || n.watches[3].GetAfterSeq() != 5 {
		t.Fatalf("resumed watch requests %v", n.watches)
	}
}
