package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// memStore is the key store the in-memory test nodes share.
type memStore struct {
	mu      sync.Mutex
	keys    map[string]*cofferv1.GetKeyResponse
	byReqID map[string]string
	// addrs are the nodes' addresses, in node order.
	addrs []string
	// noLeaderUntil, while in the future, makes GenerateKey answer as a
	// node does during a leader election.
	noLeaderUntil time.Time
	// cryptoCalls counts the CryptoService calls that arrived.
	cryptoCalls int
}

// setNoLeader makes GenerateKey answer "no leader" until end.
func (s *memStore) setNoLeader(end time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noLeaderUntil = end
}

func (s *memStore) noLeader() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if time.Now().Before(s.noLeaderUntil) {
		return status.Error(codes.Unavailable, "no leader")
	}
	return nil
}

// testPKI is a throwaway pair of CAs (node and client) in a temporary
// directory, and a function that issues loopback certificates from the CA
// of each identity's kind into the same directory.
type testPKI struct {
	dir                string
	caFile, caKey      string // the node CA
	clientCA, clientCK string // the client CA and its key
	issue              func(transport.Identity) transport.TLSConfig
}

func newTestPKI(t *testing.T, name string) testPKI {
	t.Helper()
	p := testPKI{dir: t.TempDir()}
	cas := map[transport.Kind]*transport.CA{}
	for _, k := range []transport.Kind{transport.KindNode, transport.KindClient} {
		ca, err := transport.CreateCA(name+" "+string(k)+"s", k, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, key := filepath.Join(p.dir, string(k)+"-ca.pem"), filepath.Join(p.dir, string(k)+"-ca-key.pem")
		if err := ca.WriteFiles(cert, key); err != nil {
			t.Fatal(err)
		}
		cas[k] = ca
		if k == transport.KindNode {
			p.caFile, p.caKey = cert, key
		} else {
			p.clientCA, p.clientCK = cert, key
		}
	}
	p.issue = func(id transport.Identity) transport.TLSConfig {
		certPEM, keyPEM, err := cas[id.Kind].Issue(transport.IssueRequest{Identity: id,
			IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		conf := transport.TLSConfig{CAFile: p.caFile, ClientCAFile: p.clientCA, CertFile: filepath.Join(p.dir, id.Name+".pem"),
			KeyFile: filepath.Join(p.dir, id.Name+"-key.pem")}
		if err := transport.WriteKeyPair(conf.CertFile, conf.KeyFile, certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
		return conf
	}
	return p
}

// mustCluster starts n in-memory nodes sharing one key store over mTLS and
// returns their addresses and the environment a client needs.
func mustCluster(t *testing.T, n int) ([]string, envMap) {
	t.Helper()
	shared, env := mustMemCluster(t, n)
	return shared.addrs, env
}

// mustMemCluster is mustCluster returning the shared store.
func mustMemCluster(t *testing.T, n int) (*memStore, envMap) {
	t.Helper()
	pki := newTestPKI(t, "cli-test-ca")
	issue := pki.issue
	shared := &memStore{keys: map[string]*cofferv1.GetKeyResponse{}, byReqID: map[string]string{}}
	var addrs []string
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		serverTLS, err := issue(transport.Identity{Kind: transport.KindNode, Name: name}).ServerTLS()
		if err != nil {
			t.Fatal(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, lis.Addr().String())
		gs := grpc.NewServer(testenv.ServerOptions(t, serverTLS)...)
		h := &memHandler{memStore: shared, name: name}
		cofferv1.RegisterKeyServiceServer(gs, h)
		cofferv1.RegisterClusterServiceServer(gs, h)
		cofferv1.RegisterCryptoServiceServer(gs, h)
		go func() { _ = gs.Serve(lis) }()
		t.Cleanup(gs.Stop)
	}
	shared.mu.Lock()
	shared.addrs = addrs
	shared.mu.Unlock()
	cli := issue(transport.Identity{Kind: transport.KindClient, Name: "cli"})
	return shared, envMap{envAddr: strings.Join(addrs, ","), envCA: cli.CAFile, envCert: cli.CertFile, envKey: cli.KeyFile}
}

// memHandler is one in-memory node: KeyService, ClusterService and
// CryptoService (crypto_test.go) over the shared store.
type memHandler struct {
	cofferv1.UnimplementedKeyServiceServer
	cofferv1.UnimplementedClusterServiceServer
	cofferv1.UnimplementedCryptoServiceServer
	*memStore
	name string
}

func (h *memHandler) store(reqID, policy, resource string, alg cofferv1.Algorithm, material []byte) *cofferv1.KeyMetadata {
	h.mu.Lock()
	defer h.mu.Unlock()
	if gkid, ok := h.byReqID[reqID]; ok {
		return h.keys[gkid].GetKey()
	}
	if policy == "" {
		policy = "default"
	}
	if alg == cofferv1.Algorithm_ALGORITHM_UNSPECIFIED {
		alg = cofferv1.Algorithm_ALGORITHM_AES_256
	}
	gkid := fmt.Sprintf("gk%04d", len(h.keys)+1)
	md := &cofferv1.KeyMetadata{Gkid: gkid, Policy: policy, Resource: resource, Owner: "client:cli",
		Algorithm: alg, State: cofferv1.KeyState_KEY_STATE_ACTIVE, KekVersion: 1, Revision: 1}
	h.keys[gkid] = &cofferv1.GetKeyResponse{Key: md, Material: material}
	h.byReqID[reqID] = gkid
	return md
}

func (h *memHandler) GenerateKey(_ context.Context, req *cofferv1.GenerateKeyRequest) (*cofferv1.GenerateKeyResponse, error) {
	if err := h.noLeader(); err != nil {
		return nil, err
	}
	if req.GetResource() == "" {
		return nil, status.Error(codes.InvalidArgument, "resource is required")
	}
	return &cofferv1.GenerateKeyResponse{Key: h.store(req.GetRequestId(), req.GetPolicy(), req.GetResource(),
		req.GetAlgorithm(), make([]byte, 32))}, nil
}

func (h *memHandler) PutKey(_ context.Context, req *cofferv1.PutKeyRequest) (*cofferv1.PutKeyResponse, error) {
	return &cofferv1.PutKeyResponse{Key: h.store(req.GetRequestId(), req.GetPolicy(), req.GetResource(),
		req.GetAlgorithm(), req.GetMaterial())}, nil
}

func (h *memHandler) lookup(gkid string) (*cofferv1.GetKeyResponse, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k, ok := h.keys[gkid]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "key %s not found", gkid)
	}
	return k, nil
}

func (h *memHandler) GetKey(ctx context.Context, req *cofferv1.GetKeyRequest) (*cofferv1.GetKeyResponse, error) {
	resp, err := h.lookup(req.GetGkid())
	if err != nil || req.GetSealTo() == nil {
		return resp, err
	}
	out := proto.CloneOf(resp)
	out.Version = 1
	if out.SealedMaterial, err = testenv.SealReply(ctx, req.GetSealTo(), "get", req.GetGkid(), 1, resp.GetMaterial()); err != nil {
		return nil, err
	}
	out.Material = nil
	return out, nil
}

func (h *memHandler) DescribeKey(_ context.Context, req *cofferv1.DescribeKeyRequest) (*cofferv1.DescribeKeyResponse, error) {
	k, err := h.lookup(req.GetGkid())
	if err != nil {
		return nil, err
	}
	return &cofferv1.DescribeKeyResponse{Key: k.GetKey()}, nil
}

// ListKeys pages in GKID order; the token is the last GKID served.
func (h *memHandler) ListKeys(_ context.Context, req *cofferv1.ListKeysRequest) (*cofferv1.ListKeysResponse, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	size := int(req.GetPageSize())
	if size == 0 {
		size = 100
	}
	resp := &cofferv1.ListKeysResponse{}
	for i := 1; i <= len(h.keys); i++ {
		gkid := fmt.Sprintf("gk%04d", i)
		if gkid <= req.GetPageToken() || (req.GetResource() != "" && h.keys[gkid].GetKey().GetResource() != req.GetResource()) {
			continue
		}
		if len(resp.Keys) == size {
			resp.NextPageToken = resp.Keys[size-1].GetGkid()
			break
		}
		resp.Keys = append(resp.Keys, h.keys[gkid].GetKey())
	}
	return resp, nil
}

func (h *memHandler) Status(_ context.Context, req *cofferv1.ClusterStatusRequest) (*cofferv1.ClusterStatusResponse, error) {
	resp := &cofferv1.ClusterStatusResponse{ClusterId: "test-cluster", ReporterId: h.name, Authoritative: true}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, addr := range h.addrs {
		role := cofferv1.NodeRole_NODE_ROLE_FOLLOWER
		if i == 0 {
			role = cofferv1.NodeRole_NODE_ROLE_LEADER
		}
		resp.Nodes = append(resp.Nodes, &cofferv1.NodeStatus{Id: fmt.Sprintf("n%d", i+1), Address: addr,
			Role: role, Term: 2, LastLogIndex: 10, AppliedIndex: 10, LeaderId: "n1", Healthy: true, Voter: true})
		if req.GetDigest() {
			last := resp.Nodes[len(resp.Nodes)-1]
			last.StateDigest, last.StateDigestIndex = bytes.Repeat([]byte{0xc0, 0xfe}, 16), 10
		}
	}
	return resp, nil
}

// mustRun runs a command line that must succeed and returns its stdout.
func mustRun(t *testing.T, env envMap, args ...string) string {
	t.Helper()
	code, out, errOut := runCLI(t, env, args...)
	if code != exitOK {
		t.Fatalf("coffer %s: exit %d, stderr %q", strings.Join(args, " "), code, errOut)
	}
	return out
}

func TestCLI_KeyLifecycle(t *testing.T) {
	_, env := mustCluster(t, 3)

	gkid := strings.TrimSpace(mustRun(t, env, "key", "generate", "--resource", "db/orders", "--algorithm", "aes-128"))
	if gkid != "gk0001" {
		t.Fatalf("generate printed %q", gkid)
	}
	var md map[string]any
	out := mustRun(t, env, "-o", "json", "key", "generate", "--resource", "db/orders", "--request-id", "req-1")
	if err := json.Unmarshal([]byte(out), &md); err != nil || md["gkid"] != "gk0002" || md["resource"] != "db/orders" {
		t.Fatalf("generate -o json = %q (%v)", out, err)
	}
	// The same request id returns the same key.
	if again := strings.TrimSpace(mustRun(t, env, "key", "generate", "--resource", "db/orders", "--request-id", "req-1")); again != "gk0002" {
		t.Fatalf("retried generate printed %q, want gk0002", again)
	}

	material := []byte("0123456789abcdef")
	file := filepath.Join(t.TempDir(), "k.b64")
	if err := os.WriteFile(file, []byte(base64.StdEncoding.EncodeToString(material)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	put := strings.TrimSpace(mustRun(t, env, "key", "put", "--resource", "app", "--material-file", file,
		"--encoding", "base64", "--algorithm", "aes-128"))
	if put != "gk0003" {
		t.Fatalf("put printed %q", put)
	}

	var got struct {
		Material string                          `json:"material"`
		Key      struct{ Gkid, Resource string } `json:"key"`
	}
	out = mustRun(t, env, "-o", "json", "key", "get", put, "--consistency", "stale")
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("get -o json = %q: %v", out, err)
	}
	if got.Material != base64.StdEncoding.EncodeToString(material) || got.Key.Gkid != put || got.Key.Resource != "app" {
		t.Fatalf("get -o json = %+v", got)
	}
	if out := mustRun(t, env, "key", "get", put); !strings.Contains(out, "material:     "+got.Material+"\n") {
		t.Fatalf("get text:\n%s", out)
	}

	out = mustRun(t, env, "key", "describe", gkid)
	for _, want := range []string{"gkid:         gk0001", "algorithm:    aes-128", "state:        active"} {
		if !strings.Contains(out, want) {
			t.Errorf("describe lacks %q:\n%s", want, out)
		}
	}

	var list struct {
		Keys          []struct{ Gkid string }
		NextPageToken string `json:"next_page_token"`
	}
	out = mustRun(t, env, "-o", "json", "key", "list", "--page-size", "2")
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Keys) != 2 || list.NextPageToken != "gk0002" {
		t.Fatalf("list page = %q (%v)", out, err)
	}
	out = mustRun(t, env, "-o", "json", "key", "list", "--page-size", "1", "--all")
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Keys) != 3 || list.NextPageToken != "" {
		t.Fatalf("list --all = %q (%v)", out, err)
	}
	out = mustRun(t, env, "key", "list", "--resource", "db/orders")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 {
		t.Fatalf("list text:\n%s", out)
	}

	code, _, errOut := runCLI(t, env, "key", "describe", "gk9999")
	if code != exitFailure || errOut != "coffer: NotFound: key gk9999 not found\n" {
		t.Fatalf("describe of a missing key: exit %d, stderr %q", code, errOut)
	}
}

func TestCLI_ClusterStatus(t *testing.T) {
	addrs, env := mustCluster(t, 3)
	var got clusterJSON
	out := mustRun(t, env, "-o", "json", "cluster", "status")
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("cluster status -o json = %q: %v", out, err)
	}
	if got.ClusterID != "test-cluster" || len(got.Nodes) != 3 || got.Nodes[0].Role != "leader" ||
		got.Nodes[1].Role != "follower" || got.Nodes[2].Address != addrs[2] {
		t.Fatalf("cluster status = %+v", got)
	}
	out = mustRun(t, env, "cluster", "status")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 4 || !strings.HasPrefix(lines[0], "ID") || strings.Contains(out, "DIGEST") {
		t.Fatalf("cluster status text:\n%s", out)
	}
	if got.Nodes[0].StateDigest != "" {
		t.Fatalf("a digest without --digest: %+v", got.Nodes[0])
	}
	out = mustRun(t, env, "cluster", "status", "--digest")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 4 || !strings.Contains(lines[0], "DIGEST-INDEX") ||
		!strings.Contains(lines[1], " 10 ") || !strings.Contains(lines[1], "c0fec0fec0fec0fe ") {
		t.Fatalf("cluster status --digest text:\n%s", out)
	}
	got = clusterJSON{}
	out = mustRun(t, env, "-o", "json", "cluster", "status", "--digest")
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Nodes[2].StateDigest != strings.Repeat("c0fe", 16) || got.Nodes[2].StateDigestIndex != 10 {
		t.Fatalf("cluster status --digest -o json = %q (%v)", out, err)
	}
}

func TestCLI_Bench(t *testing.T) {
	_, env := mustCluster(t, 3)
	report := filepath.Join(t.TempDir(), "bench.json")
	out := mustRun(t, env, "bench", "--op", "mix", "--keys", "20", "--concurrency", "4",
		"--duration", "300ms", "--warmup", "50ms", "--json", report)
	if !strings.Contains(out, "total") || !strings.Contains(out, "P99") {
		t.Fatalf("bench output:\n%s", out)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep benchReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("bench JSON %q: %v", b, err)
	}
	if rep.Total.Count == 0 || rep.Total.Errors != 0 || len(rep.Endpoints) != 3 || rep.Keys != 20 {
		t.Fatalf("bench report %+v", rep)
	}
}

// TestCLI_RidesThroughElection: a command sent while the cluster has no
// leader succeeds once the election is over, within --timeout; when the
// cluster stays without a leader it fails at --timeout, saying how long it
// tried, how often, where last and with which error.
func TestCLI_RidesThroughElection(t *testing.T) {
	shared, env := mustMemCluster(t, 3)
	const election = 1500 * time.Millisecond
	start := time.Now()
	shared.setNoLeader(start.Add(election))
	if gkid := strings.TrimSpace(mustRun(t, env, "key", "generate", "--resource", "r")); gkid != "gk0001" {
		t.Fatalf("generate printed %q", gkid)
	}
	if elapsed := time.Since(start); elapsed < election {
		t.Fatalf("generate answered after %v, during the election", elapsed)
	}

	shared.setNoLeader(time.Now().Add(time.Hour))
	const timeout = 2 * time.Second
	start = time.Now()
	code, _, stderr := runCLI(t, env, "--timeout", timeout.String(), "key", "generate", "--resource", "r")
	elapsed := time.Since(start)
	if code != exitFailure {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	// The client gives up no earlier than its last wait (at most 1.2 s)
	// before the deadline.
	if elapsed < timeout-1200*time.Millisecond || elapsed > timeout+time.Second {
		t.Fatalf("failed after %v, want about --timeout %v", elapsed, timeout)
	}
	for _, want := range []string{"coffer: Unavailable: gave up after ", " attempt(s) (context deadline exceeded), last to 127.0.0.1:", ": no leader\n"} {
		if !strings.Contains(stderr, want) {
			t.Fatalf("stderr %q lacks %q", stderr, want)
		}
	}
}
