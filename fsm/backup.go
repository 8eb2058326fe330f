package fsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/encoding/protojson"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// Backups (coffer snapshot save / restore).
//
// A backup file is a header line, the seal as one line of JSON, and the
// snapshot stream:
//
//	coffer-backup 1\n
//	{"clusterId":"...","appliedIndex":"...",...}\n     cofferv1.SnapshotSeal (protojson)
//	<snapshot stream, WriteSnapshot's format>
//
// The stream leaves out the member pins (n/ records): they name the
// certificates of the cluster that took the backup, and a cluster restored
// from it admits its own members afresh. It also leaves out the applied
// index: the restoring cluster's Raft log places the restore at an index
// of its own, and entries after it must apply. The seal (node/backup.go)
// covers the stream's SHA-256 and length and the seal's other fields.

// backupMagic starts every backup file.
var backupMagic = []byte("coffer-backup 1\n")

// maxSealLine bounds the seal line of a backup file.
const maxSealLine = 16 << 10

// ErrNotBackup is a file that is not a Coffer backup.
var ErrNotBackup = errors.New("fsm: not a Coffer backup (coffer snapshot save)")

// BackupTo writes the committed state, less the member pins, to w as a
// snapshot stream and returns the applied index it describes.
func (f *FSM) BackupTo(w io.Writer) (uint64, error) {
	snap := f.db.NewSnapshot()
	defer snap.Close()
	idx := uint64(0)
	if v, err := get(snap, keyApplied); err == nil {
		idx, _, _ = decodeApplied(v)
	}
	return idx, WriteSnapshot(backupView{snap}, w)
}

// backupView is a reader whose iterators skip the member pins and the
// applied index.
type backupView struct{ reader }

func (r backupView) NewIter(*pebble.IterOptions) (*pebble.Iterator, error) {
	return r.reader.NewIter(&pebble.IterOptions{SkipPoint: func(k []byte) bool {
		return bytes.HasPrefix(k, prefixNode) || bytes.Equal(k, keyApplied)
	}})
}

// HasKeys reports whether the committed state holds any key record.
func (f *FSM) HasKeys() (bool, error) {
	it, err := f.db.NewIter(&pebble.IterOptions{LowerBound: prefixKey, UpperBound: prefixEnd(prefixKey)})
	if err != nil {
		return false, fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	return it.First(), it.Error()
}

// WriteBackupHeader writes a backup file's header and seal lines.
func WriteBackupHeader(w io.Writer, seal *cofferv1.SnapshotSeal) error {
	b, err := protojson.Marshal(seal)
	if err != nil {
		return fmt.Errorf("fsm: encode backup seal: %w", err)
	}
	if _, err := w.Write(backupMagic); err != nil {
		return err
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return err
	}
	return nil
}

// ReadBackupHeader reads a backup file's header and seal and returns the
// seal and a reader of the snapshot stream that follows.
func ReadBackupHeader(r io.Reader) (*cofferv1.SnapshotSeal, io.Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic := make([]byte, len(backupMagic))
	if _, err := io.ReadFull(br, magic); err != nil || !bytes.Equal(magic, backupMagic) {
		return nil, nil, ErrNotBackup
	}
	line, err := readLine(br, maxSealLine)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: seal line: %v", ErrNotBackup, err)
	}
	var seal cofferv1.SnapshotSeal
	if err := protojson.Unmarshal(line, &seal); err != nil {
		return nil, nil, fmt.Errorf("%w: seal: %v", ErrNotBackup, err)
	}
	return &seal, br, nil
}

func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var out []byte
	for {
		b, err := br.ReadByte()
		if err != nil {
			return nil, err
		}
		if b == '\n' {
			return out, nil
		}
		if len(out) >= max {
			return nil, fmt.Errorf("longer than %d bytes", max)
		}
		out = append(out, b)
	}
}

// SealAAD is the associated data a backup seal binds: every field of the
// seal but the wrapped KEK and the seal itself.
func SealAAD(s *cofferv1.SnapshotSeal) []byte {
	var b []byte
	b = append(b, "coffer-backup-seal-v1\x00"...)
	b = append(b, s.GetClusterId()...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint64(b, s.GetAppliedIndex())
	b = binary.BigEndian.AppendUint64(b, uint64(s.GetSavedUnixNano()))
	b = binary.BigEndian.AppendUint64(b, s.GetSize())
	b = append(b, s.GetNode()...)
	return b
}
