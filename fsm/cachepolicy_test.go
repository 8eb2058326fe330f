package fsm

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func cacheCmd(t *testing.T, typ cofferv1.CommandType, m proto.Message) []byte {
	t.Helper()
	d, err := Encode(typ, m)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func setDefault(t *testing.T, p *cofferv1.ClientCachePolicy, expected uint64, clear bool, op string) []byte {
	return cacheCmd(t, cofferv1.CommandType_COMMAND_TYPE_SET_CACHE_POLICY, &cofferv1.SetCachePolicyCommand{
		Policy: p, ExpectedRevision: expected, Clear: clear, Audit: &cofferv1.AuditEntry{Operation: op, Caller: "client:so"}})
}

func flushCmd(t *testing.T) []byte {
	return cacheCmd(t, cofferv1.CommandType_COMMAND_TYPE_FLUSH_CACHES, &cofferv1.FlushCachesCommand{
		Audit: &cofferv1.AuditEntry{Operation: "cache.flush", Caller: "client:so"}})
}

func cachePol(ttl time.Duration, rev uint64, ops ...string) *cofferv1.ClientCachePolicy {
	return &cofferv1.ClientCachePolicy{Ttl: durationpb.New(ttl), MaxEntries: 10, MaxUses: 3, AllowedOperations: ops, Revision: rev}
}

// TestFSM_CachePolicyApply sets, conflicts, refuses and clears the cluster
// default, raises the generation, and links each command's audit entry with
// its outcome.
func TestFSM_CachePolicyApply(t *testing.T) {
	f := mustOpen(t)
	client := &cofferv1.ClientRecord{Name: "app", Active: true, Revision: 1}
	put := cacheCmd(t, cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT, &cofferv1.PutClientCommand{Client: client})

	cmds := [][]byte{
		put,
		setDefault(t, cachePol(time.Minute, 1, "get", "decrypt"), 0, false, "cache.manage"), // ok: revision 1
		setDefault(t, cachePol(time.Hour, 1, "get"), 0, false, "cache.manage"),              // conflict: at 1
		setDefault(t, cachePol(48*time.Hour, 2, "get"), 1, false, "cache.manage"),           // ttl too long
		setDefault(t, cachePol(time.Hour, 2, "get", "fly"), 1, false, "cache.manage"),       // unknown op
		setDefault(t, cachePol(time.Hour, 2, "get", "get"), 1, false, "cache.manage"),       // repeated op
		setDefault(t, &cofferv1.ClientCachePolicy{Revision: 2, Source: "client"}, 1, false, "cache.manage"),
		setDefault(t, cachePol(time.Hour, 1, "get"), 1, true, "cache.manage"), // clear with a policy
		flushCmd(t),
		flushCmd(t),
	}
	res := f.ApplyBatch(logs(1, cmds...))
	wantErr := []error{nil, nil, ErrConflict, ErrInvalidCommand, ErrInvalidCommand, ErrInvalidCommand, ErrInvalidCommand, ErrInvalidCommand, nil, nil}
	for i, w := range wantErr {
		got := res[i].(Result).Err
		if (w == nil) != (got == nil) || (w != nil && !errors.Is(got, w)) {
			t.Errorf("command %d: err %v, want %v", i, got, w)
		}
	}
	if r := res[1].(Result).CachePolicy; r.GetSource() != CacheSourceDefault || r.GetRevision() != 1 || r.GetTtl().AsDuration() != time.Minute {
		t.Errorf("set default result %v", r)
	}
	if g := res[9].(Result).CacheGeneration; g != 2 {
		t.Errorf("second flush raised the generation to %d, want 2", g)
	}
	if g, err := f.CacheGeneration(); err != nil || g != 2 {
		t.Fatalf("generation %d, %v", g, err)
	}
	p, err := f.CachePolicy("app")
	if err != nil {
		t.Fatal(err)
	}
	if p.GetSource() != CacheSourceDefault || p.GetRevision() != 1 || p.GetGeneration() != 2 || p.GetMaxUses() != 3 {
		t.Errorf("policy in force for app: %v", p)
	}
	if _, err := f.CachePolicy("nobody"); !errors.Is(err, ErrClientNotFound) {
		t.Errorf("unknown client: %v", err)
	}
	// Every command carrying an entry (all but the first) linked it:
	// granted or failed.
	entries, _, err := f.AuditEntries(0, 100, AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(cmds)-1 {
		t.Fatalf("%d entries linked, want %d", len(entries), len(cmds)-1)
	}
	if o := entries[1].GetOutcome(); o != cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED {
		t.Errorf("conflicting set linked as %v", o)
	}
	if o := entries[7].GetOutcome(); o != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
		t.Errorf("flush linked as %v", o)
	}

	// A client's own policy (in its record) wins over the default.
	own := proto.CloneOf(client)
	own.Revision, own.CachePolicy = 2, cachePol(10*time.Second, 0, "encrypt")
	bad := proto.CloneOf(own)
	bad.Revision, bad.CachePolicy = 3, cachePol(time.Second, 0, "sign")
	n := uint64(len(cmds))
	res = f.ApplyBatch(logs(n+1,
		cacheCmd(t, cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT, &cofferv1.PutClientCommand{Client: own, ExpectedRevision: 1}),
		cacheCmd(t, cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT, &cofferv1.PutClientCommand{Client: bad, ExpectedRevision: 2}),
		setDefault(t, nil, 1, true, "cache.manage"),
	))
	if err := res[0].(Result).Err; err != nil {
		t.Fatal(err)
	}
	if err := res[1].(Result).Err; !errors.Is(err, ErrInvalidCommand) {
		t.Errorf("client record with a bad cache policy: %v", err)
	}
	if r := res[2].(Result); r.Err != nil || r.CachePolicy.GetRevision() != 0 || r.CachePolicy.GetTtl().AsDuration() != 5*time.Minute {
		t.Errorf("clear: %v %v", r.Err, r.CachePolicy)
	}
	if p, _ := f.CachePolicy("app"); p.GetSource() != CacheSourceClient || p.GetRevision() != 2 || p.GetTtl().AsDuration() != 10*time.Second {
		t.Errorf("own policy in force: %v", p)
	}
	if d, err := f.DefaultCachePolicy(); err != nil || d != nil {
		t.Errorf("default after clear: %v, %v", d, err)
	}
	if b := PolicyInForce(nil, nil, 7); b.GetRevision() != 0 || b.GetGeneration() != 7 || len(b.GetAllowedOperations()) != 1 || b.GetAllowedOperations()[0] != "get" {
		t.Errorf("built-in default: %v", b)
	}
}

// TestFSM_CachePolicySnapshotRestore carries the default and the generation
// through a snapshot into another replica, which then applies the same
// commands to the same state.
func TestFSM_CachePolicySnapshotRestore(t *testing.T) {
	a := mustOpen(t)
	a.ApplyBatch(logs(1, setDefault(t, cachePol(time.Minute, 1, "get"), 0, false, "cache.manage"), flushCmd(t)))
	buf := snapshotBytes(t, a)
	more := [][]byte{flushCmd(t), setDefault(t, cachePol(time.Hour, 2, "get", "encrypt"), 1, false, "cache.manage")}
	a.ApplyBatch(logs(3, more...))

	b := mustOpen(t)
	b.ApplyBatch(logs(1, flushCmd(t), flushCmd(t), flushCmd(t)))
	if err := b.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if g, _ := b.CacheGeneration(); g != 1 {
		t.Fatalf("restored generation %d, want 1", g)
	}
	if d, _ := b.DefaultCachePolicy(); d.GetRevision() != 1 || d.GetTtl().AsDuration() != time.Minute {
		t.Fatalf("restored default %v", d)
	}
	b.ApplyBatch(logs(3, more...))
	if mustHash(t, a) != mustHash(t, b) {
		t.Fatal("restored replica diverged")
	}
	if g, _ := b.CacheGeneration(); g != 2 {
		t.Fatalf("generation %d after the log, want 2", g)
	}
	if c := commandOf(t, more[0]); c.GetVersion() != CacheVersion {
		t.Errorf("flush written as version %d, want %d", c.GetVersion(), CacheVersion)
	}
	withPolicy := cacheCmd(t, cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT, &cofferv1.PutClientCommand{
		Client: &cofferv1.ClientRecord{Name: "a", Revision: 1, CachePolicy: cachePol(time.Minute, 0)}, Audit: &cofferv1.AuditEntry{Operation: "cache.manage"}})
	if c := commandOf(t, withPolicy); c.GetVersion() != CacheVersion {
		t.Errorf("client record with a cache policy written as version %d, want %d", c.GetVersion(), CacheVersion)
	}
}
