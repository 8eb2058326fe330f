package fsm

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// SnapshotStore keeps this node's Raft snapshots.
//
// A snapshot the node takes itself is a Pebble checkpoint: hard links to the
// immutable sstables plus copies of the WAL and manifest, taken while Apply
// is paused (FSM.Snapshot), so it costs about as much as the number of files,
// not the size of the state. Most of the state is the audit log, which only
// grows, so copying it at every snapshot would cost more and more. A
// checkpoint becomes a snapshot stream (snapshot.go) only when Raft opens
// it, to send it to a follower or to restore from it, and the stream is kept
// next to it for the next Open.
//
// Snapshots a leader sends arrive as streams. hashicorp/raft's
// FileSnapshotStore keeps those, in the directory earlier builds used, so
// that their snapshots stay readable.
type SnapshotStore struct {
	dir    string // <raft dir>/checkpoints
	retain int
	files  *raft.FileSnapshotStore
	logger hclog.Logger

	mu  sync.Mutex // serialises turning a checkpoint into a stream, and reaping
	seq atomic.Uint64
}

// discardPebbleLogger quiets the read-only opens of checkpoints.
var discardPebbleLogger = quietLogger{slog.New(slog.DiscardHandler)}

const (
	checkpointMeta   = "meta.json"
	checkpointDB     = "db"
	checkpointStream = "state.bin"
	tmpSuffix        = ".tmp"
)

// NewSnapshotStore opens the snapshot store under raftDir, keeping the
// newest retain checkpoints (and, separately, retain received streams).
func NewSnapshotStore(raftDir string, retain int, logger hclog.Logger) (*SnapshotStore, error) {
	if retain < 1 {
		return nil, fmt.Errorf("%w: snapshot store: retain %d, want at least 1", ErrInvalidConfig, retain)
	}
	files, err := raft.NewFileSnapshotStoreWithLogger(raftDir, retain, logger)
	if err != nil {
		return nil, fmt.Errorf("fsm: snapshot store: %w", err)
	}
	s := &SnapshotStore{dir: filepath.Join(raftDir, "checkpoints"), retain: retain, files: files, logger: logger}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("fsm: snapshot store: %w", err)
	}
	// Unfinished checkpoints and streams from before a crash.
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("fsm: snapshot store: %w", err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), tmpSuffix) {
			if err := os.RemoveAll(filepath.Join(s.dir, e.Name())); err != nil {
				return nil, fmt.Errorf("fsm: snapshot store: %w", err)
			}
		}
	}
	return s, nil
}

// scratch returns a fresh directory name for a checkpoint the FSM takes
// before Raft has created its sink.
func (s *SnapshotStore) scratch() string {
	return filepath.Join(s.dir, fmt.Sprintf("pending-%d-%d%s", time.Now().UnixNano(), s.seq.Add(1), tmpSuffix))
}

// Create starts a snapshot. It becomes a checkpoint if the FSM's snapshot
// hands one over (checkpointSnapshot.Persist), or a stream if bytes are
// written to it (a snapshot received from the leader).
func (s *SnapshotStore) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	if version != 1 {
		return nil, fmt.Errorf("%w: snapshot version %d not supported", ErrBadSnapshot, version)
	}
	id := fmt.Sprintf("%d-%d-%d", term, index, time.Now().UnixMilli())
	return &snapshotSink{s: s, id: id, meta: raft.SnapshotMeta{Version: version, ID: id, Index: index, Term: term,
		Configuration: configuration, ConfigurationIndex: configurationIndex}, trans: trans}, nil
}

// List returns the snapshots, newest first.
func (s *SnapshotStore) List() ([]*raft.SnapshotMeta, error) {
	metas, err := s.files.List()
	if err != nil {
		return nil, err
	}
	cps, err := s.checkpoints()
	if err != nil {
		return nil, err
	}
	metas = append(metas, cps...)
	slices.SortStableFunc(metas, newestFirst)
	return metas, nil
}

func newestFirst(a, b *raft.SnapshotMeta) int {
	if c := cmp.Compare(b.Term, a.Term); c != 0 {
		return c
	}
	if c := cmp.Compare(b.Index, a.Index); c != 0 {
		return c
	}
	return cmp.Compare(b.ID, a.ID)
}

// checkpoints reads the metadata of every finished checkpoint, newest first.
func (s *SnapshotStore) checkpoints() ([]*raft.SnapshotMeta, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("fsm: list checkpoints: %w", err)
	}
	var metas []*raft.SnapshotMeta
	for _, e := range entries {
		if !e.IsDir() || strings.HasSuffix(e.Name(), tmpSuffix) {
			continue
		}
		m, err := s.readMeta(e.Name())
		if err != nil {
			s.logger.Warn("unreadable checkpoint metadata, skipped", "id", e.Name(), "error", err)
			continue
		}
		metas = append(metas, m)
	}
	slices.SortStableFunc(metas, newestFirst)
	return metas, nil
}

func (s *SnapshotStore) readMeta(id string) (*raft.SnapshotMeta, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, id, checkpointMeta))
	if err != nil {
		return nil, err
	}
	var m raft.SnapshotMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m.ID != id {
		return nil, fmt.Errorf("%w: metadata names %q", ErrBadSnapshot, m.ID)
	}
	if st, err := os.Stat(filepath.Join(s.dir, id, checkpointStream)); err == nil {
		m.Size = st.Size()
	}
	return &m, nil
}

// Open returns a snapshot's stream. A checkpoint is written out as a stream
// the first time (version 2 format), and the stream kept for later opens.
func (s *SnapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	if id == "" || strings.ContainsAny(id, `/\`) || strings.HasPrefix(id, ".") {
		return nil, nil, fmt.Errorf("%w: bad snapshot id %q", ErrBadSnapshot, id)
	}
	if _, err := os.Stat(filepath.Join(s.dir, id, checkpointMeta)); err != nil {
		return s.files.Open(id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	path := filepath.Join(s.dir, id, checkpointStream)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := writeCheckpointStream(filepath.Join(s.dir, id, checkpointDB), path); err != nil {
			return nil, nil, fmt.Errorf("fsm: snapshot %s: %w", id, err)
		}
	}
	m, err := s.readMeta(id)
	if err != nil {
		return nil, nil, fmt.Errorf("fsm: snapshot %s: %w", id, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("fsm: snapshot %s: %w", id, err)
	}
	return m, f, nil
}

// writeCheckpointStream writes the snapshot stream of the checkpoint in dir
// to path, atomically.
func writeCheckpointStream(dir, path string) error {
	return writeFileSynced(path, func(w io.Writer) error { return streamCheckpoint(dir, w) })
}

// streamCheckpoint writes the checkpoint in dir to w as a snapshot stream.
func streamCheckpoint(dir string, w io.Writer) error {
	db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true, Logger: discardPebbleLogger})
	if err != nil {
		return fmt.Errorf("open checkpoint: %w", err)
	}
	defer db.Close()
	return WriteSnapshot(db, w)
}

// reap removes checkpoints beyond the newest retain.
func (s *SnapshotStore) reap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	metas, err := s.checkpoints()
	if err != nil {
		s.logger.Warn("checkpoints not reaped", "error", err)
		return
	}
	for i := s.retain; i < len(metas); i++ {
		if err := os.RemoveAll(filepath.Join(s.dir, metas[i].ID)); err != nil {
			s.logger.Warn("old checkpoint not removed", "id", metas[i].ID, "error", err)
		}
	}
}

// errSinkInUse refuses a second snapshot into one sink: a checkpoint after
// bytes, or bytes after a checkpoint.
var errSinkInUse = errors.New("fsm: snapshot sink already holds a snapshot")

// snapshotSink is the sink Raft writes a snapshot into: a checkpoint the
// FSM adopts, or a stream kept by the FileSnapshotStore.
type snapshotSink struct {
	s     *SnapshotStore
	id    string
	meta  raft.SnapshotMeta
	trans raft.Transport

	stream raft.SnapshotSink // set once bytes are written
	tmp    string            // set once a checkpoint is adopted
	done   bool
}

func (k *snapshotSink) ID() string {
	if k.stream != nil {
		return k.stream.ID()
	}
	return k.id
}

func (k *snapshotSink) Write(p []byte) (int, error) {
	if k.tmp != "" {
		return 0, errSinkInUse
	}
	if k.stream == nil {
		st, err := k.s.files.Create(k.meta.Version, k.meta.Index, k.meta.Term, k.meta.Configuration, k.meta.ConfigurationIndex, k.trans)
		if err != nil {
			return 0, err
		}
		k.stream = st
	}
	return k.stream.Write(p)
}

// adopt moves the checkpoint in dir into this snapshot.
func (k *snapshotSink) adopt(dir string) error {
	if k.stream != nil || k.tmp != "" {
		return errSinkInUse
	}
	tmp := filepath.Join(k.s.dir, k.id+tmpSuffix)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	k.tmp = tmp
	return os.Rename(dir, filepath.Join(tmp, checkpointDB))
}

func (k *snapshotSink) Cancel() error {
	k.done = true
	if k.stream != nil {
		return k.stream.Cancel()
	}
	if k.tmp != "" {
		return os.RemoveAll(k.tmp)
	}
	return nil
}

func (k *snapshotSink) Close() error {
	if k.done {
		return nil
	}
	k.done = true
	if k.tmp == "" {
		if k.stream == nil { // nothing written: an empty stream
			if _, err := k.Write(nil); err != nil {
				return err
			}
		}
		return k.stream.Close()
	}
	b, err := json.Marshal(k.meta)
	if err != nil {
		return err
	}
	if err := writeFileSynced(filepath.Join(k.tmp, checkpointMeta), func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	}); err != nil {
		_ = os.RemoveAll(k.tmp)
		return err
	}
	final := filepath.Join(k.s.dir, k.id)
	if err := os.Rename(k.tmp, final); err != nil {
		_ = os.RemoveAll(k.tmp)
		return err
	}
	if err := syncDir(k.s.dir); err != nil {
		return err
	}
	k.s.reap()
	return nil
}

// writeFileSynced writes path through fill: into a temporary file that is
// synced, then renamed, so path holds either nothing or all of it.
func writeFileSynced(path string, fill func(io.Writer) error) error {
	tmp := path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = fill(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// checkpointSnapshot is an FSM snapshot taken as a Pebble checkpoint.
type checkpointSnapshot struct {
	dir string
}

// Persist hands the checkpoint to the store's sink, or, for any other sink,
// writes it as a stream.
func (c *checkpointSnapshot) Persist(sink raft.SnapshotSink) error {
	if k, ok := sink.(*snapshotSink); ok {
		if err := k.adopt(c.dir); err != nil {
			_ = sink.Cancel()
			return fmt.Errorf("fsm: adopt checkpoint: %w", err)
		}
		return sink.Close()
	}
	if err := streamCheckpoint(c.dir, sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: %w", err)
	}
	return sink.Close()
}

// Release removes the checkpoint unless the store adopted it.
func (c *checkpointSnapshot) Release() { _ = os.RemoveAll(c.dir) }
