package fsm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"testing"

	"github.com/hashicorp/raft"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func mustDigest(t *testing.T, f *FSM) (uint64, [32]byte) {
	t.Helper()
	idx, sum, err := f.StateDigest(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return idx, sum
}

func digestCommands(t *testing.T, seed int64, n int) [][]byte {
	t.Helper()
	g := &cmdGen{rng: rand.New(rand.NewSource(seed))}
	out := make([][]byte, n)
	for i := range out {
		out[i] = g.next(t)
	}
	return out
}

// Two replicas fed the same commands, one entry at a time and in one
// batch, report the same digest at the same index; one more command on
// one of them changes its digest, and the other agrees again once it has
// applied it too.
func TestFSM_StateDigestSameLog(t *testing.T) {
	cmds := digestCommands(t, 21, 201)
	a, b := mustOpen(t), mustOpen(t)
	for i, c := range cmds[:200] {
		a.Apply(logs(uint64(i+1), c)[0])
	}
	b.ApplyBatch(logs(1, cmds[:200]...))
	ia, da := mustDigest(t, a)
	ib, db := mustDigest(t, b)
	if ia != 200 || ib != 200 {
		t.Fatalf("digest indexes %d and %d, want 200", ia, ib)
	}
	if da != db {
		t.Fatalf("replicas at index 200 differ: %x and %x", da, db)
	}

	more := writeEntry("n1", 1e18, "one-more")
	next, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, &cofferv1.AuditBatchCommand{Entries: []*cofferv1.AuditEntry{more}})
	if err != nil {
		t.Fatal(err)
	}
	a.Apply(logs(201, next)[0])
	ia2, da2 := mustDigest(t, a)
	if ia2 != 201 || da2 == da {
		t.Fatalf("after one more command: index %d, digest changed %v", ia2, da2 != da)
	}
	b.Apply(logs(201, next)[0])
	if ib2, db2 := mustDigest(t, b); ib2 != 201 || db2 != da2 {
		t.Fatalf("replicas at index 201 differ: %d %x, %d %x", ia2, da2, ib2, db2)
	}
}

// A fresh replica that restores a snapshot reports the digest of the
// replica the snapshot was taken from, at the snapshot's index, and both
// stay equal as they apply the rest of the log.
func TestFSM_StateDigestAfterRestore(t *testing.T) {
	cmds := digestCommands(t, 22, 300)
	a := mustOpen(t)
	a.ApplyBatch(logs(1, cmds[:170]...))
	ia, da := mustDigest(t, a)
	buf := snapshotBytes(t, a)

	b := mustOpen(t)
	if err := b.Restore(io.NopCloser(bytes.NewReader(buf.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if ib, db := mustDigest(t, b); ib != ia || db != da {
		t.Fatalf("restored replica: index %d digest %x, snapshot taken at %d with %x", ib, db, ia, da)
	}
	a.ApplyBatch(logs(171, cmds[170:]...))
	b.ApplyBatch(logs(171, cmds[170:]...))
	ia, da = mustDigest(t, a)
	if ib, db := mustDigest(t, b); ib != ia || db != da {
		t.Fatalf("after the rest of the log: %d %x and %d %x", ia, da, ib, db)
	}
}

// Every replicated record counts: changing, deleting or adding one record
// of any table changes the digest. The applied index record does not: an
// entry that changes nothing but the index (a configuration change) leaves
// the digest as it was and moves only the index.
func TestFSM_StateDigestCoversEveryRecord(t *testing.T) {
	f := mustOpen(t)
	f.ApplyBatch(logs(1, digestCommands(t, 23, 300)...))
	idx, base := mustDigest(t, f)

	// One key of every table (the m/ records one by one).
	samples := map[string][]byte{}
	it, err := f.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		table := string(it.Key()[:2])
		if table == "m/" || table == "x/" {
			table = string(it.Key()[:min(len(it.Key()), 4)])
			if bytes.HasPrefix(it.Key(), []byte("m/")) {
				table = string(it.Key())
			}
		}
		if _, ok := samples[table]; !ok {
			samples[table] = bytes.Clone(it.Key())
		}
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"k/", "p/", "c/", "a/", "n/", "l/", "q/", "x/p/", "x/r/", "t/", "m/audit", "m/audit_time", "m/cluster", "m/applied"} {
		if _, ok := samples[want]; !ok {
			t.Fatalf("the test log wrote no %s record; tables: %v", want, keysOf(samples))
		}
	}
	set := func(k, v []byte) {
		t.Helper()
		if err := f.db.Set(k, v, nil); err != nil {
			t.Fatal(err)
		}
	}
	del := func(k []byte) {
		t.Helper()
		if err := f.db.Delete(k, nil); err != nil {
			t.Fatal(err)
		}
	}
	for table, k := range samples {
		if table == "m/applied" {
			continue
		}
		v, err := get(f.db, k)
		if err != nil {
			t.Fatal(err)
		}
		set(k, append(bytes.Clone(v), 0))
		if _, d := mustDigest(t, f); d == base {
			t.Errorf("%s: a changed value leaves the digest as it was", table)
		}
		del(k)
		if _, d := mustDigest(t, f); d == base {
			t.Errorf("%s: a deleted record leaves the digest as it was", table)
		}
		set(k, v)
		if i, d := mustDigest(t, f); d != base || i != idx {
			t.Fatalf("%s: the original record back gives index %d digest %x, want %d %x", table, i, d, idx, base)
		}
	}
	set([]byte("c/zz"), nil)
	if _, d := mustDigest(t, f); d == base {
		t.Error("an added record leaves the digest as it was")
	}
	del([]byte("c/zz"))

	// Keys and values are length-prefixed: moving a byte across the
	// boundary between them is a different state.
	g, h := mustOpen(t), mustOpen(t)
	if err := g.db.Set([]byte("c/ab"), []byte("c"), nil); err != nil {
		t.Fatal(err)
	}
	if err := h.db.Set([]byte("c/a"), []byte("bc"), nil); err != nil {
		t.Fatal(err)
	}
	if _, dg := mustDigest(t, g); dg == func() [32]byte { _, d := mustDigest(t, h); return d }() {
		t.Error("c/ab=c and c/a=bc have the same digest")
	}

	// An entry Apply records only in the applied index.
	f.ApplyBatch([]*raft.Log{{Index: idx + 1, Term: 2, Type: raft.LogConfiguration}})
	if i, d := mustDigest(t, f); i != idx+1 || d != base {
		t.Fatalf("after a configuration entry: index %d (want %d), digest changed %v", i, idx+1, d != base)
	}
}

// A store half restored is refused, and a caller that gave up stops the
// walk.
func TestFSM_StateDigestRefusals(t *testing.T) {
	f := mustOpen(t)
	f.ApplyBatch(logs(1, digestCommands(t, 24, 20)...))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := f.StateDigest(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v, want context.Canceled", err)
	}
	if err := f.db.Set(keyRestoring, []byte{1}, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.StateDigest(context.Background()); !errors.Is(err, ErrRestoring) {
		t.Fatalf("mid-restore: %v, want ErrRestoring", err)
	}
}

func keysOf(m map[string][]byte) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
