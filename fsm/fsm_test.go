package fsm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
)

func mustOpen(t *testing.T) *FSM {
	t.Helper()
	f, err := Open(DefaultConfig(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

func policy(name string) *cofferv1.PolicyRecord {
	return &cofferv1.PolicyRecord{
		Name: name, KekVersion: 1,
		Keks: []*cofferv1.WrappedKEK{{Version: 1, Wrapped: []byte("wrapped-kek-" + name)}},
	}
}

func mustMarshal(t *testing.T, m *cofferv1.Command) []byte {
	t.Helper()
	d, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

type cmdGen struct {
	rng   *rand.Rand
	gkids []string
	n     int
}

// next returns a random but valid-looking command, including ones that must
// fail (duplicates, unknown policies) so failure paths are exercised too.
func (g *cmdGen) next(t testing.TB) []byte {
	g.n++
	var data []byte
	var err error
	switch r := g.rng.Intn(10); {
	case g.n == 1:
		data, err = Encode(cofferv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &cofferv1.InitClusterCommand{
			Info: &cofferv1.ClusterInfo{ClusterId: "abcdefghij", CreatedUnixNano: 1}, DefaultPolicy: policy("default")})
	case g.n == 60:
		// Starts the audit time index midway (the checkpoint itself names
		// an entry that may not exist: refused alike everywhere).
		data, err = Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_CHECKPOINT, &cofferv1.AuditCheckpointCommand{
			Checkpoint: &cofferv1.AuditCheckpoint{Seq: 1, Head: make([]byte, 32), TimeUnixNano: 1, Signer: "n1",
				Signature: []byte("s"), PublicKey: []byte("k")},
			StartTimeIndex: true})
	case r == 5:
		// Audit entries with times from clocks that disagree.
		c := &cofferv1.AuditBatchCommand{}
		for i := 0; i <= g.rng.Intn(4); i++ {
			c.Entries = append(c.Entries, writeEntry("n1", 1e18+g.rng.Int63n(1e12)+int64(g.n)*1e10, fmt.Sprintf("req-%d-%d", g.n, i)))
		}
		data, err = Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, c)
	case r == 0:
		data, err = Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_POLICY, &cofferv1.CreatePolicyCommand{
			Policy: policy(fmt.Sprintf("p%d", g.rng.Intn(4)))})
	case r == 2:
		// Access-control changes, some of which must fail (duplicates,
		// stale revisions): the authorisation state must match too.
		name := fmt.Sprintf("c%d", g.rng.Intn(3))
		data, err = Encode(cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT, &cofferv1.PutClientCommand{
			Client:           &cofferv1.ClientRecord{Name: name, Active: g.rng.Intn(2) == 0, Groups: []string{"g"}, Revision: uint64(g.rng.Intn(2) + 1)},
			ExpectedRevision: uint64(g.rng.Intn(2)),
		})
	case r == 3:
		data, err = Encode(cofferv1.CommandType_COMMAND_TYPE_PUT_ACL_RULE, &cofferv1.PutAclRuleCommand{
			Rule: &cofferv1.AclRule{Id: fmt.Sprintf("r%d", g.rng.Intn(5)), Subject: "group:g", Operations: []string{"get"}, ResourcePattern: "res/**"}})
	case r == 4 && g.rng.Intn(3) == 0:
		// Member pins, admissions (kept if present) and replacements.
		fp := make([]byte, 32)
		g.rng.Read(fp)
		data, err = Encode(cofferv1.CommandType_COMMAND_TYPE_PIN_NODE, &cofferv1.PinNodeCommand{
			Node:         &cofferv1.NodeRecord{Id: fmt.Sprintf("n%d", g.rng.Intn(3)), CertSha256: fp},
			OnlyIfAbsent: g.rng.Intn(2) == 0})
	case r == 4:
		data, err = Encode(cofferv1.CommandType_COMMAND_TYPE_DELETE_ACL_RULE, &cofferv1.DeleteAclRuleCommand{Id: fmt.Sprintf("r%d", g.rng.Intn(5))})
	case r == 1 && len(g.gkids) > 0:
		// Same gkid again: must fail with ErrKeyExists on every replica.
		data, err = Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{
			Key: keyRec(g.gkids[g.rng.Intn(len(g.gkids))], "default", "r")})
	default:
		gk := fmt.Sprintf("k1-abcdefghij-%026d", g.rng.Int63())
		pol := []string{"default", "p0", "p1", "missing"}[g.rng.Intn(4)]
		g.gkids = append(g.gkids, gk)
		data, err = Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{
			Key:       keyRec(gk, pol, fmt.Sprintf("res/%d", g.rng.Intn(5))),
			RequestId: fmt.Sprintf("req-%d", g.rng.Intn(50)),
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func keyRec(gk, pol, res string) *cofferv1.KeyRecord {
	return &cofferv1.KeyRecord{
		Gkid: gk, Policy: pol, Resource: res, Owner: "client:app",
		Algorithm: cofferv1.Algorithm_ALGORITHM_AES_256, State: cofferv1.KeyState_KEY_STATE_ACTIVE,
		CreatedUnixNano: 42, KekVersion: 1, Revision: 1, WrappedMaterial: []byte("ciphertext-" + gk),
	}
}

func logs(start uint64, data ...[]byte) []*raft.Log {
	out := make([]*raft.Log, len(data))
	for i, d := range data {
		out[i] = &raft.Log{Index: start + uint64(i), Term: 1, Type: raft.LogCommand, Data: d}
	}
	return out
}

// snapshotBytes takes a snapshot of f the way Raft does and returns its
// stream.
func snapshotBytes(t *testing.T, f *FSM) *bytes.Buffer {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var buf bytes.Buffer
	if err := WriteSnapshot(snap.(*snapshot).snap, &buf); err != nil {
		t.Fatal(err)
	}
	return &buf
}

func mustHash(t *testing.T, f *FSM) [32]byte {
	t.Helper()
	idx, h, err := f.StateDigest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if idx != f.AppliedIndex() {
		t.Fatalf("state digest at index %d, applied index %d", idx, f.AppliedIndex())
	}
	return h
}

func TestFSM_DeterministicAcrossReplicas(t *testing.T) {
	for seed := int64(1); seed <= 5; seed++ {
		g := &cmdGen{rng: rand.New(rand.NewSource(seed))}
		var entries [][]byte
		for i := 0; i < 300; i++ {
			entries = append(entries, g.next(t))
		}
		a, b := mustOpen(t), mustOpen(t)
		// a applies one entry at a time, b in random batch sizes: the same state.
		for i, e := range entries {
			a.Apply(logs(uint64(i+1), e)[0])
		}
		rng := rand.New(rand.NewSource(seed * 7))
		for i := 0; i < len(entries); {
			n := 1 + rng.Intn(40)
			if i+n > len(entries) {
				n = len(entries) - i
			}
			b.ApplyBatch(logs(uint64(i+1), entries[i:i+n]...))
			i += n
		}
		if ha, hb := mustHash(t, a), mustHash(t, b); ha != hb {
			t.Fatalf("seed %d: replicas diverged", seed)
		}
		for _, name := range []string{"c0", "c1", "c2"} {
			req := authz.Request{Identity: "client:" + name, CertSerial: "1", Op: authz.OpGet, Resource: "res/x"}
			if da, db := a.Authz().Decide(req), b.Authz().Decide(req); da != db {
				t.Fatalf("seed %d: authorisation differs for %s: %+v vs %+v", seed, name, da, db)
			}
		}
		if a.AppliedIndex() != uint64(len(entries)) {
			t.Fatalf("applied %d, want %d", a.AppliedIndex(), len(entries))
		}
	}
}

func TestFSM_SnapshotRestoreMidway(t *testing.T) {
	g := &cmdGen{rng: rand.New(rand.NewSource(99))}
	var entries [][]byte
	for i := 0; i < 400; i++ {
		entries = append(entries, g.next(t))
	}
	cut := 1 + rand.New(rand.NewSource(3)).Intn(len(entries)-1)
	a := mustOpen(t)
	a.ApplyBatch(logs(1, entries[:cut]...))
	buf := snapshotBytes(t, a)
	a.ApplyBatch(logs(uint64(cut+1), entries[cut:]...))

	b := mustOpen(t)
	// b has unrelated state first: Restore must replace it entirely.
	b.ApplyBatch(logs(1, g.next(t), g.next(t)))
	if err := b.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if b.AppliedIndex() != uint64(cut) {
		t.Fatalf("restored applied index %d, want %d", b.AppliedIndex(), cut)
	}
	b.ApplyBatch(logs(uint64(cut+1), entries[cut:]...))
	if mustHash(t, a) != mustHash(t, b) {
		t.Fatal("restored replica diverged")
	}
}

func TestFSM_RestoreRejectsDamagedSnapshot(t *testing.T) {
	g := &cmdGen{rng: rand.New(rand.NewSource(5))}
	a := mustOpen(t)
	a.ApplyBatch(logs(1, g.next(t), g.next(t), g.next(t)))
	var buf, v1 bytes.Buffer
	if err := WriteSnapshot(a.db, &buf); err != nil {
		t.Fatal(err)
	}
	if err := writeSnapshotV1(a.db, &v1); err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{"empty": nil}
	for version, good := range map[string][]byte{"v2": buf.Bytes(), "v1": v1.Bytes()} {
		cases[version+" truncated"] = good[:len(good)/2]
		cases[version+" bit flip"] = flip(good, len(good)/2)
		cases[version+" bad magic"] = flip(good, 0)
		cases[version+" no trailer"] = good[:len(good)-sha256Size]
	}
	// A version 2 stream whose compressed content goes on after the
	// checksum.
	var long bytes.Buffer
	long.Write(snapMagicZstd)
	zw, err := zstd.NewWriter(&long)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(v1.Bytes())
	zw.Write([]byte("trailing"))
	zw.Close()
	cases["v2 data after the checksum"] = long.Bytes()
	for name, data := range cases {
		b := mustOpen(t)
		err := b.Restore(io.NopCloser(bytes.NewReader(data)))
		if !errors.Is(err, ErrBadSnapshot) {
			t.Errorf("%s: err = %v, want ErrBadSnapshot", name, err)
		}
	}
}

// Snapshots are written compressed (version 2); a replica still restores a
// version 1 stream, which earlier builds wrote and backups may hold.
func TestFSM_SnapshotVersions(t *testing.T) {
	g := &cmdGen{rng: rand.New(rand.NewSource(9))}
	a := mustOpen(t)
	var cmds [][]byte
	for range 200 {
		cmds = append(cmds, g.next(t))
	}
	a.ApplyBatch(logs(1, cmds...))
	var v1, v2 bytes.Buffer
	if err := writeSnapshotV1(a.db, &v1); err != nil {
		t.Fatal(err)
	}
	if err := WriteSnapshot(a.db, &v2); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(v2.Bytes(), snapMagicZstd) || v2.Len() >= v1.Len() {
		t.Fatalf("WriteSnapshot wrote %d bytes (prefix %q) for a %d-byte version 1 stream, want a smaller version 2 stream",
			v2.Len(), v2.Bytes()[:len(snapMagicZstd)], v1.Len())
	}
	for name, stream := range map[string][]byte{"v1": v1.Bytes(), "v2": v2.Bytes()} {
		b := mustOpen(t)
		if err := b.Restore(io.NopCloser(bytes.NewReader(stream))); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if mustHash(t, a) != mustHash(t, b) {
			t.Fatalf("%s: the restored replica differs", name)
		}
	}
}

const sha256Size = 32

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x40
	return c
}

func TestFSM_InterruptedRestoreIsDiscardedOnOpen(t *testing.T) {
	dir := t.TempDir()
	f, err := Open(DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	g := &cmdGen{rng: rand.New(rand.NewSource(8))}
	f.ApplyBatch(logs(1, g.next(t), g.next(t)))
	// Simulate a crash between the restore marker and the end of Restore.
	if err := f.db.Set(keyRestoring, []byte{1}, nil); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	f2, err := Open(DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	if f2.AppliedIndex() != 0 {
		t.Fatalf("applied index %d after discarding, want 0", f2.AppliedIndex())
	}
	if _, err := f2.Cluster(); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("state survived: %v", err)
	}
}

func TestFSM_ReopenResumesWithoutReplay(t *testing.T) {
	dir := t.TempDir()
	f, err := Open(DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	g := &cmdGen{rng: rand.New(rand.NewSource(11))}
	f.ApplyBatch(logs(1, g.next(t), g.next(t), g.next(t)))
	h1 := mustHash(t, f)
	_ = f.Close()
	f2, err := Open(DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	if f2.AppliedIndex() != 3 {
		t.Fatalf("applied %d, want 3", f2.AppliedIndex())
	}
	// Raft replaying old entries is a no-op.
	res := f2.ApplyBatch(logs(2, g.next(t), g.next(t)))
	for _, r := range res {
		if !errors.Is(r.(Result).Err, ErrStaleIndex) {
			t.Fatalf("replayed entry result %v, want ErrStaleIndex", r)
		}
	}
	if mustHash(t, f2) != h1 {
		t.Fatal("replay changed state")
	}
}

func TestFSM_CreateKeyRules(t *testing.T) {
	f := mustOpen(t)
	enc := func(m *cofferv1.CreateKeyCommand) []byte {
		d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, m)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	initCmd, _ := Encode(cofferv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &cofferv1.InitClusterCommand{
		Info: &cofferv1.ClusterInfo{ClusterId: "abcdefghij"}, DefaultPolicy: policy("default")})
	k1 := keyRec("k1-abcdefghij-aaaaaaaaaaaaaaaaaaaaaaaaaa", "default", "r1")
	k2 := keyRec("k1-abcdefghij-bbbbbbbbbbbbbbbbbbbbbbbbbb", "default", "r1")
	badKek := keyRec("k1-abcdefghij-cccccccccccccccccccccccccc", "default", "r1")
	badKek.KekVersion = 9
	res := f.ApplyBatch(logs(1,
		initCmd,
		enc(&cofferv1.CreateKeyCommand{Key: k1, RequestId: "r"}),
		enc(&cofferv1.CreateKeyCommand{Key: k2, RequestId: "r"}), // same request id: first result
		enc(&cofferv1.CreateKeyCommand{Key: k1}),                 // same gkid
		enc(&cofferv1.CreateKeyCommand{Key: keyRec("k1-abcdefghij-dddddddddddddddddddddddddd", "nope", "r")}),
		enc(&cofferv1.CreateKeyCommand{Key: badKek}),
		initCmd,
	))
	want := []error{nil, nil, nil, ErrKeyExists, ErrPolicyNotFound, ErrKEKVersionUnknown, ErrAlreadyInitialized}
	for i, w := range want {
		got := res[i].(Result).Err
		if (w == nil && got != nil) || (w != nil && !errors.Is(got, w)) {
			t.Errorf("entry %d: err %v, want %v", i+1, got, w)
		}
	}
	if r := res[2].(Result); !r.Duplicate || r.Key.GetGkid() != k1.Gkid {
		t.Fatalf("retried request: %+v, want duplicate of %s", r, k1.Gkid)
	}
	if _, err := f.Key(k2.Gkid); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second key of a retried request was stored: %v", err)
	}
	if gk, ok, _ := f.RequestKey("client:app", "r"); !ok || gk != k1.Gkid {
		t.Fatalf("RequestKey = %q %v", gk, ok)
	}
}

func TestFSM_UndecodableEntryPanics(t *testing.T) {
	f := mustOpen(t)
	for name, data := range map[string][]byte{
		"garbage":      {0xff, 0xff, 0xff},
		"unknown type": mustMarshal(t, &cofferv1.Command{Type: 999, Version: 1}),
		"newer":        mustMarshal(t, &cofferv1.Command{Type: cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, Version: 99}),
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data})
		}()
	}
	if f.AppliedIndex() != 0 {
		t.Fatal("a refused entry advanced the applied index")
	}
}

func TestFSM_ListKeysPages(t *testing.T) {
	f := mustOpen(t)
	initCmd, _ := Encode(cofferv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &cofferv1.InitClusterCommand{
		Info: &cofferv1.ClusterInfo{ClusterId: "abcdefghij"}, DefaultPolicy: policy("default")})
	pcmd, _ := Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_POLICY, &cofferv1.CreatePolicyCommand{Policy: policy("other")})
	entries := [][]byte{initCmd, pcmd}
	for i := 0; i < 25; i++ {
		pol, res := "default", "even"
		if i%2 == 1 {
			pol, res = "other", "odd"
		}
		d, _ := Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{
			Key: keyRec(fmt.Sprintf("k1-abcdefghij-%026d", i), pol, res)})
		entries = append(entries, d)
	}
	f.ApplyBatch(logs(1, entries...))
	count := func(filter ListFilter, size int) int {
		n, tok, pages := 0, "", 0
		for {
			keys, next, err := f.ListKeys(filter, tok, size)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range keys {
				if filter.Policy != "" && k.Policy != filter.Policy || filter.Resource != "" && k.Resource != filter.Resource {
					t.Fatalf("filter %+v returned %s/%s", filter, k.Policy, k.Resource)
				}
			}
			n += len(keys)
			pages++
			if next == "" {
				return n
			}
			if pages > 100 {
				t.Fatal("paging does not end")
			}
			tok = next
		}
	}
	for _, c := range []struct {
		f    ListFilter
		want int
	}{{ListFilter{}, 25}, {ListFilter{Policy: "default"}, 13}, {ListFilter{Resource: "odd"}, 12},
		{ListFilter{Policy: "other", Resource: "odd"}, 12}, {ListFilter{Policy: "other", Resource: "even"}, 0}} {
		for _, size := range []int{1, 4, 100} {
			if got := count(c.f, size); got != c.want {
				t.Errorf("filter %+v page %d: %d keys, want %d", c.f, size, got, c.want)
			}
		}
	}
	if _, _, err := f.ListKeys(ListFilter{}, "%%%", 10); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("bad token: %v", err)
	}
}

func TestFSM_WaitApplied(t *testing.T) {
	f := mustOpen(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f.WaitApplied(ctx, 2) }()
	g := &cmdGen{rng: rand.New(rand.NewSource(1))}
	f.ApplyBatch(logs(1, g.next(t)))
	f.ApplyBatch(logs(2, g.next(t)))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if err := f.WaitApplied(short, 100); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitApplied beyond the log: %v", err)
	}
}
