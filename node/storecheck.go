package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/coffer-kms/coffer/fsm"
)

// Start-up checks of the node's stores. A node whose Raft log or state files
// are damaged refuses to start with an error that names the file, says what
// is wrong and points to the runbook; it does not panic inside bbolt or
// Pebble (a crash loop under a supervisor), and it never serves from them.

// runbook is the operator's way out, in every ErrDamagedStore error.
const runbook = "see the runbook: a node with a damaged disk is replaced: stop it, move its data directory aside, " +
	"start it empty so it catches up from the leader (README, 'Replacing a node whose disk is lost')"

// raftLogBuckets are the buckets raft-boltdb keeps: the log, and the
// stable store (current term, vote).
var raftLogBuckets = []string{"logs", "conf"}

func damagedStore(what, path string, cause error) error {
	return fmt.Errorf("%w: %s %s: %v; %s", ErrDamagedStore, what, path, cause, runbook)
}

func lockedStore(path string) error {
	return fmt.Errorf("%w: %s is locked: is another cofferd running on this data directory?", ErrStoreLocked, path)
}

// openState checks the state directory (fsm.CheckDir) and opens the state
// machine in it, turning damage, including a panic inside Pebble while it
// opens, into ErrDamagedStore.
func openState(cfg fsm.Config) (f *fsm.FSM, err error) {
	if err := fsm.CheckDir(cfg.Dir); err != nil {
		switch {
		case errors.Is(err, fsm.ErrLocked):
			return nil, lockedStore(cfg.Dir)
		case errors.Is(err, fsm.ErrCorrupt):
			return nil, damagedStore("state directory", cfg.Dir, err)
		}
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			f, err = nil, damagedStore("state directory", cfg.Dir, fmt.Errorf("panic while opening: %v", r))
		}
	}()
	f, err = fsm.Open(cfg)
	if errors.Is(err, fsm.ErrCorrupt) {
		return nil, damagedStore("state directory", cfg.Dir, err)
	}
	return f, err
}

// openRaftLog checks the Raft log file at path (checkRaftLog), copies it
// into a fresh file without bbolt's free pages (compactRaftLog, shred.go)
// and opens it with raft-boltdb.
func openRaftLog(path string) (store *raftboltdb.BoltStore, err error) {
	if err := checkRaftLog(path); err != nil {
		return nil, err
	}
	if err := compactRaftLog(path); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			store, err = nil, damagedStore("raft log", path, fmt.Errorf("panic while opening: %v", r))
		}
	}()
	store, err = raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: boltOptions()})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, lockedStore(path)
	}
	if err != nil {
		return nil, fmt.Errorf("node: open raft log %s: %w", path, err)
	}
	return store, nil
}

// checkRaftLog checks the bbolt file at path before raft-boltdb opens it.
// A missing or empty file is a new node's (bbolt creates the file, then
// writes its first pages). Otherwise the file is opened read-only, waiting
// at most boltOptions' timeout for the lock, so that a running node is
// reported as such; its pages are walked with plain reads (walkBolt), then
// bbolt's own consistency check runs (Tx.Check), and the buckets raft-boltdb
// keeps must be there unless the file holds no bucket at all. A file with
// one valid meta page is accepted as bbolt accepts it (see walkBolt).
//
// Cost: walkBolt reads every reachable page once and Tx.Check walks them
// twice more (with no freelist written, bbolt first rebuilds it by walking
// the tree); raft-boltdb's open walks once more. BenchmarkCheckRaftLog
// measures it (NOTES.md, "Figures behind constants").
func checkRaftLog(path string) (err error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("node: raft log %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("node: raft log %s is not a regular file", path)
	}
	if st.Size() == 0 {
		return nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = damagedStore("raft log", path, fmt.Errorf("panic while checking: %v", r))
		}
	}()
	o := *boltOptions()
	o.ReadOnly = true
	db, err := bbolt.Open(path, 0o600, &o)
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return lockedStore(path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("node: raft log %s: %w", path, err)
	case err != nil:
		// Say why bbolt refused the file when the meta pages tell.
		if _, werr := walkBolt(path, os.Getpagesize()); werr != nil && st.Size() >= 2*1024 {
			return damagedStore("raft log", path, fmt.Errorf("%v (%w)", werr, err))
		}
		return damagedStore("raft log", path, fmt.Errorf("%d-byte file that bbolt cannot open: %w", st.Size(), err))
	}
	defer db.Close()
	bothMetas, err := walkBolt(path, db.Info().PageSize)
	if err != nil {
		return damagedStore("raft log", path, err)
	}
	return db.View(func(tx *bbolt.Tx) error {
		// Tx.Check reads both meta pages as pages and panics on a torn
		// one, which bbolt itself survives; then the walk alone decides.
		if bothMetas {
			if err := boltCheck(tx); err != nil {
				return damagedStore("raft log", path, err)
			}
		}
		var names []string
		_ = tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
			names = append(names, string(name))
			return nil
		})
		if len(names) == 0 {
			return nil // initialised by bbolt, no bucket created yet
		}
		for _, want := range raftLogBuckets {
			if tx.Bucket([]byte(want)) == nil {
				return damagedStore("raft log", path, fmt.Errorf("bucket %q is missing (the file holds %s)", want, strings.Join(names, ", ")))
			}
		}
		return nil
	})
}

// boltCheck runs bbolt's consistency check and returns its first errors.
// The check runs on a goroutine of bbolt's and recovers its own panics into
// errors; every error is read, so that the goroutine ends before the
// transaction does.
func boltCheck(tx *bbolt.Tx) error {
	var errs []string
	n := 0
	for err := range tx.Check() {
		if n++; len(errs) < 3 {
			errs = append(errs, err.Error())
		}
	}
	if n == 0 {
		return nil
	}
	if n > len(errs) {
		errs = append(errs, fmt.Sprintf("and %d more", n-len(errs)))
	}
	return fmt.Errorf("bbolt's consistency check failed: %s", strings.Join(errs, "; "))
}
