package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrLocked refuses to check or open a state directory that another
// process (or another store in this one) holds open.
var ErrLocked = errors.New("fsm: state directory is locked")

// CheckDir checks the state store in dir before Open, without changing it,
// so that a damaged store is refused with an error instead of a panic inside
// Pebble. It returns nil when dir does not exist or holds no store yet (a new
// node), an error wrapping ErrLocked when another process holds the store,
// and an error wrapping ErrCorrupt when the store is damaged.
//
// What it checks, at a cost bounded by the number of files rather than the
// amount of data: the MANIFEST and the write-ahead log (by opening the store
// read-only, which replays the log), the size, footer, index and properties
// blocks of every live sstable (each block checksummed), and the state
// machine's metadata records (m/...), including the applied index. Data
// blocks of the sstables are checksummed by Pebble when they are read, not
// here: reading them all would cost time in proportion to the state.
//
// Pebble reports corruption found while reading through its event listener;
// Open's listener stops the process. Here it is recorded and returned, and
// a panic inside Pebble is recovered into an error.
func CheckDir(dir string) (err error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("fsm: state directory %s: %w", dir, err)
	}
	lock, err := pebble.LockDirectory(dir, vfs.Default)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			// The lock file could not be created: permissions, not damage.
			return fmt.Errorf("fsm: lock state directory %s: %w", dir, err)
		}
		return fmt.Errorf("%w: %s: %v", ErrLocked, dir, err)
	}
	defer func() { _ = lock.Close() }()

	var mu sync.Mutex
	var reported []string
	corrupt := func(cause error) error {
		// Pebble joins a corruption error with a line that only carries
		// details; keep the message on one line.
		var lines []string
		for _, l := range strings.Split(cause.Error(), "\n") {
			if l = strings.TrimSpace(l); l != "" && l != "<corruption detail carrier>" {
				lines = append(lines, l)
			}
		}
		msg := strings.Join(lines, "; ")
		mu.Lock()
		defer mu.Unlock()
		if len(reported) > 0 {
			return fmt.Errorf("%w: %s (corruption in %s)", ErrCorrupt, msg, strings.Join(reported, ", "))
		}
		return fmt.Errorf("%w: %s", ErrCorrupt, msg)
	}
	defer func() {
		if r := recover(); r != nil {
			err = corrupt(fmt.Errorf("panic while reading the store: %v", r))
		}
	}()
	opts := &pebble.Options{
		ReadOnly:          true,
		Lock:              lock,
		DisableTableStats: true,
		Logger:            checkLogger{},
		EventListener: &pebble.EventListener{DataCorruption: func(info pebble.DataCorruptionInfo) {
			mu.Lock()
			defer mu.Unlock()
			if len(reported) < 3 {
				reported = append(reported, info.Path)
			}
		}},
	}
	db, err := pebble.Open(dir, opts)
	if errors.Is(err, pebble.ErrDBDoesNotExist) {
		return checkNoStrayFiles(dir)
	}
	if err != nil {
		return corrupt(err)
	}
	defer func() {
		if cerr := db.Close(); cerr != nil && err == nil {
			err = corrupt(fmt.Errorf("close after check: %w", cerr))
		}
	}()
	// Opens every live sstable and reads its footer, index and properties.
	if _, err := db.SSTables(pebble.WithProperties()); err != nil {
		return corrupt(err)
	}
	if err := checkMetadata(db); err != nil {
		return corrupt(err)
	}
	return nil
}

// checkMetadata reads every metadata record (m/...) and decodes the applied
// index.
func checkMetadata(db *pebble.DB) error {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("m/"), UpperBound: []byte("m0")})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			_ = it.Close()
			return fmt.Errorf("read %q: %w", it.Key(), err)
		}
		if bytes.Equal(it.Key(), keyApplied) {
			if _, _, ok := decodeApplied(v); !ok {
				_ = it.Close()
				return fmt.Errorf("applied index record has %d bytes", len(v))
			}
		}
	}
	return it.Close()
}

// checkNoStrayFiles refuses a directory that has no current manifest but
// holds sstables or manifests: Open would start an empty store beside them.
func checkNoStrayFiles(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("fsm: state directory %s: %w", dir, err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasSuffix(name, ".sst") || strings.HasPrefix(name, "MANIFEST-") {
			return fmt.Errorf("%w: no current manifest, but the directory holds %s", ErrCorrupt, filepath.Join(dir, name))
		}
	}
	return nil
}

// checkLogger discards Pebble's messages during the check (the error says
// what is wrong) and turns a fatal one into a panic that CheckDir recovers.
type checkLogger struct{}

func (checkLogger) Infof(string, ...interface{})  {}
func (checkLogger) Errorf(string, ...interface{}) {}
func (checkLogger) Fatalf(format string, args ...interface{}) {
	panic(fmt.Sprintf(format, args...))
}
