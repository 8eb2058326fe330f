package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/fsm"
)

// mustRaftLog writes a Raft log store with entries log entries of size
// bytes through raft-boltdb, as the node does, and returns its path.
func mustRaftLog(t testing.TB, dir string, entries, size int) string {
	t.Helper()
	path := filepath.Join(dir, "raft.db")
	s, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: boltOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var batch []*raft.Log
	for i := 1; i <= entries; i++ {
		data := make([]byte, size)
		copy(data, fmt.Sprintf("entry %d", i))
		batch = append(batch, &raft.Log{Index: uint64(i), Term: 3, Type: raft.LogCommand, Data: data, AppendedAt: time.Unix(1, 0)})
		if len(batch) == 512 || i == entries {
			if err := s.StoreLogs(batch); err != nil {
				t.Fatal(err)
			}
			batch = nil
		}
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("n1")); err != nil {
		t.Fatal(err)
	}
	return path
}

// boltLayout returns the page size, the high-water mark and the pages of
// each kind ("leaf", "branch", ...) in use in the file at path.
func boltLayout(t *testing.T, path string) (pageSize int, hwm uint64, pages map[string][]int) {
	t.Helper()
	o := *boltOptions()
	o.ReadOnly, o.PreLoadFreelist = true, true
	db, err := bbolt.Open(path, 0o600, &o)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	pages = map[string][]int{}
	err = db.View(func(tx *bbolt.Tx) error {
		for id := 2; ; id++ {
			info, err := tx.Page(id)
			if err != nil {
				return err
			}
			if info == nil {
				hwm = uint64(id)
				return nil
			}
			pages[info.Type] = append(pages[info.Type], id)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return db.Info().PageSize, hwm, pages
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func garbage(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// wantDamaged checks that err refuses the store at path as damaged, names
// it, says what is wrong (want) and points to the runbook.
func wantDamaged(t *testing.T, err error, path, want string) {
	t.Helper()
	if !errors.Is(err, ErrDamagedStore) {
		t.Fatalf("got %v, want ErrDamagedStore", err)
	}
	msg := err.Error()
	for _, s := range []string{path, want, "see the runbook", "Replacing a node whose disk is lost"} {
		if !strings.Contains(msg, s) {
			t.Fatalf("error does not say %q: %s", s, msg)
		}
	}
	t.Log(msg)
}

// openRaftLogForTest opens the store the way startRaft does; a damaged
// file must be refused before raft-boltdb reads it.
func openRaftLogForTest(path string) error {
	s, err := openRaftLog(path)
	if err == nil {
		_ = s.Close()
	}
	return err
}

func TestCheckRaftLog_HealthyAndNew(t *testing.T) {
	dir := t.TempDir()
	if err := checkRaftLog(filepath.Join(dir, "raft.db")); err != nil {
		t.Fatalf("missing file: %v", err)
	}
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkRaftLog(empty); err != nil {
		t.Fatalf("empty file: %v", err)
	}
	fresh := mustRaftLog(t, t.TempDir(), 0, 0)
	if err := checkRaftLog(fresh); err != nil {
		t.Fatalf("store without entries: %v", err)
	}
	path := mustRaftLog(t, t.TempDir(), 3000, 300)
	if err := checkRaftLog(path); err != nil {
		t.Fatalf("healthy store: %v", err)
	}
	// After log compaction, with free pages in the file.
	s, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: boltOptions()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 2500); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if err := openRaftLogForTest(path); err != nil {
		t.Fatalf("compacted store: %v", err)
	}
}

func TestCheckRaftLog_Damaged(t *testing.T) {
	cases := []struct {
		name string
		// damage damages the file at path, laid out as given.
		damage func(t *testing.T, path string, pageSize int, hwm uint64, pages map[string][]int)
		want   string
	}{
		{"truncated", func(t *testing.T, path string, ps int, hwm uint64, _ map[string][]int) {
			if err := os.Truncate(path, int64(hwm/2)*int64(ps)); err != nil {
				t.Fatal(err)
			}
		}, "the file was truncated"},
		{"leaf page overwritten", func(t *testing.T, path string, ps int, _ uint64, pages map[string][]int) {
			leaves := pages["leaf"]
			writeAt(t, path, int64(leaves[len(leaves)/2]*ps), garbage(ps, 1))
		}, "identifies itself as page"},
		{"branch page overwritten", func(t *testing.T, path string, ps int, _ uint64, pages map[string][]int) {
			writeAt(t, path, int64(pages["branch"][0]*ps), garbage(ps, 2))
		}, "identifies itself as page"},
		{"branch points outside the file", func(t *testing.T, path string, ps int, _ uint64, pages map[string][]int) {
			// The first element's page id, 1e9: bbolt would read far past
			// its memory map, a fault no recover catches.
			b := make([]byte, 8)
			boltEndian.PutUint64(b, 1e9)
			writeAt(t, path, int64(pages["branch"][0]*ps+boltPageHeader+8), b)
		}, "refers to page 1000000000"},
		{"branch points to itself", func(t *testing.T, path string, ps int, _ uint64, pages map[string][]int) {
			id := pages["branch"][0]
			b := make([]byte, 8)
			boltEndian.PutUint64(b, uint64(id))
			writeAt(t, path, int64(id*ps+boltPageHeader+8), b)
		}, "is referenced twice"},
		{"element count too large", func(t *testing.T, path string, ps int, _ uint64, pages map[string][]int) {
			writeAt(t, path, int64(pages["leaf"][0]*ps+10), []byte{0xff, 0xff})
		}, "claims 65535 elements"},
		{"key offset past the page", func(t *testing.T, path string, ps int, _ uint64, pages map[string][]int) {
			writeAt(t, path, int64(pages["leaf"][1]*ps+boltPageHeader+4), []byte{0, 0, 0, 0x7f})
		}, "points"},
		{"meta pages zeroed", func(t *testing.T, path string, ps int, _ uint64, _ map[string][]int) {
			writeAt(t, path, 0, make([]byte, 2*ps))
		}, "both meta pages are invalid"},
		{"100 bytes", func(t *testing.T, path string, _ int, _ uint64, _ map[string][]int) {
			if err := os.Truncate(path, 100); err != nil {
				t.Fatal(err)
			}
		}, "100-byte file that bbolt cannot open"},
		{"garbage file", func(t *testing.T, path string, _ int, _ uint64, _ map[string][]int) {
			if err := os.WriteFile(path, garbage(1<<20, 3), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "both meta pages are invalid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := mustRaftLog(t, t.TempDir(), 3000, 300)
			ps, hwm, pages := boltLayout(t, path)
			if len(pages["branch"]) == 0 || len(pages["leaf"]) < 2 {
				t.Fatalf("layout too small to damage: %v", pages)
			}
			c.damage(t, path, ps, hwm, pages)
			wantDamaged(t, openRaftLogForTest(path), path, c.want)
		})
	}
}

func TestCheckRaftLog_OneMetaPageLostIsTolerated(t *testing.T) {
	// bbolt keeps two meta pages so that a torn write of one is survived:
	// it uses the other, and so does the check. Either page may be the
	// newer one.
	for page := 0; page < 2; page++ {
		path := mustRaftLog(t, t.TempDir(), 500, 300)
		ps, _, _ := boltLayout(t, path)
		writeAt(t, path, int64(page*ps), make([]byte, ps))
		s, err := openRaftLog(path)
		if err != nil {
			t.Fatalf("meta page %d zeroed: %v", page, err)
		}
		// The store works and writes the page again.
		if err := s.StoreLog(&raft.Log{Index: 501, Term: 3, Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
		if err := checkRaftLog(path); err != nil {
			t.Fatalf("meta page %d zeroed, after a write: %v", page, err)
		}
	}
}

func TestCheckRaftLog_BadRaftValues(t *testing.T) {
	// A structurally sound bbolt file whose contents raft-boltdb would
	// decode with a panic: a term that is not 8 bytes.
	path := mustRaftLog(t, t.TempDir(), 10, 10)
	db, err := bbolt.Open(path, 0o600, boltOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("conf")).Put([]byte("CurrentTerm"), []byte{1}) }); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	wantDamaged(t, openRaftLogForTest(path), path, "CurrentTerm has 1 bytes, not 8")
}

func TestCheckRaftLog_MissingBucket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	db, err := bbolt.Open(path, 0o600, boltOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("logs")); return err }); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	wantDamaged(t, openRaftLogForTest(path), path, `bucket "conf" is missing`)
}

func TestCheckRaftLog_Locked(t *testing.T) {
	path := mustRaftLog(t, t.TempDir(), 10, 10)
	s, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: boltOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = checkRaftLog(path)
	if !errors.Is(err, ErrStoreLocked) || !strings.Contains(err.Error(), path) ||
		!strings.Contains(err.Error(), "raft.db is locked: is another cofferd running on this data directory?") {
		t.Fatalf("got %v, want ErrStoreLocked naming %s", err, path)
	}
}

// mustState writes a state store through fsm.Open and Apply, and reopens it
// once so that the applied entries are in an sstable, not only in the
// write-ahead log.
func mustState(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	f, err := fsm.Open(fsm.DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	init, err := fsm.Encode(cofferv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &cofferv1.InitClusterCommand{
		Info:          &cofferv1.ClusterInfo{ClusterId: "abcdefghij", CreatedUnixNano: 1},
		DefaultPolicy: &cofferv1.PolicyRecord{Name: "default", KekVersion: 1, Keks: []*cofferv1.WrappedKEK{{Version: 1, Wrapped: []byte("wrapped")}}}})
	if err != nil {
		t.Fatal(err)
	}
	logs := []*raft.Log{{Index: 1, Term: 1, Type: raft.LogCommand, Data: init}}
	for i := 2; i <= 500; i++ {
		d, err := fsm.Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{Key: &cofferv1.KeyRecord{
			Gkid: fmt.Sprintf("k1-abcdefghij-%026d", i), Policy: "default", Resource: "r", Owner: "client:app",
			Algorithm: cofferv1.Algorithm_ALGORITHM_AES_256, State: cofferv1.KeyState_KEY_STATE_ACTIVE,
			KekVersion: 1, Revision: 1, WrappedMaterial: garbage(60, byte(i))}})
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, &raft.Log{Index: uint64(i), Term: 1, Type: raft.LogCommand, Data: d})
	}
	for _, r := range f.ApplyBatch(logs) {
		if err := r.(fsm.Result).Err; err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if f, err = fsm.Open(fsm.DefaultConfig(dir)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if len(stateFiles(t, dir, ".sst")) == 0 {
		t.Fatal("no sstable written")
	}
	return dir
}

// stateFiles lists the files in dir whose names end in suffix.
func stateFiles(t *testing.T, dir, suffix string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), suffix) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// currentManifest returns the path of the MANIFEST the marker names.
func currentManifest(t *testing.T, dir string) string {
	t.Helper()
	for _, m := range stateFiles(t, dir, "") {
		if name := filepath.Base(m); strings.HasPrefix(name, "marker.manifest.") {
			return filepath.Join(dir, name[strings.Index(name, "MANIFEST-"):])
		}
	}
	t.Fatal("no manifest marker")
	return ""
}

func openStateForTest(dir string) error {
	f, err := openState(fsm.DefaultConfig(dir))
	if err == nil {
		_ = f.Close()
	}
	return err
}

func TestOpenState_HealthyAndNew(t *testing.T) {
	if err := openStateForTest(filepath.Join(t.TempDir(), "state")); err != nil {
		t.Fatalf("new directory: %v", err)
	}
	dir := mustState(t)
	f, err := openState(fsm.DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.AppliedIndex() != 500 {
		t.Fatalf("applied index %d, want 500", f.AppliedIndex())
	}
	// While it is open, another open is refused as locked.
	err = openStateForTest(dir)
	if !errors.Is(err, ErrStoreLocked) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("got %v, want ErrStoreLocked naming %s", err, dir)
	}
}

func TestOpenState_Damaged(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   string
	}{
		{"manifest overwritten", func(t *testing.T, dir string) {
			m := currentManifest(t, dir)
			st, _ := os.Stat(m)
			writeAt(t, m, 0, garbage(int(st.Size()), 4))
		}, "MANIFEST"},
		{"manifest missing", func(t *testing.T, dir string) {
			if err := os.Remove(currentManifest(t, dir)); err != nil {
				t.Fatal(err)
			}
		}, "MANIFEST"},
		{"manifest marker missing", func(t *testing.T, dir string) {
			for _, m := range stateFiles(t, dir, "") {
				if strings.HasPrefix(filepath.Base(m), "marker.manifest.") {
					_ = os.Remove(m)
				}
			}
		}, "no current manifest"},
		{"sstable overwritten", func(t *testing.T, dir string) {
			sst := stateFiles(t, dir, ".sst")[0]
			st, _ := os.Stat(sst)
			writeAt(t, sst, 0, garbage(int(st.Size()), 5))
		}, ".sst"},
		{"sstable index and properties overwritten", func(t *testing.T, dir string) {
			sst := stateFiles(t, dir, ".sst")[0]
			st, _ := os.Stat(sst)
			writeAt(t, sst, st.Size()-1500, garbage(1400, 6))
		}, ".sst"},
		{"sstable truncated", func(t *testing.T, dir string) {
			sst := stateFiles(t, dir, ".sst")[0]
			st, _ := os.Stat(sst)
			if err := os.Truncate(sst, st.Size()/2); err != nil {
				t.Fatal(err)
			}
		}, ".sst"},
		{"sstable missing", func(t *testing.T, dir string) {
			if err := os.Remove(stateFiles(t, dir, ".sst")[0]); err != nil {
				t.Fatal(err)
			}
		}, "does not exist"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := mustState(t)
			c.damage(t, dir)
			wantDamaged(t, openStateForTest(dir), dir, c.want)
		})
	}
}

// BenchmarkCheckRaftLog measures checkRaftLog on a log of 100,000 entries
// of 512 bytes, and raft-boltdb's own open for comparison.
func BenchmarkCheckRaftLog(b *testing.B) {
	path := mustRaftLog(b, b.TempDir(), 100_000, 512)
	st, _ := os.Stat(path)
	b.Logf("raft.db: %d MiB", st.Size()>>20)
	b.Run("check", func(b *testing.B) {
		for b.Loop() {
			if err := checkRaftLog(path); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("walk", func(b *testing.B) {
		for b.Loop() {
			if _, err := walkBolt(path, os.Getpagesize()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("compact", func(b *testing.B) {
		for b.Loop() {
			if err := compactRaftLog(path); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raftboltdb-open", func(b *testing.B) {
		for b.Loop() {
			s, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: boltOptions()})
			if err != nil {
				b.Fatal(err)
			}
			_ = s.Close()
		}
	})
}

// TestNode_DamagedStoreRefusesToStart damages a stopped follower's Raft log,
// then its state, and follows the runbook each time: the node refuses to
// start (and serves nothing), and once its data directory is moved aside it
// starts empty and catches up from the leader.
func TestNode_DamagedStoreRefusesToStart(t *testing.T) {
	tc := mustCluster(t, 3, func(c *Config) {
		c.Raft.TrailingLogs = 10
		c.Raft.SnapshotThreshold = 1 << 30 // snapshots only when asked
	})
	var gkids []string
	generate := func(n int) {
		l := tc.waitLeader()
		for i := 0; i < n; i++ {
			gkids = append(gkids, tc.mustGenerate(l, fmt.Sprintf("r%d", i%4), "").GetGkid())
		}
		if err := tc.nodes[tc.waitLeader()].Raft().Snapshot().Error(); err != nil {
			t.Fatal(err)
		}
	}
	// replace follows the runbook for node f and waits until it has caught up.
	replace := func(f int) {
		dir := tc.cfgs[f].DataDir
		if err := os.Rename(dir, dir+fmt.Sprintf(".damaged-%d", time.Now().UnixNano())); err != nil {
			t.Fatal(err)
		}
		tc.start(f)
		for _, gk := range gkids {
			tc.mustGet(f, gk)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			l := tc.waitLeader()
			ia, ha, errA := tc.nodes[l].FSM().StateDigest(context.Background())
			ib, hb, errB := tc.nodes[f].FSM().StateDigest(context.Background())
			if errA == nil && errB == nil && ia == ib && ha == hb {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("replaced node differs: leader at %d, node at %d", ia, ib)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// refused starts node f and expects a refusal naming path, with the
	// node's API port left unbound.
	refused := func(f int, path string) {
		err := tc.tryStart(f)
		if err == nil {
			t.Fatal("a node with a damaged store started")
		}
		wantDamaged(t, err, path, "")
		l, lerr := net.Listen("tcp", tc.cfgs[f].APIAddr)
		if lerr != nil {
			t.Fatalf("the refused node's API address is in use: %v", lerr)
		}
		_ = l.Close()
	}

	generate(40)
	f := tc.follower()
	tc.stop(f)
	generate(20)
	raftDB := filepath.Join(tc.cfgs[f].DataDir, "raft", "raft.db")
	ps, _, pages := boltLayout(t, raftDB)
	if len(pages["leaf"]) < 2 {
		t.Fatalf("raft log too small to damage a data page: %v", pages)
	}
	writeAt(t, raftDB, int64(pages["leaf"][len(pages["leaf"])/2]*ps), garbage(ps, 7))
	refused(f, raftDB)
	replace(f)

	tc.stop(f)
	generate(20)
	stateDir := filepath.Join(tc.cfgs[f].DataDir, "state")
	m := currentManifest(t, stateDir)
	st, err := os.Stat(m)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, m, 0, garbage(int(st.Size()), 8))
	refused(f, stateDir)
	replace(f)
}
