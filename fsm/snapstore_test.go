package fsm

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

func mustStore(t *testing.T, dir string) *SnapshotStore {
	t.Helper()
	s, err := NewSnapshotStore(dir, 2, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// takeSnapshot does what Raft does: Snapshot on the FSM goroutine, then
// Create, Persist and Release.
func takeSnapshot(t *testing.T, f *FSM, s *SnapshotStore, index uint64, afterSnapshot func()) string {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if afterSnapshot != nil {
		afterSnapshot()
	}
	sink, err := s.Create(1, index, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	return sink.ID()
}

// A snapshot the node takes is a checkpoint of the state at Snapshot time,
// even when Apply goes on before Persist; opened, it is a stream a fresh
// replica restores to the same state.
func TestSnapshotStore_CheckpointRoundTrip(t *testing.T) {
	g := &cmdGen{rng: rand.New(rand.NewSource(11))}
	a := mustOpen(t)
	s := mustStore(t, t.TempDir())
	a.UseSnapshotStore(s)
	var cmds [][]byte
	for range 100 {
		cmds = append(cmds, g.next(t))
	}
	a.ApplyBatch(logs(1, cmds...))
	want := mustHash(t, a)
	id := takeSnapshot(t, a, s, 100, func() {
		a.ApplyBatch(logs(101, g.next(t), g.next(t)))
	})
	if mustHash(t, a) == want {
		t.Fatal("the commands applied after the snapshot changed nothing")
	}
	if _, err := os.Stat(filepath.Join(s.dir, id, checkpointDB)); err != nil {
		t.Fatalf("snapshot %s is not a checkpoint: %v", id, err)
	}
	metas, err := s.List()
	if err != nil || len(metas) != 1 || metas[0].ID != id || metas[0].Index != 100 {
		t.Fatalf("List: %v, %v", metas, err)
	}
	for round := range 2 { // the second open reuses the stream written by the first
		meta, rc, err := s.Open(id)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || int64(len(data)) != meta.Size || !bytes.HasPrefix(data, snapMagicZstd) {
			t.Fatalf("open %d: %d bytes, meta size %d, %v", round, len(data), meta.Size, err)
		}
		b := mustOpen(t)
		if err := b.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			t.Fatal(err)
		}
		if mustHash(t, b) != want {
			t.Fatalf("open %d: the restored state is not the state at snapshot time", round)
		}
	}
}

// A snapshot received from the leader is written as bytes and read back
// as the same bytes; snapshots an earlier build kept in the
// FileSnapshotStore are listed and opened too.
func TestSnapshotStore_Streams(t *testing.T) {
	dir := t.TempDir()
	legacy, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	old, err := legacy.Create(1, 5, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	old.Write([]byte("an earlier build's snapshot"))
	old.Close()

	s := mustStore(t, dir)
	sink, err := s.Create(1, 9, 2, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("received stream "), 1000)
	if _, err := sink.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	metas, err := s.List()
	if err != nil || len(metas) != 2 || metas[0].ID != sink.ID() || metas[1].ID != old.ID() {
		t.Fatalf("List: %v, %v; want the received snapshot, then the earlier one", metas, err)
	}
	for id, want := range map[string][]byte{sink.ID(): payload, old.ID(): []byte("an earlier build's snapshot")} {
		meta, rc, err := s.Open(id)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, want) || meta.Size != int64(len(want)) {
			t.Fatalf("%s: read %d bytes (meta %d), want %d", id, len(got), meta.Size, len(want))
		}
	}
}

// Only the newest checkpoints are kept; a cancelled one, and one left
// unfinished by a crash, leave nothing behind.
func TestSnapshotStore_RetainAndCleanUp(t *testing.T) {
	g := &cmdGen{rng: rand.New(rand.NewSource(12))}
	dir := t.TempDir()
	a := mustOpen(t)
	s := mustStore(t, dir)
	a.UseSnapshotStore(s)
	var ids []string
	for i := range 4 {
		a.ApplyBatch(logs(uint64(i*2+1), g.next(t), g.next(t)))
		ids = append(ids, takeSnapshot(t, a, s, uint64(i*2+2), nil))
	}
	metas, err := s.List()
	if err != nil || len(metas) != 2 || metas[0].ID != ids[3] || metas[1].ID != ids[2] {
		t.Fatalf("List after 4 snapshots: %v, %v; want the newest 2", metas, err)
	}
	for _, id := range ids[:2] {
		if _, err := os.Stat(filepath.Join(s.dir, id)); !os.IsNotExist(err) {
			t.Fatalf("old checkpoint %s still on disk: %v", id, err)
		}
	}

	snap, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink, err := s.Create(1, 99, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sink.(*snapshotSink).adopt(snap.(*checkpointSnapshot).dir); err != nil {
		t.Fatal(err)
	}
	if err := sink.Cancel(); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	// An unfinished checkpoint from before a crash.
	if err := os.MkdirAll(filepath.Join(s.dir, "pending-1-1"+tmpSuffix), 0o700); err != nil {
		t.Fatal(err)
	}
	s = mustStore(t, dir)
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), tmpSuffix) || e.Name() != ids[2] && e.Name() != ids[3] {
			t.Errorf("left behind: %s", e.Name())
		}
	}
	if _, _, err := s.Open("../etc"); err == nil {
		t.Error("a snapshot id with a path in it was opened")
	}
}
