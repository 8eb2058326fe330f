package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
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

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// testCluster is an in-process cluster over real loopback gRPC with mTLS and
// real Pebble/bolt stores in temp dirs.
type testCluster struct {
	t         *testing.T
	dir       string
	masterKey []byte
	cfgs      []Config
	nodes     []*Node // nil when stopped
	clientTLS *tls.Config
	// issue writes a key pair for an identity, signed by the cluster CA.
	issue func(id transport.Identity) transport.TLSConfig
	// wrapKeystore, when set, wraps node i's keystore (fault injection).
	wrapKeystore func(i int, ks hsmwrap.Keystore) hsmwrap.Keystore

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return freeAddrs(t, 1)[0]
}

// handedOut holds every address freeAddrs returned in this test binary.
var handedOut sync.Map

// freeAddrs returns n free loopback addresses that no earlier call
// returned: a port closed after it was chosen is free again for the kernel,
// which would otherwise hand it to the next node of the same cluster.
func freeAddrs(t *testing.T, n int) []string {
	t.Helper()
	addrs := make([]string, 0, n)
	for len(addrs) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if _, dup := handedOut.LoadOrStore(l.Addr().String(), true); !dup {
			addrs = append(addrs, l.Addr().String())
		}
	}
	return addrs
}

func mustCluster(t *testing.T, size int, tweak func(*Config)) *testCluster {
	t.Helper()
	return mustClusterWith(t, size, tweak, nil)
}

func mustClusterWith(t *testing.T, size int, tweak func(*Config), wrap func(int, hsmwrap.Keystore) hsmwrap.Keystore) *testCluster {
	t.Helper()
	tc := mustClusterUnadmitted(t, size, tweak, wrap)
	tc.waitAdmitted()
	return tc
}

// mustClusterUnadmitted starts a cluster and returns once it has an
// initialised leader, before the leader has necessarily pinned every
// member's certificate (followers may be refused as not admitted yet).
func mustClusterUnadmitted(t *testing.T, size int, tweak func(*Config), wrap func(int, hsmwrap.Keystore) hsmwrap.Keystore) *testCluster {
	t.Helper()
	dir := t.TempDir()
	cas := map[transport.Kind]*transport.CA{}
	files := map[transport.Kind]string{}
	for _, k := range []transport.Kind{transport.KindNode, transport.KindClient} {
		ca, err := transport.CreateCA("coffer test "+string(k)+" CA", k, 48*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		files[k] = filepath.Join(dir, string(k)+"-ca.pem")
		if err := ca.WriteFiles(files[k], filepath.Join(dir, string(k)+"-ca-key.pem")); err != nil {
			t.Fatal(err)
		}
		cas[k] = ca
	}
	issued := 0
	// issue writes a key pair for id, signed by the CA of its kind.
	issue := func(id transport.Identity) transport.TLSConfig {
		certPEM, keyPEM, err := cas[id.Kind].Issue(transport.IssueRequest{Identity: id, IPs: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}, Validity: 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		issued++
		base := fmt.Sprintf("%s-%d", id.Name, issued)
		c := transport.TLSConfig{CAFile: files[transport.KindNode], ClientCAFile: files[transport.KindClient],
			CertFile: filepath.Join(dir, base+".pem"), KeyFile: filepath.Join(dir, base+"-key.pem")}
		if err := transport.WriteKeyPair(c.CertFile, c.KeyFile, certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
		return c
	}
	tc := &testCluster{t: t, dir: dir, masterKey: make([]byte, 32), conns: map[string]*grpc.ClientConn{}, issue: issue, wrapKeystore: wrap}
	_, _ = rand.Read(tc.masterKey)
	ctls, err := issue(transport.Identity{Kind: transport.KindClient, Name: "app"}).ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	tc.clientTLS = ctls
	// Free ports are found by binding and closing, so another process can
	// take one before a node binds it; start over on fresh ports then.
	for attempt := 1; ; attempt++ {
		err := tc.boot(size, filepath.Join(dir, fmt.Sprintf("boot%d", attempt)), tweak)
		if err == nil {
			break
		}
		tc.stopAll()
		if !strings.Contains(err.Error(), "address already in use") || attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("port taken while starting (%v); starting over on fresh ports", err)
	}
	t.Cleanup(tc.stopAll)
	tc.waitLeader()
	return tc
}

// waitAdmitted waits until the leader has pinned the certificate of every
// member, so that followers may forward, read and audit through it.
func (tc *testCluster) waitAdmitted() {
	tc.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		l := tc.waitLeader()
		if len(tc.nodes[l].FSM().NodePins()) == len(tc.cfgs) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tc.t.Fatalf("members not all admitted within 20s: %v", tc.nodes[tc.waitLeader()].FSM().NodePins())
}

// boot configures size nodes on fresh ports with data under dir and starts
// them.
func (tc *testCluster) boot(size int, dir string, tweak func(*Config)) error {
	var peers []Peer
	sites := []string{"a", "b", "c"}
	addrs := freeAddrs(tc.t, 2*size)
	for i := 0; i < size; i++ {
		peers = append(peers, Peer{ID: fmt.Sprintf("n%d", i+1), Site: sites[i%3], APIAddr: addrs[2*i], RaftAddr: addrs[2*i+1]})
	}
	tc.cfgs = nil
	for _, p := range peers {
		cfg := DefaultConfig()
		cfg.ID, cfg.Site, cfg.APIAddr, cfg.RaftAddr = p.ID, p.Site, p.APIAddr, p.RaftAddr
		cfg.DataDir = filepath.Join(dir, p.ID)
		cfg.Peers = peers
		cfg.Bootstrap = true
		cfg.BootstrapAdmins = []string{"app"}
		cfg.TLS = tc.issue(transport.Identity{Kind: transport.KindNode, Name: p.ID})
		if tweak != nil {
			tweak(&cfg)
		}
		tc.cfgs = append(tc.cfgs, cfg)
	}
	tc.nodes = make([]*Node, size)
	for i := range peers {
		if err := tc.tryStart(i); err != nil {
			return err
		}
	}
	return nil
}

func (tc *testCluster) start(i int) {
	tc.t.Helper()
	if err := tc.tryStart(i); err != nil {
		tc.t.Fatal(err)
	}
}

func (tc *testCluster) tryStart(i int) error {
	ks, err := hsmwrap.NewSoftwareFromKey(tc.masterKey)
	if err != nil {
		return err
	}
	var k hsmwrap.Keystore = ks
	if tc.wrapKeystore != nil {
		k = tc.wrapKeystore(i, ks)
	}
	n, err := New(tc.cfgs[i], k, nil)
	if err != nil {
		return fmt.Errorf("start %s: %w", tc.cfgs[i].ID, err)
	}
	tc.nodes[i] = n
	return nil
}

func (tc *testCluster) stop(i int) {
	if tc.nodes[i] != nil {
		_ = tc.nodes[i].Close()
		tc.nodes[i] = nil
	}
}

func (tc *testCluster) stopAll() {
	tc.mu.Lock()
	for _, c := range tc.conns {
		_ = c.Close()
	}
	tc.mu.Unlock()
	for i := range tc.nodes {
		tc.stop(i)
	}
}

// waitLeader waits until one running node leads and the cluster is
// initialised; it returns the leader's index.
func (tc *testCluster) waitLeader() int {
	tc.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for i, n := range tc.nodes {
			if n != nil && n.IsLeader() {
				if _, err := n.FSM().Cluster(); err == nil {
					return i
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	tc.t.Fatal("no initialised leader within 20s")
	return -1
}

func (tc *testCluster) follower() int {
	l := tc.waitLeader()
	for i, n := range tc.nodes {
		if n != nil && i != l {
			return i
		}
	}
	tc.t.Fatal("no follower running")
	return -1
}

func (tc *testCluster) keys(i int) cofferv1.KeyServiceClient {
	tc.t.Helper()
	return cofferv1.NewKeyServiceClient(tc.conn(i))
}

func (tc *testCluster) crypto(i int) cofferv1.CryptoServiceClient {
	tc.t.Helper()
	return cofferv1.NewCryptoServiceClient(tc.conn(i))
}

// conn is the test client's connection to node i.
func (tc *testCluster) conn(i int) *grpc.ClientConn {
	tc.t.Helper()
	addr := tc.cfgs[i].APIAddr
	tc.mu.Lock()
	defer tc.mu.Unlock()
	c, ok := tc.conns[addr]
	if !ok {
		var err error
		if c, err = transport.Dial(addr, tc.clientTLS, testenv.Signing(tc.t, tc.clientTLS)); err != nil {
			tc.t.Fatal(err)
		}
		tc.conns[addr] = c
	}
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// mustGenerate generates through node i, retrying Unavailable (elections) with
// the same request id until the deadline.
func (tc *testCluster) mustGenerate(i int, resource, requestID string) *cofferv1.KeyMetadata {
	tc.t.Helper()
	ctx := ctxT(tc.t)
	for {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := tc.keys(i).GenerateKey(actx, &cofferv1.GenerateKeyRequest{RequestId: requestID, Resource: resource})
		cancel()
		if err == nil {
			return resp.GetKey()
		}
		tc.t.Logf("generate on %s: %v", tc.cfgs[i].ID, err)
		if !retryable(err) || ctx.Err() != nil {
			tc.t.Fatalf("generate on %s: %v", tc.cfgs[i].ID, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (tc *testCluster) mustGet(i int, gk string) []byte {
	tc.t.Helper()
	ctx := ctxT(tc.t)
	for {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := tc.keys(i).GetKey(actx, &cofferv1.GetKeyRequest{Gkid: gk})
		cancel()
		if err == nil {
			return resp.GetMaterial()
		}
		tc.t.Logf("get %s on %s: %v", gk, tc.cfgs[i].ID, err)
		if !retryable(err) || ctx.Err() != nil {
			tc.t.Fatalf("get %s on %s: %v", gk, tc.cfgs[i].ID, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNode_GenerateOnFollowerReadEverywhere(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	f := tc.follower()
	md := tc.mustGenerate(f, "app/payments", "")
	if md.GetPolicy() != DefaultPolicy || md.GetResource() != "app/payments" || md.GetOwner() != "client:app" ||
		md.GetAlgorithm() != cofferv1.Algorithm_ALGORITHM_AES_256 || md.GetState() != cofferv1.KeyState_KEY_STATE_ACTIVE {
		t.Fatalf("metadata %+v", md)
	}
	var first []byte
	for i := range tc.nodes {
		// Linearizable by default: visible on every node right after the
		// write was acknowledged, without waiting.
		m := tc.mustGet(i, md.GetGkid())
		if len(m) != 32 {
			t.Fatalf("material length %d", len(m))
		}
		if first == nil {
			first = m
		} else if !bytes.Equal(first, m) {
			t.Fatal("nodes returned different material for one key")
		}
		d, err := tc.keys(i).DescribeKey(ctxT(t), &cofferv1.DescribeKeyRequest{Gkid: md.GetGkid()})
		if err != nil || d.GetKey().GetGkid() != md.GetGkid() {
			t.Fatalf("describe on n%d: %v", i+1, err)
		}
	}
}

func TestNode_GenerateIsIdempotent(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	f := tc.follower()
	a := tc.mustGenerate(f, "r", "req-1")
	b := tc.mustGenerate(tc.waitLeader(), "r", "req-1")
	if a.GetGkid() != b.GetGkid() {
		t.Fatalf("retry created a second key: %s vs %s", a.GetGkid(), b.GetGkid())
	}
	list, err := tc.keys(f).ListKeys(ctxT(t), &cofferv1.ListKeysRequest{Resource: "r"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetKeys()) != 1 {
		t.Fatalf("%d keys after a retried generate, want 1", len(list.GetKeys()))
	}
}

func TestNode_PutAndGet(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	material := bytes.Repeat([]byte{0x42}, 24)
	resp, err := tc.keys(tc.follower()).PutKey(ctxT(t), &cofferv1.PutKeyRequest{
		Resource: "imported", Algorithm: cofferv1.Algorithm_ALGORITHM_AES_192, Material: material})
	if err != nil {
		t.Fatal(err)
	}
	for i := range tc.nodes {
		if got := tc.mustGet(i, resp.GetKey().GetGkid()); !bytes.Equal(got, material) {
			t.Fatalf("node %d returned other material", i)
		}
	}
}

func TestNode_BadInputCodes(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	good := tc.mustGenerate(tc.waitLeader(), "r", "")
	unknown := good.GetGkid()[:20] + strings.Repeat("a", 20)
	for _, i := range []int{tc.waitLeader(), tc.follower()} {
		k := tc.keys(i)
		p := cofferv1.NewPolicyServiceClient(tc.conn(i))
		cases := []struct {
			name string
			call func() error
			code codes.Code
		}{
			{"malformed gkid", func() error { _, err := k.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "nope"}); return err }, codes.InvalidArgument},
			{"unknown gkid", func() error { _, err := k.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: unknown}); return err }, codes.NotFound},
			{"unknown policy", func() error {
				_, err := k.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Policy: "nope", Resource: "r"})
				return err
			}, codes.NotFound},
			{"no resource", func() error { _, err := k.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{}); return err }, codes.InvalidArgument},
			{"oversized resource", func() error {
				_, err := k.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: strings.Repeat("r", MaxResourceLen+1)})
				return err
			}, codes.InvalidArgument},
			{"bad algorithm", func() error {
				_, err := k.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "r", Algorithm: 99})
				return err
			}, codes.InvalidArgument},
			{"bad request id", func() error {
				_, err := k.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "r", RequestId: "has space"})
				return err
			}, codes.InvalidArgument},
			{"wrong material length", func() error {
				_, err := k.PutKey(ctx, &cofferv1.PutKeyRequest{Resource: "r", Material: make([]byte, 31)})
				return err
			}, codes.InvalidArgument},
			{"oversized material", func() error {
				_, err := k.PutKey(ctx, &cofferv1.PutKeyRequest{Resource: "r", Algorithm: cofferv1.Algorithm_ALGORITHM_HMAC_SHA256, Material: make([]byte, MaxMaterialLen+1)})
				return err
			}, codes.InvalidArgument},
			{"page size", func() error { _, err := k.ListKeys(ctx, &cofferv1.ListKeysRequest{PageSize: 5000}); return err }, codes.InvalidArgument},
			{"page token", func() error { _, err := k.ListKeys(ctx, &cofferv1.ListKeysRequest{PageToken: "%%"}); return err }, codes.InvalidArgument},
			{"page token that decodes", func() error {
				_, err := k.ListKeys(ctx, &cofferv1.ListKeysRequest{PageToken: "garbage"})
				return err
			}, codes.InvalidArgument},
			{"resource that reads as a pattern", func() error {
				_, err := k.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "demo/*"})
				return err
			}, codes.InvalidArgument},
			{"resource with an empty segment", func() error {
				_, err := k.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "demo//app"})
				return err
			}, codes.InvalidArgument},
			{"resource with a leading slash", func() error {
				_, err := k.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "/demo"})
				return err
			}, codes.InvalidArgument},
			{"resource with dot segments", func() error {
				_, err := k.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "../../etc"})
				return err
			}, codes.InvalidArgument},
			{"resource with a right-to-left override", func() error {
				_, err := k.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "demo/\u202epp"})
				return err
			}, codes.InvalidArgument},
			{"existing policy name", func() error {
				_, err := p.CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: DefaultPolicy})
				return err
			}, codes.AlreadyExists},
			{"consistency", func() error {
				_, err := k.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: good.GetGkid(), Consistency: 7})
				return err
			}, codes.InvalidArgument},
		}
		before := tc.nodes[i].FSM().AppliedIndex()
		for _, c := range cases {
			err := c.call()
			if status.Code(err) != c.code {
				t.Errorf("node %d %s: %v, want %v", i, c.name, err, c.code)
			}
			st, _ := status.FromError(err)
			if st.Message() == "" {
				t.Errorf("%s: empty message", c.name)
			}
			for _, internal := range []string{"fsm:", "node:", "authz:", "hsmwrap:", "audit:"} {
				if strings.Contains(st.Message(), internal) {
					t.Errorf("%s: message %q speaks of a package (%s), not of the request", c.name, st.Message(), internal)
				}
			}
		}
		list, err := k.ListKeys(ctx, &cofferv1.ListKeysRequest{})
		if err != nil || len(list.GetKeys()) != 1 {
			t.Fatalf("bad input changed state: %d keys, %v (applied %d)", len(list.GetKeys()), err, before)
		}
	}
	// Internal service refuses client identities.
	tc.mu.Lock()
	conn := tc.conns[tc.cfgs[0].APIAddr]
	tc.mu.Unlock()
	_, err := cofferv1.NewInternalServiceClient(conn).ReadIndex(ctx, &cofferv1.ReadIndexRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("client called internal service: %v", err)
	}

	// A forward whose operation this build does not know (one added in a
	// newer build arrives as an empty oneof) is refused with a message that
	// points at a rolling upgrade.
	l := tc.waitLeader()
	peerTLS, err := tc.cfgs[(l+1)%len(tc.cfgs)].TLS.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	peerConn, err := transport.Dial(tc.cfgs[l].APIAddr, peerTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer peerConn.Close()
	_, err = cofferv1.NewInternalServiceClient(peerConn).Forward(ctx, &cofferv1.ForwardRequest{
		Caller: &cofferv1.Caller{Identity: transport.Identity{Kind: transport.KindClient, Name: "admin"}.String(), CertSerial: "01"}})
	wantCode(t, "forward of an unknown operation", err, codes.InvalidArgument, "may run an older build")
}

func TestNode_LeaderKill(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	var gkids []string
	var materials [][]byte
	for i := 0; i < 20; i++ {
		md := tc.mustGenerate(i%3, "r", "")
		gkids = append(gkids, md.GetGkid())
		materials = append(materials, tc.mustGet(i%3, md.GetGkid()))
	}
	old := tc.waitLeader()
	tc.stop(old)
	newLeader := tc.waitLeader()
	if newLeader == old {
		t.Fatal("stopped node still leads")
	}
	for i, gk := range gkids {
		for j := range tc.nodes {
			if tc.nodes[j] == nil {
				continue
			}
			if got := tc.mustGet(j, gk); !bytes.Equal(got, materials[i]) {
				t.Fatalf("key %s changed after leader loss", gk)
			}
		}
	}
	md := tc.mustGenerate(tc.follower(), "after", "")
	tc.mustGet(newLeader, md.GetGkid())
	// The old leader comes back as a follower and catches up.
	tc.start(old)
	if got := tc.mustGet(old, md.GetGkid()); len(got) != 32 {
		t.Fatal("restarted node did not catch up")
	}
}

func TestNode_RestartCatchesUpBySnapshot(t *testing.T) {
	tc := mustCluster(t, 3, func(c *Config) {
		c.Raft.TrailingLogs = 10
		c.Raft.SnapshotThreshold = 1 << 30 // snapshots only when asked
	})
	f := tc.follower()
	tc.stop(f)
	l := tc.waitLeader()
	var gkids []string
	for i := 0; i < 60; i++ {
		gkids = append(gkids, tc.mustGenerate(l, fmt.Sprintf("r%d", i%4), "").GetGkid())
	}
	if err := tc.nodes[l].Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	first, err := tc.nodes[l].logStore.FirstIndex()
	if err != nil || first <= 2 {
		t.Fatalf("log was not compacted (first index %d, %v)", first, err)
	}
	tc.start(f)
	for _, gk := range gkids {
		tc.mustGet(f, gk)
	}
	// Once caught up, the replicas hold identical state.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ia, ha, errA := tc.nodes[l].FSM().StateDigest(context.Background())
		ib, hb, errB := tc.nodes[f].FSM().StateDigest(context.Background())
		if errA == nil && errB == nil && ia == ib && ha == hb {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas differ: leader at %d, follower at %d", ia, ib)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNode_NoPlaintextOnDisk scans every file under every data directory for
// the bytes of keys the test generated and imported.
func TestNode_NoPlaintextOnDisk(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	var secrets [][]byte
	for i := 0; i < 10; i++ {
		md := tc.mustGenerate(i%3, "scan", "")
		secrets = append(secrets, tc.mustGet(i%3, md.GetGkid()))
	}
	imported := bytes.Repeat([]byte("IMPORTED-KEY-32-BYTES!!"), 2)[:32]
	if _, err := tc.keys(0).PutKey(ctxT(t), &cofferv1.PutKeyRequest{Resource: "scan", Material: imported}); err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, imported)
	// What the data encryption service handles: a plaintext, its context
	// and a data key.
	plaintext, ctxValue := []byte("PLAINTEXT-THE-SERVICE-ENCRYPTED"), "CONTEXT-VALUE-NEVER-STORED"
	if _, err := tc.crypto(1).Encrypt(ctxT(t), &cofferv1.EncryptRequest{Gkid: tc.mustGenerate(0, "scan", "").GetGkid(),
		Plaintext: plaintext, Context: map[string]string{"k": ctxValue}}); err != nil {
		t.Fatal(err)
	}
	dk, err := tc.crypto(2).GenerateDataKey(ctxT(t), &cofferv1.GenerateDataKeyRequest{Gkid: tc.mustGenerate(0, "scan", "").GetGkid()})
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, plaintext, []byte(ctxValue), dk.GetPlaintext())
	l := tc.waitLeader()
	if err := tc.nodes[l].Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	tc.stopAll() // flush everything to disk
	scanned := 0
	err = filepath.WalkDir(tc.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		scanned++
		for _, s := range secrets {
			if bytes.Contains(data, s) {
				return fmt.Errorf("plaintext key material found in %s", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if scanned < 10 {
		t.Fatalf("only %d files scanned", scanned)
	}
}

// retryable reports the errors a client retries: elections and timeouts.
func retryable(err error) bool {
	c := status.Code(err)
	return c == codes.Unavailable || c == codes.DeadlineExceeded
}

// blockedFuture is a Raft future that is never answered, as one left in
// Raft's apply buffer when Raft shuts down.
type blockedFuture struct{ block chan struct{} }

func (f blockedFuture) Error() error { <-f.block; return nil }

// TestFutureErrorStopsWithTheNode: waiting for a command's outcome ends
// when the node closes, even if Raft never answers, so Close cannot hang.
func TestFutureErrorStopsWithTheNode(t *testing.T) {
	n := &Node{stopCh: make(chan struct{})}
	f := blockedFuture{block: make(chan struct{})}
	defer close(f.block)
	got := make(chan error, 1)
	go func() { got <- n.futureError(f) }()
	close(n.stopCh)
	select {
	case err := <-got:
		if !errors.Is(err, ErrShuttingDown) {
			t.Fatalf("futureError after stop: %v, want ErrShuttingDown", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("futureError still waiting 10 s after the node stopped")
	}
}
