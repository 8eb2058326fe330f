package fsm

import (
	"io"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func createKey(t *testing.T, f *FSM, index uint64, rec *cofferv1.KeyRecord) {
	t.Helper()
	init, err := Encode(cofferv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &cofferv1.InitClusterCommand{
		Info: &cofferv1.ClusterInfo{ClusterId: "abcdefghij", CreatedUnixNano: 1}, DefaultPolicy: policy("default")})
	if err != nil {
		t.Fatal(err)
	}
	create, err := Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{Key: rec})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range f.ApplyBatch(logs(index, init, create)) {
		if err := r.(Result).Err; err != nil {
			t.Fatal(err)
		}
	}
}

// A restore replaces every key; a record read (and kept) before must not
// be served after.
func TestFSM_KeyCacheDroppedByRestore(t *testing.T) {
	old, newer := keyRec(readK1, "default", "res/old"), keyRec(readK1, "default", "res/new")
	a, b := mustOpen(t), mustOpen(t)
	createKey(t, a, 1, old)
	createKey(t, b, 1, newer)
	if k, err := a.Key(readK1); err != nil || k.GetResource() != "res/old" {
		t.Fatalf("before restore: %v, %v", k, err)
	}
	if err := a.Restore(io.NopCloser(snapshotBytes(t, b))); err != nil {
		t.Fatal(err)
	}
	if k, err := a.Key(readK1); err != nil || k.GetResource() != "res/new" {
		t.Fatalf("after restore: %v, %v", k, err)
	}
}

// A record stored under another key's id is refused by its reader; it must
// not be kept for either id.
func TestFSM_KeyCacheSkipsSwappedRecords(t *testing.T) {
	f := mustOpen(t)
	createKey(t, f, 1, keyRec(readK1, "default", "res/1"))
	swapped, err := proto.Marshal(keyRec(readK2, "default", "res/evil"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.Set(keyKey(readK1), swapped, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if k, err := f.Key(readK1); err != nil || k.GetGkid() != readK2 {
			t.Fatalf("read %d under %s: %v, %v (want the swapped record, for the caller to refuse)", i, readK1, k, err)
		}
		if _, err := f.Key(readK2); err != ErrNotFound {
			t.Fatalf("read %d: %s should not exist, got %v", i, readK2, err)
		}
	}
}

// blockingReader hands out its data, then waits for release before EOF.
type blockingReader struct {
	r       io.Reader
	reached chan struct{}
	release chan struct{}
}

func (b *blockingReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		close(b.reached)
		<-b.release
	}
	return n, err
}

// Restoring is set for exactly as long as Restore replaces the store (the
// node refuses to serve from a half-restored store).
func TestFSM_RestoringWhileRestore(t *testing.T) {
	a, b := mustOpen(t), mustOpen(t)
	createKey(t, b, 1, keyRec(readK1, "default", "res/new"))
	if a.Restoring() {
		t.Fatal("restoring before any restore")
	}
	br := &blockingReader{r: snapshotBytes(t, b), reached: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- a.Restore(io.NopCloser(br)) }()
	select {
	case <-br.reached:
	case <-time.After(10 * time.Second):
		t.Fatal("restore never read its stream")
	}
	if !a.Restoring() {
		t.Fatal("not restoring in the middle of a restore")
	}
	close(br.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if a.Restoring() {
		t.Fatal("still restoring after the restore returned")
	}
}
