package node

import (
	"bytes"
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/internal/duration"
)

func fastCheckpoints(c *Config) {
	c.Audit.CheckpointInterval = duration.Duration(200 * time.Millisecond)
}

// waitCheckpoint waits until the leader has a checkpoint at or past seq.
func (tc *testCluster) waitCheckpoint(seq uint64) *cofferv1.AuditCheckpoint {
	tc.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if cp, err := tc.nodes[tc.waitLeader()].FSM().AuditCheckpoint(); err == nil && cp != nil && cp.GetSeq() >= seq {
			return cp
		}
		time.Sleep(20 * time.Millisecond)
	}
	tc.t.Fatalf("no checkpoint covering seq %d within 15s", seq)
	return nil
}

func (tc *testCluster) trustedKeys() audit.TrustedKeys {
	tc.t.Helper()
	var paths []string
	for _, c := range tc.cfgs {
		paths = append(paths, filepath.Join(c.DataDir, AuditKeyFile))
	}
	keys, err := audit.LoadTrustedKeys(paths...)
	if err != nil {
		tc.t.Fatal(err)
	}
	return keys
}

// TestNode_AuditCheckpointsAndPrune checks that the leader signs
// checkpoints that every replica accepts, that an export verifies offline
// against the nodes' published keys with every entry covered, and that
// pruning up to a checkpoint leaves a marker under which the rest of the
// chain still verifies.
func TestNode_AuditCheckpointsAndPrune(t *testing.T) {
	tc := mustCluster(t, 3, fastCheckpoints)
	ctx := ctxT(t)
	admin := tc.identity("app")
	for i := 0; i < 20; i++ {
		if _, err := admin.keys[i%3].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "cp"}); err != nil {
			t.Fatal(err)
		}
	}
	l := tc.waitLeader()
	head := tc.nodes[l].FSM().AuditHeadSeq()
	cp := tc.waitCheckpoint(head)
	g := auditGauges(t, tc.nodes[l])
	if g["coffer_audit_head_seq"] < float64(head) || g["coffer_audit_checkpoint_seq"] < float64(cp.GetSeq()) ||
		g["coffer_audit_checkpoint_age_seconds"] <= 0 || g["coffer_audit_diverged"] != 0 {
		t.Fatalf("audit gauges %v after a checkpoint at seq %d, head %d", g, cp.GetSeq(), head)
	}
	// The first checkpoint started the audit time index on every replica,
	// and a query by time through a follower uses it.
	deadline := time.Now().Add(10 * time.Second)
	for i := range tc.nodes {
		for !tc.nodes[i].FSM().AuditTimeIndexStarted() && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !tc.nodes[i].FSM().AuditTimeIndexStarted() {
			t.Fatalf("node %d has no audit time index after the checkpoint at %d", i, cp.GetSeq())
		}
	}
	mark := time.Now()
	time.Sleep(2 * time.Millisecond) // entry times are the nodes' clocks: strictly after mark
	late, err := admin.keys[1].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "cp"})
	if err != nil {
		t.Fatal(err)
	}
	q, err := cofferv1.NewAuditServiceClient(tc.connTo(tc.follower())).Query(ctx, &cofferv1.AuditQueryRequest{
		Since: timestamppb.New(mark), Operation: "generate", Consistency: cofferv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil {
		t.Fatal(err)
	}
	if len(q.GetEntries()) != 1 || q.GetEntries()[0].GetGkid() != late.GetKey().GetGkid() {
		t.Fatalf("since query found %d generate entries, want only %s", len(q.GetEntries()), late.GetKey().GetGkid())
	}

	trusted := tc.trustedKeys()
	var buf bytes.Buffer
	if err := tc.nodes[l].FSM().ExportAudit(0, &buf); err != nil {
		t.Fatal(err)
	}
	opts := audit.DefaultVerifyOptions()
	rep, err := audit.VerifyJSONL(bytes.NewReader(buf.Bytes()), trusted, opts)
	if err != nil {
		t.Fatalf("export does not verify: %v", err)
	}
	if rep.Checkpoints == 0 || rep.LastSeq < cp.GetSeq() {
		t.Fatalf("report %+v", rep)
	}
	// An export checked against a foreign key fails.
	other, _ := audit.LoadTrustedKeys(filepath.Join(tc.cfgs[0].DataDir, AuditKeyFile))
	if _, err := audit.VerifyJSONL(bytes.NewReader(buf.Bytes()), other, opts); err == nil && cp.GetSigner() != tc.cfgs[0].ID {
		t.Fatal("export verified against the wrong node's key")
	}

	// Exporting does not give the right to delete: a client granted
	// audit.export is refused a prune, and the refusal is recorded under
	// the operation it asked for.
	tc.mustRegisterApp(admin, l, "siem")
	tc.mustGrant(admin, l, "client:siem", "**", "audit.read", "audit.export")
	siem := tc.identity("siem")
	_, err = siem.audit[tc.follower()].Prune(ctx, &cofferv1.AuditPruneRequest{UpToSeq: cp.GetSeq()}) // forwarded to the leader
	wantCode(t, "prune with audit.export only", err, codes.PermissionDenied, "audit.prune")
	denied, err := siem.audit[l].Query(ctx, &cofferv1.AuditQueryRequest{Caller: "client:siem", Operation: "audit.prune",
		Outcome: "denied", Consistency: cofferv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil {
		t.Fatal(err)
	}
	if len(denied.GetEntries()) != 1 {
		t.Fatalf("%d denied audit.prune entries for siem, want 1", len(denied.GetEntries()))
	}

	// A prune by age with nothing that old: no marker, nothing pruned, no
	// error (a retention job runs it on a young cluster too).
	auditL := cofferv1.NewAuditServiceClient(tc.connTo(l))
	young, err := auditL.Prune(ctx, &cofferv1.AuditPruneRequest{Before: timestamppb.New(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC))})
	if err != nil || young.GetMarker() != nil || young.GetPruned() != 0 {
		t.Fatalf("prune before 2000: %+v, %v", young, err)
	}
	_, err = auditL.Prune(ctx, &cofferv1.AuditPruneRequest{})
	wantCode(t, "prune without a bound", err, codes.InvalidArgument, "up_to_seq or before")
	_, err = auditL.Prune(ctx, &cofferv1.AuditPruneRequest{UpToSeq: 1, Before: timestamppb.Now()})
	wantCode(t, "prune with two bounds", err, codes.InvalidArgument, "not both")

	// Prune up to the checkpoint; the rest still verifies from the marker.
	res, err := auditL.Prune(ctx, &cofferv1.AuditPruneRequest{UpToSeq: cp.GetSeq()})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetMarker().GetFirstSeq() != cp.GetSeq()+1 || res.GetPruned() != cp.GetSeq() {
		t.Fatalf("marker %+v, %d entries pruned; want entries 1 to %d", res.GetMarker(), res.GetPruned(), cp.GetSeq())
	}
	wantPruneReasons(ctx, t, auditL, "no checkpoint signed before 2000-01-01T00:00:00Z: nothing pruned",
		"entries up to seq "+strconv.FormatUint(cp.GetSeq(), 10)+" (checkpoint signed 20")
	buf.Reset()
	if err := tc.nodes[l].FSM().ExportAudit(0, &buf); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), `{"type":"marker"`) {
		t.Fatalf("pruned export does not start with its marker: %.80s", buf.String())
	}
	if _, err := audit.VerifyJSONL(bytes.NewReader(buf.Bytes()), trusted, opts); err != nil {
		t.Fatalf("pruned export does not verify: %v", err)
	}

	// Head, through a follower, tells where the log stands.
	// (Its own entry is committed after it answers: the head it reports is
	// at least the leader's before the call.)
	f := tc.follower()
	lseq, lhash, err := tc.nodes[l].FSM().AuditHead()
	if err != nil {
		t.Fatal(err)
	}
	hd, err := cofferv1.NewAuditServiceClient(tc.connTo(f)).Head(ctx, &cofferv1.AuditHeadRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if hd.GetNode() != tc.cfgs[f].ID || hd.GetHeadSeq() < lseq || (hd.GetHeadSeq() == lseq && !bytes.Equal(hd.GetHeadHash(), lhash)) ||
		hd.GetCheckpoint().GetSeq() < cp.GetSeq() || hd.GetPruned().GetFirstSeq() != cp.GetSeq()+1 {
		t.Fatalf("head %+v; leader head %d, checkpoint %d, pruned before %d", hd, lseq, cp.GetSeq(), cp.GetSeq()+1)
	}

	// By age: up to the newest checkpoint signed before now, which is at
	// least one taken after the first prune; the same time again prunes
	// nothing more.
	cp2 := tc.waitCheckpoint(tc.nodes[l].FSM().AuditHeadSeq())
	before := time.Now()
	byAge, err := auditL.Prune(ctx, &cofferv1.AuditPruneRequest{Before: timestamppb.New(before)})
	if err != nil {
		t.Fatal(err)
	}
	m := byAge.GetMarker()
	if m.GetFirstSeq() < cp2.GetSeq()+1 || byAge.GetPruned() != m.GetFirstSeq()-(cp.GetSeq()+1) || m.GetCheckpoint().GetTimeUnixNano() >= before.UnixNano() {
		t.Fatalf("prune before now: marker %+v, %d pruned; checkpoint %d was signed before", m, byAge.GetPruned(), cp2.GetSeq())
	}
	// Again, through a follower, which forwards it like every write: one
	// request, one entry.
	pruneMark := tc.nodes[l].FSM().AuditHeadSeq()
	again, err := cofferv1.NewAuditServiceClient(tc.connTo(f)).Prune(ctx, &cofferv1.AuditPruneRequest{Before: timestamppb.New(before)})
	if err != nil || again.GetPruned() != 0 || again.GetMarker().GetFirstSeq() != m.GetFirstSeq() {
		t.Fatalf("the same prune again, through a follower: %+v, %v", again, err)
	}
	pq, err := auditL.Query(ctx, &cofferv1.AuditQueryRequest{AfterSeq: pruneMark, Operation: "audit.prune", Consistency: cofferv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil {
		t.Fatal(err)
	}
	if es := pq.GetEntries(); len(es) != 1 || es[0].GetNode() != tc.cfgs[f].ID || es[0].GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
		t.Fatalf("a prune through a follower left %d audit.prune entries: %v", len(es), es)
	}
	// Each granted prune's entry names the checkpoint it went up to, which
	// the log keeps no other record of once a later prune moves the marker.
	// (The first prune's entry was itself pruned by the one by age.)
	byAgeReason := "entries up to seq " + strconv.FormatUint(m.GetCheckpoint().GetSeq(), 10) + " (checkpoint signed 20"
	wantPruneReasons(ctx, t, auditL, byAgeReason, byAgeReason)
}

// wantPruneReasons checks that the log holds one granted prune entry for
// each of want, oldest first, each reason starting with its want.
func wantPruneReasons(ctx context.Context, t *testing.T, c cofferv1.AuditServiceClient, want ...string) {
	t.Helper()
	res, err := c.Query(ctx, &cofferv1.AuditQueryRequest{Operation: "audit.prune", Outcome: "granted", Consistency: cofferv1.Consistency_CONSISTENCY_LINEARIZABLE})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range res.GetEntries() {
		got = append(got, e.GetReason())
	}
	if len(got) != len(want) {
		t.Fatalf("granted prune entries give reasons %q; want %d", got, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Fatalf("granted prune entry %d gives reason %q; want it to start %q", i, got[i], want[i])
		}
	}
}

func (tc *testCluster) connTo(i int) *grpc.ClientConn {
	tc.t.Helper()
	tc.keys(i)
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.conns[tc.cfgs[i].APIAddr]
}

// TestNode_AuditDivergenceStopsReplica edits an audit entry inside a
// stopped follower's store so its chain differs; at the next checkpoint the
// follower detects it and refuses every request, while the others serve.
func TestNode_AuditDivergenceStopsReplica(t *testing.T) {
	tc := mustCluster(t, 3, fastCheckpoints)
	ctx := ctxT(t)
	admin := tc.identity("app")
	if _, err := admin.keys[0].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "div"}); err != nil {
		t.Fatal(err)
	}
	f := tc.follower()
	seq := tc.nodes[tc.waitLeader()].FSM().AuditHeadSeq()
	tc.waitCheckpoint(seq)
	deadline := time.Now().Add(10 * time.Second)
	for tc.nodes[f].FSM().AuditHeadSeq() < seq && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	tc.stop(f)
	db, err := pebble.Open(filepath.Join(tc.cfgs[f].DataDir, "state"), &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// Rewrite the newest entry (and the head) as if its reason had been
	// edited and rehashed: a consistent but different local chain.
	v, closer, err := db.Get(auditKeyForTest(seq))
	if err != nil {
		t.Fatal(err)
	}
	var e cofferv1.AuditEntry
	_ = proto.Unmarshal(v, &e)
	closer.Close()
	e.Reason = "edited"
	audit.Link(e.GetPrevHash(), e.GetSeq(), &e)
	b, _ := proto.Marshal(&e)
	if err := db.Set(auditKeyForTest(seq), b, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	head := append(beUint64(seq), e.GetHash()...)
	if err := db.Set([]byte("m/audit"), head, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	tc.start(f)
	// More traffic, then a checkpoint of the (true) head reaches the edited
	// replica, which must stop serving.
	if _, err := admin.keys[tc.waitLeader()].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "div"}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for !tc.nodes[f].FSM().Diverged() {
		if time.Now().After(deadline) {
			t.Fatal("the edited replica did not notice")
		}
		// Checkpoints only cover entries the replica received after the
		// edit if they name the edited seq; force one at that seq.
		l := tc.waitLeader()
		if err := tc.nodes[l].checkpoint(seq, mustEntryHash(t, tc.nodes[l], seq), tc.nodes[l].auditSigner); err != nil {
			t.Logf("checkpoint: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = admin.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "k1-aaaaaaaaaa-aaaaaaaaaaaaaaaaaaaaaaaaaa"})
	wantCode(t, "diverged replica", err, codes.Unavailable, "diverged")
	if g := auditGauges(t, tc.nodes[f]); g["coffer_audit_diverged"] != 1 {
		t.Fatalf("the diverged replica's coffer_audit_diverged is %v, want 1", g["coffer_audit_diverged"])
	}
	if g := auditGauges(t, tc.nodes[tc.waitLeader()]); g["coffer_audit_diverged"] != 0 {
		t.Fatalf("a healthy replica's coffer_audit_diverged is %v, want 0", g["coffer_audit_diverged"])
	}
	if _, err := admin.keys[tc.waitLeader()].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "div"}); err != nil {
		t.Fatalf("healthy replicas stopped serving: %v", err)
	}
}

func mustEntryHash(t *testing.T, n *Node, seq uint64) []byte {
	t.Helper()
	var found []byte
	_ = n.FSM().ScanAudit(seq-1, func(e *cofferv1.AuditEntry) error {
		if e.GetSeq() == seq {
			found = e.GetHash()
		}
		return nil
	})
	if found == nil {
		t.Fatalf("no entry %d", seq)
	}
	return found
}

func auditKeyForTest(seq uint64) []byte { return append([]byte("l/"), beUint64(seq)...) }

func beUint64(v uint64) []byte {
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	return b
}

// auditGauges gathers a node's audit gauges by name.
func auditGauges(t *testing.T, n *Node) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(n.auditCollectors()...)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
	}
	return out
}

// TestNode_TimeIndexWaitsForEveryMember: the leader asks a checkpoint to
// start the audit time index (a version 4 command) only once every member
// reports a build that applies it; a member standing for an older build
// holds it back, and nothing stops.
func TestNode_TimeIndexWaitsForEveryMember(t *testing.T) {
	// Members are not admitted while one stands for an older build (pins
	// are a newer command still), so requests go to the leader.
	tc := mustClusterUnadmitted(t, 3, fastCheckpoints, nil)
	ctx := ctxT(t)
	old := tc.follower()
	tc.nodes[old].commandVersion.Store(fsm.TimeIndexVersion - 1)
	admin := tc.identity("app")
	l := tc.waitLeader()
	if _, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "ti"}); err != nil {
		t.Fatal(err)
	}
	cp := tc.waitCheckpoint(tc.nodes[l].FSM().AuditHeadSeq())
	st, err := cofferv1.NewClusterServiceClient(tc.connTo(l)).Status(ctx, &cofferv1.ClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.GetNodes() {
		want := uint32(fsm.CommandVersion)
		if s.GetId() == tc.cfgs[old].ID {
			want = fsm.TimeIndexVersion - 1
		}
		if s.GetCommandVersion() != want {
			t.Fatalf("%s reports command version %d, want %d", s.GetId(), s.GetCommandVersion(), want)
		}
	}
	for i := range tc.nodes {
		if tc.nodes[i].FSM().AuditTimeIndexStarted() {
			t.Fatalf("node %d started the time index (checkpoint %d) while a member reads only version %d", i, cp.GetSeq(), fsm.TimeIndexVersion-1)
		}
	}

	// The member is upgraded: while requests keep coming, a checkpoint
	// (the leader asks the members every sixth checkpoint interval) starts
	// it everywhere.
	tc.nodes[old].commandVersion.Store(fsm.CommandVersion)
	started := func() bool {
		for i := range tc.nodes {
			if !tc.nodes[i].FSM().AuditTimeIndexStarted() {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(15 * time.Second)
	for !started() && time.Now().Before(deadline) {
		if _, err := admin.keys[tc.waitLeader()].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "ti"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !started() {
		t.Fatalf("no time index on every node 15 s after every member reads version %d", fsm.TimeIndexVersion)
	}
}
