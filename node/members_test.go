package node

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// dialAs opens a gRPC connection to node i presenting conf's certificate.
func (tc *testCluster) dialAs(conf transport.TLSConfig, i int) *grpc.ClientConn {
	tc.t.Helper()
	tlsConf, err := conf.ClientTLS()
	if err != nil {
		tc.t.Fatal(err)
	}
	conn, err := transport.Dial(tc.cfgs[i].APIAddr, tlsConf, testenv.Signing(tc.t, tlsConf))
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func mustCertFile(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// internalDoors calls every internal RPC through conn and returns each
// door's error.
func internalDoors(ctx context.Context, conn *grpc.ClientConn, resource string) map[memberDoor]error {
	in := cofferv1.NewInternalServiceClient(conn)
	out := map[memberDoor]error{}
	_, out[doorForward] = in.Forward(ctx, &cofferv1.ForwardRequest{
		Caller: &cofferv1.Caller{Identity: "client:app", CertSerial: "01", Node: "n1"},
		Op:     &cofferv1.ForwardRequest_GenerateKey{GenerateKey: &cofferv1.GenerateKeyRequest{Resource: resource}}})
	_, out[doorReadIndex] = in.ReadIndex(ctx, &cofferv1.ReadIndexRequest{})
	_, out[doorAppendAudit] = in.AppendAudit(ctx, &cofferv1.AppendAuditRequest{Entries: []*cofferv1.AuditEntry{{
		TimeUnixNano: time.Now().UnixNano(), Node: "n1", Caller: "client:app", Operation: "get", Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED}}})
	_, out[doorStatus] = cofferv1.NewClusterServiceClient(conn).LocalStatus(ctx, &cofferv1.NodeStatusRequest{})
	return out
}

// raftAppend sends one AppendEntries to node i's Raft port from a transport
// presenting conf's certificate.
func (tc *testCluster) raftAppend(conf transport.TLSConfig, i int) error {
	tc.t.Helper()
	srv, err := conf.PeerServerTLS()
	if err != nil {
		tc.t.Fatal(err)
	}
	cli, err := conf.ClientTLS()
	if err != nil {
		tc.t.Fatal(err)
	}
	trans, err := transport.NewRaftTransport(transport.RaftTransportConfig{BindAddr: "127.0.0.1:0", Server: srv, Client: cli,
		Timeout: 2 * time.Second, Logger: hclog.NewNullLogger()})
	if err != nil {
		tc.t.Fatal(err)
	}
	defer trans.Close()
	req := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n9"),
		Addr: trans.EncodePeer("n9", trans.LocalAddr())}, Term: 1 << 40}
	var resp raft.AppendEntriesResponse
	return trans.AppendEntries(raft.ServerID(tc.cfgs[i].ID), raft.ServerAddress(tc.cfgs[i].RaftAddr), req, &resp)
}

// waitDenied waits until node l's audit log holds a denied entry of op by
// caller whose reason contains reason.
func (tc *testCluster) waitDenied(l int, op memberDoor, caller, reason string) {
	tc.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		entries, _, err := tc.nodes[l].FSM().AuditEntries(1, 100000, fsm.AuditFilter{})
		if err != nil {
			tc.t.Fatal(err)
		}
		for _, e := range entries {
			if e.GetOperation() == string(op) && e.GetCaller() == caller && e.GetOutcome() == cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED &&
				strings.Contains(e.GetReason(), reason) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc.t.Fatalf("no denied %s entry for %s mentioning %q", op, caller, reason)
}

// TestNode_OnlyMembersAreNodes: a node certificate from the node CA is not
// enough. A non-member, a second certificate minted for a member, and a
// member whose certificate was revoked are refused on every internal door
// and on the Raft port; each refusal is audited; a client identity from
// the client CA cannot pose as a node; and an operator's re-pin moves trust
// to a member's renewed certificate.
func TestNode_OnlyMembersAreNodes(t *testing.T) {
	// The doors are knocked on with a made-up client's write, which no
	// client signed (signatures_test.go checks that the leader refuses
	// those by default).
	tc := mustCluster(t, 3, func(c *Config) { c.AllowUnsignedRequests = true })
	ctx := ctxT(t)
	l := tc.waitLeader()
	f := (l + 1) % 3
	start := tc.nodes[l].FSM().AuditHeadSeq()

	// Every member's pin is its configured certificate, in every status.
	for i, c := range tc.cfgs {
		sum := sha256.Sum256(mustCertFile(t, c.TLS.CertFile).Raw)
		if pin := tc.nodes[l].FSM().NodePins()[c.ID]; pin == nil || hex.EncodeToString(pin.GetCertSha256()) != hex.EncodeToString(sum[:]) {
			t.Fatalf("member %d pin = %v; want its certificate", i, pin)
		}
	}
	// Each node reports the pin its own state holds, once it has applied it.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := cofferv1.NewClusterServiceClient(tc.connTo(l)).Status(ctx, &cofferv1.ClusterStatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		missing := ""
		for _, n := range st.GetNodes() {
			if len(n.GetPinnedCertSha256()) != 64 {
				missing = n.GetId()
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("status of %s shows no pin: %v", missing, st)
		}
	}
	// The real member's certificate works on every door.
	for door, err := range internalDoors(ctx, tc.dialAs(tc.cfgs[f].TLS, l), "member/key") {
		if door == doorForward || door == doorReadIndex || door == doorStatus {
			if err != nil {
				t.Fatalf("member %s on %s: %v", tc.cfgs[f].ID, door, err)
			}
		}
	}

	rogue := tc.issue(transport.Identity{Kind: transport.KindNode, Name: "n9"})
	minted := tc.issue(transport.Identity{Kind: transport.KindNode, Name: tc.cfgs[f].ID})
	for _, c := range []struct {
		name   string
		conf   transport.TLSConfig
		caller string
		code   codes.Code
		msg    string
	}{
		{"non-member", rogue, "node:n9", codes.PermissionDenied, "not in the Raft configuration"},
		{"minted for a member", minted, "node:" + tc.cfgs[f].ID, codes.PermissionDenied, "pinned at its admission"},
	} {
		for door, err := range internalDoors(ctx, tc.dialAs(c.conf, l), "stolen/key") {
			wantCode(t, c.name+" on "+string(door), err, c.code, c.msg)
			tc.waitDenied(l, door, c.caller, c.msg)
		}
		if err := tc.raftAppend(c.conf, l); err == nil {
			t.Fatalf("%s: the Raft port accepted it", c.name)
		}
		tc.waitDenied(l, doorRaft, c.caller, c.msg)
	}
	// Nothing was generated for the forged forwards.
	admin := tc.identity("app")
	if keys, err := admin.keys[l].ListKeys(ctx, &cofferv1.ListKeysRequest{Resource: "stolen/key"}); err != nil || len(keys.GetKeys()) != 0 {
		t.Fatalf("forged forward created keys: %v %v", keys, err)
	}

	// A client of the client CA cannot call the internal service.
	for door, err := range internalDoors(ctx, tc.dialAs(tc.issue(transport.Identity{Kind: transport.KindClient, Name: "app"}), l), "stolen/key") {
		if door != doorStatus {
			wantCode(t, "client on "+string(door), err, codes.PermissionDenied, "not a node identity")
		}
	}

	// A renewed certificate for the follower: refused until an operator
	// pins it; then the new one works, the old one too until the member
	// presents the new one, and then only the new one.
	renewed := tc.issue(transport.Identity{Kind: transport.KindNode, Name: tc.cfgs[f].ID})
	wantCode(t, "renewed before pin", internalDoors(ctx, tc.dialAs(renewed, l), "stolen/key")[doorReadIndex], codes.PermissionDenied, "pinned at its admission")
	cs := cofferv1.NewClusterServiceClient(tc.connTo(f))
	_, err := cs.PinNode(ctx, &cofferv1.PinNodeRequest{Node: "n9", CertificatePem: mustRead(t, rogue.CertFile)})
	wantCode(t, "pin a non-member", err, codes.NotFound, "not a member")
	_, err = cs.PinNode(ctx, &cofferv1.PinNodeRequest{Node: tc.cfgs[f].ID, CertificatePem: mustRead(t, rogue.CertFile)})
	wantCode(t, "pin another node's certificate", err, codes.InvalidArgument, "carries the identity node:n9")
	_, err = cs.PinNode(ctx, &cofferv1.PinNodeRequest{Node: tc.cfgs[f].ID, CertificatePem: []byte("junk")})
	wantCode(t, "pin junk", err, codes.InvalidArgument, "PEM")
	_, err = cofferv1.NewClusterServiceClient(tc.dialAs(tc.issue(transport.Identity{Kind: transport.KindClient, Name: "eve"}), f)).
		PinNode(ctx, &cofferv1.PinNodeRequest{Node: tc.cfgs[f].ID, CertificatePem: mustRead(t, renewed.CertFile)})
	wantCode(t, "pin without cluster.manage", err, codes.PermissionDenied, "")
	resp, err := cs.PinNode(ctx, &cofferv1.PinNodeRequest{Node: tc.cfgs[f].ID, CertificatePem: mustRead(t, renewed.CertFile)})
	if err != nil {
		t.Fatal(err)
	}
	oldSum := sha256.Sum256(mustCertFile(t, tc.cfgs[f].TLS.CertFile).Raw)
	if resp.GetPreviousSha256() != hex.EncodeToString(oldSum[:]) || len(resp.GetCertSha256()) != 64 {
		t.Fatalf("pin response %+v", resp)
	}
	if _, err := cofferv1.NewInternalServiceClient(tc.dialAs(renewed, l)).ReadIndex(ctx, &cofferv1.ReadIndexRequest{}); err != nil {
		t.Fatalf("renewed certificate after its pin: %v", err)
	}
	// The old certificate stays accepted until the member shows the new
	// one, so that a renewal costs no outage.
	if _, err := cofferv1.NewInternalServiceClient(tc.dialAs(tc.cfgs[f].TLS, l)).ReadIndex(ctx, &cofferv1.ReadIndexRequest{}); err != nil {
		t.Fatalf("old certificate before the member restarted with the new one: %v", err)
	}
	entries, _, err := tc.nodes[l].FSM().AuditEntries(start, 100000, fsm.AuditFilter{Operation: "cluster.manage"})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range entries {
		found = found || (e.GetOutcome() == cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED && e.GetClient() == "node:"+tc.cfgs[f].ID &&
			strings.Contains(e.GetReason(), "replacing sha256:"+hex.EncodeToString(oldSum[:])))
	}
	if !found {
		t.Fatalf("no granted re-pin entry naming the old and new pins in %v", entries)
	}
	// Restarted with the renewed certificate, the follower serves again,
	// and the leader retires the old certificate once it has seen the new.
	oldTLS := tc.cfgs[f].TLS
	tc.stop(f)
	tc.cfgs[f].TLS = renewed
	tc.start(f)
	var werr error
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		// Unavailable until the restarted member has heard from the leader.
		if _, werr = admin.keys[f].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "after/repin", RequestId: "repin-1"}); status.Code(werr) != codes.Unavailable {
			break
		}
	}
	if werr != nil {
		t.Fatalf("write through the re-pinned member: %v", werr)
	}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		l = tc.waitLeader()
		if pin := tc.nodes[l].FSM().NodePins()[tc.cfgs[f].ID]; len(pin.GetPreviousSha256()) == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the previous certificate was never retired")
		}
	}
	wantCode(t, "old certificate once retired", internalDoors(ctx, tc.dialAs(oldTLS, l), "stolen/key")[doorReadIndex], codes.PermissionDenied, "pinned at its admission")
	tc.waitDenied(l, doorReadIndex, "node:"+tc.cfgs[f].ID, "pinned at its admission")
}

// A member whose certificate is revoked is cut off: its internal calls are
// refused with Unauthenticated, its open Raft connections are closed, and
// new ones refused, while the rest of the cluster goes on.
func TestNode_RevokedMemberCutOff(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	l := tc.waitLeader()
	f := (l + 1) % 3
	admin := tc.identity("app")
	serial := authz.FormatSerial(mustCertFile(t, tc.cfgs[f].TLS.CertFile).SerialNumber)
	if _, err := admin.access[l].RevokeCertificate(ctx, &cofferv1.RevokeCertificateRequest{Serial: serial, Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	// A client's write sent to the revoked member is not refused as the
	// client's own fault: the leader refused the node, so the member
	// answers Unavailable (another node can serve it).
	_, err := admin.keys[f].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "via/revoked"})
	wantCode(t, "a client's write through the revoked member", err, codes.Unavailable, "")
	t.Logf("write through the revoked member: %v", err)
	for door, err := range internalDoors(ctx, tc.dialAs(tc.cfgs[f].TLS, l), "stolen/key") {
		wantCode(t, "revoked member on "+string(door), err, codes.Unauthenticated, "is revoked")
		tc.waitDenied(l, door, "node:"+tc.cfgs[f].ID, "is revoked")
	}
	tc.waitDenied(l, doorRaft, "node:"+tc.cfgs[f].ID, "is revoked")
	// The others still commit; the revoked member falls behind.
	behind := tc.nodes[f].FSM().AppliedIndex()
	t.Logf("%s behind=%d leader=%d", time.Now().Format("15:04:05.000"), behind, tc.nodes[l].FSM().AppliedIndex())
	for i := 0; i < 5; i++ {
		if _, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "after/revoke"}); err != nil {
			t.Fatal(err)
		}
	}
	lead := tc.nodes[l].FSM().AppliedIndex()
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if got := tc.nodes[f].FSM().AppliedIndex(); got >= lead {
			t.Fatalf("revoked member kept up: applied %d (leader %d, %d at revocation)", got, lead, behind)
		}
	}
	if err := tc.raftAppend(tc.cfgs[f].TLS, l); err == nil {
		t.Fatal("the Raft port accepted the revoked member's certificate")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
