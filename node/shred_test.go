package node

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// snapStreamZstd starts a compressed snapshot stream (fsm/snapshot.go),
// whose bytes a plain scan would not see through.
var snapStreamZstd = []byte("COFFER-FSM-SNAP\x02")

// findSecrets walks every file under dir, skipping those skip names, and
// returns "path: name" for each secret found in a file's bytes (or in a
// compressed snapshot stream's content), in order.
func findSecrets(t *testing.T, dir string, secrets map[string][]byte, skip func(path string) bool) (hits []string, scanned int) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // deleted while walking (Pebble's cleaner)
			}
			return err
		}
		if d.IsDir() || (skip != nil && skip(path)) {
			return nil
		}
		data, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		scanned++
		if bytes.HasPrefix(data, snapStreamZstd) {
			zr, err := zstd.NewReader(bytes.NewReader(data[len(snapStreamZstd):]))
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			plain, err := io.ReadAll(zr)
			zr.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			data = append(data, plain...)
		}
		for name, s := range secrets {
			if bytes.Contains(data, s) {
				rel, _ := filepath.Rel(dir, path)
				hits = append(hits, rel+": "+name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(hits)
	return hits, scanned
}

// waitShredded waits until every running node completed a shred pass
// after the removal at index.
func (tc *testCluster) waitShredded(index uint64) {
	tc.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for i, n := range tc.nodes {
		for n != nil && n.shredded.Load() < index {
			if time.Now().After(deadline) {
				tc.t.Fatalf("%s: no shred pass after index %d within 30 s", tc.cfgs[i].ID, index)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestNode_DestroyShredsMaterial: once a key is destroyed, its wrapped
// material (the copy the key was created with and the copy a deactivation
// re-sealed) is gone from every file under every node's data directory:
// Pebble's WAL and sstables and the snapshots right after each node's shred
// pass, the Raft log once log compaction deleted the entries that carried
// it and the node restarted (bbolt keeps freed pages' bytes until then).
func TestNode_DestroyShredsMaterial(t *testing.T) {
	const trailing = 10
	tc := mustCluster(t, 3, func(c *Config) {
		c.Raft.TrailingLogs = trailing
		c.Raft.SnapshotThreshold = 1 << 30 // snapshots only when the shredder or the test asks
	})
	ctx := ctxT(t)
	l := tc.waitLeader()
	id := tc.mustGenerate(l, "shred", "").GetGkid()
	rec, err := tc.nodes[l].FSM().Key(id)
	if err != nil || len(rec.GetWrappedMaterial()) < 32 {
		t.Fatalf("record before the destroy: %v", err)
	}
	secrets := map[string][]byte{"wrapped material": rec.GetWrappedMaterial()}
	if _, err := tc.keys(l).SetKeyState(ctx, &cofferv1.SetKeyStateRequest{Gkid: id, State: cofferv1.KeyState_KEY_STATE_DEACTIVATED}); err != nil {
		t.Fatal(err)
	}
	if rec, err = tc.nodes[l].FSM().Key(id); err != nil || len(rec.GetWrappedMaterial()) < 32 || bytes.Equal(rec.GetWrappedMaterial(), secrets["wrapped material"]) {
		t.Fatalf("deactivation did not re-seal the material: %v", err)
	}
	secrets["re-sealed material"] = rec.GetWrappedMaterial()
	// Another key destroyed before: its shred pass flushed Pebble, so the
	// key's records are in an sstable, not only in the memtable and WAL.
	other := tc.mustGenerate(l, "shred", "").GetGkid()
	if _, err := tc.keys(l).SetKeyState(ctx, &cofferv1.SetKeyStateRequest{Gkid: other, State: cofferv1.KeyState_KEY_STATE_DESTROYED}); err != nil {
		t.Fatal(err)
	}
	tc.waitShredded(tc.nodes[l].FSM().MaterialRemovedIndex())
	// A snapshot on every node, as production takes them: it holds the
	// re-sealed copy (a hard link to the sstable). The scan finds it there,
	// and both copies in the Raft log, while the key lives.
	for i, n := range tc.nodes {
		tc.waitApplied(i, tc.nodes[l].FSM().AppliedIndex())
		if err := n.Raft().Snapshot().Error(); err != nil {
			t.Fatalf("%s: snapshot: %v", tc.cfgs[i].ID, err)
		}
		hits, _ := findSecrets(t, tc.cfgs[i].DataDir, secrets, nil)
		all := strings.Join(hits, "\n")
		for _, want := range []string{"raft.db: wrapped material", "raft.db: re-sealed material", "checkpoints/", ".sst: re-sealed material"} {
			if !strings.Contains(all, want) {
				t.Fatalf("%s: before the destroy, the scan does not find %q:\n%s", tc.cfgs[i].ID, want, all)
			}
		}
	}

	start := time.Now()
	if _, err := tc.keys(tc.follower()).SetKeyState(ctx, &cofferv1.SetKeyStateRequest{Gkid: id, State: cofferv1.KeyState_KEY_STATE_DESTROYED}); err != nil {
		t.Fatal(err)
	}
	removedAt := tc.nodes[l].FSM().MaterialRemovedIndex()
	if removedAt == 0 {
		t.Fatal("the destroy was not noted as a removal of material")
	}
	tc.waitShredded(removedAt)
	deadline := time.Now().Add(30 * time.Second)
	// Once every node's pass is done, only the Raft log may still hold a
	// copy: its entries, kept until TrailingLogs newer ones exist. Pebble
	// deletes obsolete files shortly after a compaction.
	inRaftLog := func(path string) bool { return filepath.Base(path) == "raft.db" }
	for {
		hits, _ := findSecrets(t, tc.dir, secrets, inRaftLog)
		if len(hits) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("material still on disk outside the Raft log after the shred passes:\n%s", strings.Join(hits, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("Pebble and snapshots clean %v after the destroy", time.Since(start).Round(time.Millisecond))

	// More writes than TrailingLogs, then the snapshot production takes
	// after SnapshotThreshold entries: log compaction deletes the entries
	// that carried the material.
	for i := 0; i < 5*trailing; i++ {
		tc.mustGenerate(i%3, "shred/more", "")
	}
	for i, n := range tc.nodes {
		if err := n.Raft().Snapshot().Error(); err != nil {
			t.Fatalf("%s: snapshot: %v", tc.cfgs[i].ID, err)
		}
		if first, err := n.logStore.FirstIndex(); err != nil || first <= removedAt {
			t.Fatalf("%s: log not compacted past the destroy at %d (first index %d, %v)", tc.cfgs[i].ID, removedAt, first, err)
		}
	}

	// bbolt freed the deleted entries' pages without overwriting them;
	// opening the log at start copies it into a fresh file without them.
	// Checked on the stopped node, before any write could reuse a page.
	onlyRaftLog := func(path string) bool { return !inRaftLog(path) }
	for i := range tc.nodes {
		tc.stop(i)
		before, _ := findSecrets(t, tc.cfgs[i].DataDir, secrets, onlyRaftLog)
		store, err := openRaftLog(filepath.Join(tc.cfgs[i].DataDir, "raft", "raft.db"))
		if err != nil {
			t.Fatal(err)
		}
		if err := store.Close(); err != nil {
			t.Fatal(err)
		}
		if after, _ := findSecrets(t, tc.cfgs[i].DataDir, secrets, onlyRaftLog); len(after) > 0 {
			t.Fatalf("%s: the Raft log still holds the material after the copy at start (%d copies before it):\n%s",
				tc.cfgs[i].ID, len(before), strings.Join(after, "\n"))
		}
		t.Logf("%s: %d copies in the Raft log's freed pages before the start, none after", tc.cfgs[i].ID, len(before))
		tc.start(i)
	}
	for i := range tc.nodes {
		tc.waitApplied(i, removedAt)
	}
	tc.mustGenerate(tc.waitLeader(), "shred/after", "")
	tc.stopAll()
	hits, scanned := findSecrets(t, tc.dir, secrets, nil)
	if len(hits) > 0 {
		t.Fatalf("destroyed key's material still on disk:\n%s", strings.Join(hits, "\n"))
	}
	if scanned < 30 {
		t.Fatalf("only %d files scanned", scanned)
	}
}

// TestNode_ShredOwedAtStart: a pass owed when a node stopped (the marker in
// its data directory) runs when it starts again, and the marker goes.
func TestNode_ShredOwedAtStart(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	f := tc.follower()
	tc.stop(f)
	marker := filepath.Join(tc.cfgs[f].DataDir, shredMarker)
	if err := os.WriteFile(marker, []byte("0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tc.start(f)
	tc.mustGenerate(tc.waitLeader(), "shred/owed", "") // something new to snapshot
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(marker); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the owed shred pass did not run within 20 s of the start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n, err := tc.nodes[f].snaps.List(); err != nil || len(n) != 1 {
		t.Fatalf("after the pass: %d snapshots (%v), want 1", len(n), err)
	}
}
