package fsm

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// filesHolding returns the files under dir whose bytes contain secret.
func filesHolding(t *testing.T, dir string, secret []byte) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted while walking
		}
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if bytes.Contains(data, secret) {
			found = append(found, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestFSM_ShredDropsReplacedRecords: a destroy is noted and signalled;
// Shred waits while a Pebble snapshot from before the destroy is open (not
// for one opened after); then the old record's bytes leave every file of
// the store (WAL never recycled, sstables rewritten, even a bottom-level
// one where a compaction kept the old version for the snapshot) and, after
// KeepNewest, of the snapshot store.
func TestFSM_ShredDropsReplacedRecords(t *testing.T) {
	root := t.TempDir()
	f, err := Open(DefaultConfig(filepath.Join(root, "state")))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	store := mustStore(t, filepath.Join(root, "raft"))
	f.UseSnapshotStore(store)
	// Random material, as sealing gives: Pebble's block compression
	// would not keep a repetitive one as it is.
	var setup [][]byte
	for _, c := range readSetupCommands() {
		if k, ok := c.m.(*cofferv1.CreateKeyCommand); ok && k.GetKey().GetGkid() == readK1 {
			k.Key.WrappedMaterial = make([]byte, 48)
			_, _ = rand.Read(k.Key.WrappedMaterial)
		}
		d, err := Encode(c.t, c.m)
		if err != nil {
			t.Fatal(err)
		}
		setup = append(setup, d)
	}
	f.ApplyBatch(logs(1, setup...))
	idx := uint64(len(setup))
	cur, err := f.Key(readK1)
	if err != nil {
		t.Fatal(err)
	}
	secret := cur.GetWrappedMaterial()
	if err := f.db.Flush(); err != nil { // the record in an sstable too
		t.Fatal(err)
	}
	takeSnapshot(t, f, store, idx, nil)
	if got := filesHolding(t, root, secret); len(got) < 2 {
		t.Fatalf("before the destroy the material is in %v, want the store and the snapshot", got)
	}
	pinning := f.db.NewSnapshot()

	next := proto.CloneOf(cur)
	next.State, next.Revision, next.StateChangedUnixNano, next.WrappedMaterial = cofferv1.KeyState_KEY_STATE_DESTROYED, cur.GetRevision()+1, 5000, nil
	d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_SET_KEY_STATE, &cofferv1.SetKeyStateCommand{Key: next, ExpectedRevision: cur.GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	idx++
	if res := f.Apply(logs(idx, d)[0]).(Result); res.Err != nil {
		t.Fatal(res.Err)
	}
	select {
	case <-f.MaterialRemoved():
	default:
		t.Fatal("no signal after the destroy")
	}
	if got := f.MaterialRemovedIndex(); got != idx {
		t.Fatalf("removal noted at %d, want %d", got, idx)
	}

	ctx := context.Background()
	if err := f.Shred(ctx); !errors.Is(err, ErrShredPinned) {
		t.Fatalf("Shred with a snapshot from before the destroy open: %v, want ErrShredPinned", err)
	}
	// Meanwhile a compaction (Pebble's own) takes both versions down to
	// the bottom level, the old one kept for the snapshot.
	if err := f.db.Compact(ctx, prefixKey, prefixEnd(prefixKey), true); err != nil {
		t.Fatal(err)
	}
	_ = pinning.Close()
	if err := f.db.Compact(ctx, prefixKey, prefixEnd(prefixKey), true); err != nil {
		t.Fatal(err)
	}
	if got := filesHolding(t, filepath.Join(root, "state"), secret); len(got) == 0 {
		t.Fatal("a plain compaction dropped the version pinned on the bottom level: the case Shred handles does not arise")
	}
	later := f.db.NewSnapshot() // opened after the destroy: no reason to wait
	defer later.Close()
	if err := f.Shred(ctx); err != nil {
		t.Fatal(err)
	}
	takeSnapshot(t, f, store, idx, nil)
	if n, err := store.KeepNewest(); err != nil || n != 1 {
		t.Fatalf("KeepNewest removed %d (%v), want the snapshot from before the destroy", n, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := filesHolding(t, root, secret)
		if len(got) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("material still in %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if k, err := f.Key(readK1); err != nil || k.GetState() != cofferv1.KeyState_KEY_STATE_DESTROYED {
		t.Fatalf("after Shred: %v, %v", k, err)
	}
}
