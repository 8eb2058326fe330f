package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// accessServer is a node serving only AccessService with canned answers.
// Every write names leader (when set) in its response header, as a Coffer
// node names the leader.
type accessServer struct {
	cofferv1.UnimplementedAccessServiceServer

	name string
	addr string

	mu     sync.Mutex
	calls  []string
	leader string
	fail   func(ctx context.Context, method string) error
}

func mustAccessServer(t *testing.T, p *testPKI, name string) *accessServer {
	t.Helper()
	conf := p.issue(t, transport.Identity{Kind: transport.KindNode, Name: name})
	serverTLS, err := conf.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := &accessServer{name: name, addr: lis.Addr().String()}
	gs := grpc.NewServer(testenv.ServerOptions(t, serverTLS)...)
	cofferv1.RegisterAccessServiceServer(gs, s)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return s
}

func mustAccessServers(t *testing.T, p *testPKI, n int) ([]*accessServer, []string) {
	t.Helper()
	var srvs []*accessServer
	var addrs []string
	for i := range n {
		s := mustAccessServer(t, p, fmt.Sprintf("a%d", i+1))
		srvs = append(srvs, s)
		addrs = append(addrs, s.addr)
	}
	return srvs, addrs
}

func (s *accessServer) set(leader string, fail func(context.Context, string) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leader, s.fail = leader, fail
}

// record notes the call, names the leader on writes and returns the injected
// failure, if any.
func (s *accessServer) record(ctx context.Context, method string, isWrite bool) error {
	s.mu.Lock()
	s.calls = append(s.calls, method)
	leader, fail := s.leader, s.fail
	s.mu.Unlock()
	if fail != nil {
		if err := fail(ctx, method); err != nil {
			return err
		}
	}
	if isWrite && leader != "" {
		_ = grpc.SetHeader(ctx, metadata.Pairs(LeaderAddrKey, leader))
	}
	return nil
}

func (s *accessServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

func (s *accessServer) count(method string) int {
	n := 0
	for _, m := range s.seen() {
		if m == method {
			n++
		}
	}
	return n
}

func (s *accessServer) RegisterClient(ctx context.Context, req *cofferv1.RegisterClientRequest) (*cofferv1.ClientInfo, error) {
	if err := s.record(ctx, "RegisterClient", true); err != nil {
		return nil, err
	}
	return &cofferv1.ClientInfo{Name: req.GetName(), Active: true, Groups: req.GetGroups(), Roles: req.GetRoles(), Revision: 1}, nil
}

func (s *accessServer) SetClientActive(ctx context.Context, req *cofferv1.SetClientActiveRequest) (*cofferv1.ClientInfo, error) {
	if err := s.record(ctx, "SetClientActive", true); err != nil {
		return nil, err
	}
	return &cofferv1.ClientInfo{Name: req.GetName(), Active: req.GetActive(), Revision: 2}, nil
}

func (s *accessServer) GetClient(ctx context.Context, req *cofferv1.GetClientRequest) (*cofferv1.ClientInfo, error) {
	if err := s.record(ctx, "GetClient", false); err != nil {
		return nil, err
	}
	return &cofferv1.ClientInfo{Name: req.GetName(), Active: true}, nil
}

func (s *accessServer) ListClients(ctx context.Context, _ *cofferv1.ListClientsRequest) (*cofferv1.ListClientsResponse, error) {
	if err := s.record(ctx, "ListClients", false); err != nil {
		return nil, err
	}
	return &cofferv1.ListClientsResponse{Clients: []*cofferv1.ClientInfo{{Name: "app"}, {Name: s.name}}}, nil
}

func (s *accessServer) RevokeCertificate(ctx context.Context, req *cofferv1.RevokeCertificateRequest) (*cofferv1.RevokeCertificateResponse, error) {
	if err := s.record(ctx, "RevokeCertificate", true); err != nil {
		return nil, err
	}
	return &cofferv1.RevokeCertificateResponse{Serial: req.GetSerial()}, nil
}

func (s *accessServer) Grant(ctx context.Context, req *cofferv1.GrantRequest) (*cofferv1.AclRuleInfo, error) {
	if err := s.record(ctx, "Grant", true); err != nil {
		return nil, err
	}
	id := req.GetId()
	if id == "" {
		id = "r-" + s.name
	}
	return &cofferv1.AclRuleInfo{Id: id, Subject: req.GetSubject(), Operations: req.GetOperations(),
		ResourcePattern: req.GetResourcePattern(), CreatedBy: "client:tester"}, nil
}

func (s *accessServer) RevokeGrant(ctx context.Context, req *cofferv1.RevokeGrantRequest) (*cofferv1.RevokeGrantResponse, error) {
	if err := s.record(ctx, "RevokeGrant", true); err != nil {
		return nil, err
	}
	return &cofferv1.RevokeGrantResponse{Id: req.GetId()}, nil
}

func (s *accessServer) ListGrants(ctx context.Context, req *cofferv1.ListGrantsRequest) (*cofferv1.ListGrantsResponse, error) {
	if err := s.record(ctx, "ListGrants", false); err != nil {
		return nil, err
	}
	return &cofferv1.ListGrantsResponse{Rules: []*cofferv1.AclRuleInfo{{Id: "r1", Subject: req.GetSubject()}}}, nil
}

func (s *accessServer) Check(ctx context.Context, req *cofferv1.CheckRequest) (*cofferv1.CheckResponse, error) {
	if err := s.record(ctx, "Check", false); err != nil {
		return nil, err
	}
	return &cofferv1.CheckResponse{Allowed: req.GetClient() == "app", Reason: "checked by " + s.name}, nil
}

func TestAccess_EveryCall(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAccessServers(t, p, 1)
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)

	info, err := c.RegisterClient(ctx, &cofferv1.RegisterClientRequest{Name: "app", Groups: []string{"payments"}, Roles: []string{"application"}})
	if err != nil || info.GetName() != "app" || !slices.Equal(info.GetGroups(), []string{"payments"}) {
		t.Fatalf("RegisterClient = %v, %v", info, err)
	}
	if info, err := c.SetClientActive(ctx, &cofferv1.SetClientActiveRequest{Name: "app"}); err != nil || info.GetActive() {
		t.Fatalf("SetClientActive = %v, %v", info, err)
	}
	if info, err := c.GetClient(ctx, &cofferv1.GetClientRequest{Name: "app"}); err != nil || info.GetName() != "app" {
		t.Fatalf("GetClient = %v, %v", info, err)
	}
	if resp, err := c.ListClients(ctx, &cofferv1.ListClientsRequest{}); err != nil || len(resp.GetClients()) != 2 {
		t.Fatalf("ListClients = %v, %v", resp, err)
	}
	if resp, err := c.RevokeCertificate(ctx, &cofferv1.RevokeCertificateRequest{Serial: "1a2b"}); err != nil || resp.GetSerial() != "1a2b" {
		t.Fatalf("RevokeCertificate = %v, %v", resp, err)
	}
	rule, err := c.Grant(ctx, &cofferv1.GrantRequest{Subject: "client:app", Operations: []string{"get"}, ResourcePattern: "db/**"})
	if err != nil || rule.GetId() != "r-a1" || rule.GetResourcePattern() != "db/**" {
		t.Fatalf("Grant = %v, %v", rule, err)
	}
	if resp, err := c.RevokeGrant(ctx, &cofferv1.RevokeGrantRequest{Id: "r-a1"}); err != nil || resp.GetId() != "r-a1" {
		t.Fatalf("RevokeGrant = %v, %v", resp, err)
	}
	if resp, err := c.ListGrants(ctx, &cofferv1.ListGrantsRequest{Subject: "group:payments"}); err != nil ||
		len(resp.GetRules()) != 1 || resp.GetRules()[0].GetSubject() != "group:payments" {
		t.Fatalf("ListGrants = %v, %v", resp, err)
	}
	if resp, err := c.Check(ctx, &cofferv1.CheckRequest{Client: "app", Operation: "get", Resource: "db/x"}); err != nil || !resp.GetAllowed() {
		t.Fatalf("Check = %v, %v", resp, err)
	}
	want := []string{"RegisterClient", "SetClientActive", "GetClient", "ListClients", "RevokeCertificate",
		"Grant", "RevokeGrant", "ListGrants", "Check"}
	if got := srvs[0].seen(); !slices.Equal(got, want) {
		t.Fatalf("server saw %v, want %v", got, want)
	}
}

func TestAccess_NilRequests(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAccessServers(t, p, 1)
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)
	calls := map[string]func() error{
		"RegisterClient":    func() error { _, err := c.RegisterClient(ctx, nil); return err },
		"SetClientActive":   func() error { _, err := c.SetClientActive(ctx, nil); return err },
		"GetClient":         func() error { _, err := c.GetClient(ctx, nil); return err },
		"ListClients":       func() error { _, err := c.ListClients(ctx, nil); return err },
		"RevokeCertificate": func() error { _, err := c.RevokeCertificate(ctx, nil); return err },
		"Grant":             func() error { _, err := c.Grant(ctx, nil); return err },
		"RevokeGrant":       func() error { _, err := c.RevokeGrant(ctx, nil); return err },
		"ListGrants":        func() error { _, err := c.ListGrants(ctx, nil); return err },
		"Check":             func() error { _, err := c.Check(ctx, nil); return err },
	}
	for method, call := range calls {
		err := call()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s(nil) = %v, want InvalidArgument", method, err)
		}
		var ce *Error
		if !errors.As(err, &ce) || ce.Method != method {
			t.Errorf("%s(nil) = %#v, want an *Error naming the method", method, err)
		}
	}
	if n := len(srvs[0].seen()); n != 0 {
		t.Fatalf("nil requests reached the server %d times", n)
	}
}

// TestAccess_WritesGoToLeader checks that access writes are routed as writes
// (to the leader a write response named) and reads as reads (spread over
// every node).
func TestAccess_WritesGoToLeader(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAccessServers(t, p, 3)
	leader := srvs[1]
	for _, s := range srvs {
		s.set(leader.addr, nil)
	}
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)

	writes := []func() error{
		func() error {
			_, err := c.RegisterClient(ctx, &cofferv1.RegisterClientRequest{Name: "app"})
			return err
		},
		func() error {
			_, err := c.SetClientActive(ctx, &cofferv1.SetClientActiveRequest{Name: "app", Active: true})
			return err
		},
		func() error {
			_, err := c.RevokeCertificate(ctx, &cofferv1.RevokeCertificateRequest{Serial: "ff"})
			return err
		},
		func() error {
			_, err := c.Grant(ctx, &cofferv1.GrantRequest{Subject: "client:app", Operations: []string{"get"}, ResourcePattern: "**", Id: "g1"})
			return err
		},
		func() error { _, err := c.RevokeGrant(ctx, &cofferv1.RevokeGrantRequest{Id: "g1"}); return err },
	}
	// The first write may land anywhere and teaches the client the leader;
	// every later write goes there.
	if err := writes[0](); err != nil {
		t.Fatalf("first write: %v", err)
	}
	before := len(leader.seen())
	for round := range 2 {
		for i, w := range writes {
			if err := w(); err != nil {
				t.Fatalf("round %d write %d: %v", round, i, err)
			}
		}
	}
	if got, want := len(leader.seen())-before, 2*len(writes); got != want {
		t.Fatalf("leader got %d of %d writes after learning it", got, want)
	}
	for _, m := range []string{"SetClientActive", "RevokeCertificate", "Grant", "RevokeGrant"} {
		if leader.count(m) != 2 {
			t.Errorf("leader saw %s %d times, want 2", m, leader.count(m))
		}
	}

	// Reads are spread over the nodes, not pinned to the leader.
	others := func() int { return len(srvs[0].seen()) + len(srvs[2].seen()) }
	base := others()
	for range 3 {
		if _, err := c.GetClient(ctx, &cofferv1.GetClientRequest{Name: "app"}); err != nil {
			t.Fatalf("GetClient: %v", err)
		}
		if _, err := c.ListClients(ctx, &cofferv1.ListClientsRequest{}); err != nil {
			t.Fatalf("ListClients: %v", err)
		}
		if _, err := c.ListGrants(ctx, &cofferv1.ListGrantsRequest{}); err != nil {
			t.Fatalf("ListGrants: %v", err)
		}
		if _, err := c.Check(ctx, &cofferv1.CheckRequest{Client: "app", Operation: "get"}); err != nil {
			t.Fatalf("Check: %v", err)
		}
	}
	if got := others() - base; got < 6 {
		t.Fatalf("non-leaders answered %d of 12 reads; reads are not spread", got)
	}

	// When the leader goes down, the write is retried elsewhere.
	leader.set("", unavailable)
	for _, s := range []*accessServer{srvs[0], srvs[2]} {
		s.set("", nil)
	}
	if _, err := c.Grant(ctx, &cofferv1.GrantRequest{Subject: "group:ops", Operations: []string{"describe"}, ResourcePattern: "**"}); err != nil {
		t.Fatalf("Grant after leader loss: %v", err)
	}
}

func TestAccess_ErrorsNotRetried(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAccessServers(t, p, 2)
	for _, s := range srvs {
		s.set("", func(context.Context, string) error { return status.Error(codes.AlreadyExists, "client app exists") })
	}
	c := mustClient(t, p, nil, addrs...)
	_, err := c.RegisterClient(testCtx(t), &cofferv1.RegisterClientRequest{Name: "app"})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("RegisterClient = %v, want AlreadyExists", err)
	}
	if n := len(srvs[0].seen()) + len(srvs[1].seen()); n != 1 {
		t.Fatalf("AlreadyExists was tried %d times, want 1", n)
	}
}
