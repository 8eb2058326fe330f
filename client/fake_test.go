package client

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// testPKI is a node CA and a client CA plus the client TLS configuration
// of one client identity.
type testPKI struct {
	dir                  string
	cas                  map[transport.Kind]*transport.CA
	caFile, clientCAFile string
	clientTLS            *tls.Config
}

func mustPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	p := &testPKI{dir: dir, cas: map[transport.Kind]*transport.CA{}}
	for _, k := range []transport.Kind{transport.KindNode, transport.KindClient} {
		ca, err := transport.CreateCA("coffer-test-"+string(k)+"-ca", k, 24*time.Hour)
		if err != nil {
			t.Fatalf("CreateCA: %v", err)
		}
		file := filepath.Join(dir, string(k)+"-ca.pem")
		if err := ca.WriteFiles(file, filepath.Join(dir, string(k)+"-ca-key.pem")); err != nil {
			t.Fatalf("WriteFiles: %v", err)
		}
		p.cas[k] = ca
		if k == transport.KindNode {
			p.caFile = file
		} else {
			p.clientCAFile = file
		}
	}
	conf := p.issue(t, transport.Identity{Kind: transport.KindClient, Name: "tester"})
	var err error
	p.clientTLS, err = conf.ClientTLS()
	if err != nil {
		t.Fatalf("ClientTLS: %v", err)
	}
	return p
}

// issue writes a key pair for id from the CA of its kind, valid for
// localhost, and returns its files.
func (p *testPKI) issue(t testing.TB, id transport.Identity) transport.TLSConfig {
	t.Helper()
	certPEM, keyPEM, err := p.cas[id.Kind].Issue(transport.IssueRequest{
		Identity: id,
		DNSNames: []string{"localhost"},
		IPs:      []net.IP{net.IPv4(127, 0, 0, 1)},
		Validity: time.Hour,
	})
	if err != nil {
		t.Fatalf("Issue %s: %v", id, err)
	}
	conf := transport.TLSConfig{
		CAFile:       p.caFile,
		ClientCAFile: p.clientCAFile,
		CertFile:     filepath.Join(p.dir, id.Name+".pem"),
		KeyFile:      filepath.Join(p.dir, id.Name+"-key.pem"),
	}
	if err := transport.WriteKeyPair(conf.CertFile, conf.KeyFile, certPEM, keyPEM); err != nil {
		t.Fatalf("WriteKeyPair: %v", err)
	}
	return conf
}

// call is one request a fake server saw.
type call struct {
	method    string
	requestID string
	// header is the RequestIDKey header's values.
	header []string
}

// fakeServer is a node that answers every RPC with canned data unless a
// failure is injected.
type fakeServer struct {
	cofferv1.UnimplementedKeyServiceServer
	cofferv1.UnimplementedClusterServiceServer

	name string
	addr string
	srv  *grpc.Server

	mu    sync.Mutex
	calls []call
	// fail, when set, is consulted first; a non-nil error is returned to the
	// caller.
	fail func(ctx context.Context, method string) error
	// unsealed makes GetKey answer in the clear even when asked to seal;
	// sealFor, when set, rewrites the binding GetKey seals for.
	unsealed bool
	sealFor  func(ctx context.Context) context.Context
	// cachePolicy is the cache policy keys are returned with.
	cachePolicy *cofferv1.KeyCachePolicy
	// cacheSvc serves CacheService (cache_fake_test.go).
	cacheSvc *fakeCacheService
}

// mustServer starts a fake node on a loopback port with mTLS, signing its
// responses as a node does.
func mustServer(t testing.TB, p *testPKI, name string) *fakeServer {
	return mustServerWith(t, p, name, testenv.ServerOptions)
}

// mustServerWith is mustServer with the server options opts returns for the
// node's TLS configuration.
func mustServerWith(t testing.TB, p *testPKI, name string, opts func(testing.TB, *tls.Config) []grpc.ServerOption) *fakeServer {
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
	f := &fakeServer{name: name, addr: lis.Addr().String()}
	f.srv = grpc.NewServer(opts(t, serverTLS)...)
	cofferv1.RegisterKeyServiceServer(f.srv, f)
	cofferv1.RegisterClusterServiceServer(f.srv, f)
	registerCacheFakes(f)
	go func() { _ = f.srv.Serve(lis) }()
	t.Cleanup(f.srv.Stop)
	return f
}

func (f *fakeServer) setFail(fn func(ctx context.Context, method string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
}

// record notes the call and returns the injected failure, if any.
func (f *fakeServer) record(ctx context.Context, method, requestID string) error {
	f.mu.Lock()
	f.calls = append(f.calls, call{method: method, requestID: requestID, header: metadata.ValueFromIncomingContext(ctx, RequestIDKey)})
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		return fail(ctx, method)
	}
	return nil
}

func (f *fakeServer) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fakeServer) seen() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func (f *fakeServer) meta(gkid string) *cofferv1.KeyMetadata {
	md := &cofferv1.KeyMetadata{Gkid: gkid, Resource: "r", Policy: "default", Owner: f.name,
		Algorithm: cofferv1.Algorithm_ALGORITHM_AES_256, State: cofferv1.KeyState_KEY_STATE_ACTIVE}
	f.mu.Lock()
	md.CachePolicy = f.cachePolicy
	f.mu.Unlock()
	return md
}

func (f *fakeServer) GenerateKey(ctx context.Context, req *cofferv1.GenerateKeyRequest) (*cofferv1.GenerateKeyResponse, error) {
	if err := f.record(ctx, "GenerateKey", req.GetRequestId()); err != nil {
		return nil, err
	}
	return &cofferv1.GenerateKeyResponse{Key: f.meta("gk-" + req.GetRequestId())}, nil
}

func (f *fakeServer) PutKey(ctx context.Context, req *cofferv1.PutKeyRequest) (*cofferv1.PutKeyResponse, error) {
	if err := f.record(ctx, "PutKey", req.GetRequestId()); err != nil {
		return nil, err
	}
	return &cofferv1.PutKeyResponse{Key: f.meta("gk-" + req.GetRequestId())}, nil
}

func (f *fakeServer) GetKey(ctx context.Context, req *cofferv1.GetKeyRequest) (*cofferv1.GetKeyResponse, error) {
	if err := f.record(ctx, "GetKey", ""); err != nil {
		return nil, err
	}
	resp := &cofferv1.GetKeyResponse{Key: f.meta(req.GetGkid()), Material: make([]byte, 32), Version: 1}
	f.mu.Lock()
	unsealed, sealFor := f.unsealed, f.sealFor
	f.mu.Unlock()
	if st := req.GetSealTo(); st != nil && !unsealed {
		if sealFor != nil {
			ctx = sealFor(ctx)
		}
		sealed, err := testenv.SealReply(ctx, st, "get", req.GetGkid(), 1, resp.Material)
		if err != nil {
			return nil, err
		}
		resp.Material, resp.SealedMaterial = nil, sealed
	}
	return resp, nil
}

func (f *fakeServer) DescribeKey(ctx context.Context, req *cofferv1.DescribeKeyRequest) (*cofferv1.DescribeKeyResponse, error) {
	if err := f.record(ctx, "DescribeKey", ""); err != nil {
		return nil, err
	}
	return &cofferv1.DescribeKeyResponse{Key: f.meta(req.GetGkid())}, nil
}

// ListKeys serves three pages of two keys each; the token is the page number.
func (f *fakeServer) ListKeys(ctx context.Context, req *cofferv1.ListKeysRequest) (*cofferv1.ListKeysResponse, error) {
	if err := f.record(ctx, "ListKeys", ""); err != nil {
		return nil, err
	}
	page := 0
	if req.GetPageToken() != "" {
		if _, err := fmt.Sscanf(req.GetPageToken(), "p%d", &page); err != nil {
			return nil, fmt.Errorf("bad token")
		}
	}
	resp := &cofferv1.ListKeysResponse{Keys: []*cofferv1.KeyMetadata{
		f.meta(fmt.Sprintf("gk-%d-a", page)), f.meta(fmt.Sprintf("gk-%d-b", page)),
	}}
	if page < 2 {
		resp.NextPageToken = fmt.Sprintf("p%d", page+1)
	}
	return resp, nil
}

func (f *fakeServer) Status(ctx context.Context, _ *cofferv1.ClusterStatusRequest) (*cofferv1.ClusterStatusResponse, error) {
	if err := f.record(ctx, "Status", ""); err != nil {
		return nil, err
	}
	return &cofferv1.ClusterStatusResponse{ClusterId: "c1", ReporterId: f.name, Nodes: []*cofferv1.NodeStatus{
		{Id: f.name, Address: f.addr, Role: cofferv1.NodeRole_NODE_ROLE_LEADER, Healthy: true, Voter: true},
	}}, nil
}

// Snapshot sends "snap-" and the server's name as the snapshot, then the
// trailer with applied index 7.
func (f *fakeServer) Snapshot(_ *cofferv1.SnapshotRequest, stream cofferv1.ClusterService_SnapshotServer) error {
	if err := f.record(stream.Context(), "Snapshot", ""); err != nil {
		return err
	}
	if err := stream.Send(&cofferv1.SnapshotChunk{Data: []byte("snap-" + f.name)}); err != nil {
		return err
	}
	return stream.Send(&cofferv1.SnapshotChunk{AppliedIndex: 7})
}

// withLeaderHint returns err after attaching addr as the leader hint trailer.
func withLeaderHint(ctx context.Context, addr string, err error) error {
	_ = grpc.SetTrailer(ctx, metadata.Pairs(LeaderAddrKey, addr))
	return err
}
