package fsm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
	"github.com/klauspost/compress/zstd"
)

// Snapshot stream format, version 1:
//
//	magic "COFFER-FSM-SNAP\x01"
//	repeated: uvarint(len(key)) key uvarint(len(value)) value
//	uvarint(0)                       end of records (keys are never empty)
//	32-byte SHA-256 of everything before it
//
// Version 2, which WriteSnapshot writes, is the magic "COFFER-FSM-SNAP\x02"
// followed by one zstd stream whose content is a whole version 1 stream:
// the audit log makes up most of a snapshot and compresses well (the
// figure is in DESIGN.md, "Snapshot format").
// Readers take both versions.
//
// Every key in the store is included, the applied index among them, so a
// restored replica resumes exactly where the snapshot was taken. The stream
// holds only what Pebble holds: wrapped key material, never plaintext.
var (
	snapMagic     = []byte("COFFER-FSM-SNAP\x01")
	snapMagicZstd = []byte("COFFER-FSM-SNAP\x02")
)

// maxSnapWindow bounds the zstd window a snapshot reader accepts, and so
// the memory a hostile stream can make it allocate.
const maxSnapWindow = 64 << 20

// maxSnapRecord bounds one key or value read from a snapshot stream.
const maxSnapRecord = 16 << 20

// restoreBatchBytes bounds one Pebble batch during Restore.
const restoreBatchBytes = 4 << 20

type snapshot struct {
	snap *pebble.Snapshot
}

// Snapshot captures the committed state at this point. It first makes every
// applied batch durable in Pebble, since Raft may compact the log up to the
// snapshot's index once it is persisted. With a SnapshotStore (see
// UseSnapshotStore) the snapshot is a Pebble checkpoint, taken here while
// Apply waits; otherwise a Pebble snapshot that Persist writes as a stream.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	if s := f.snapStore; s != nil {
		dir := s.scratch()
		if err := f.db.Checkpoint(dir, pebble.WithFlushedWAL()); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("fsm: checkpoint: %w", err)
		}
		return &checkpointSnapshot{dir: dir}, nil
	}
	if err := f.db.LogData(nil, pebble.Sync); err != nil {
		return nil, fmt.Errorf("fsm: sync before snapshot: %w", err)
	}
	return &snapshot{snap: f.db.NewSnapshot()}, nil
}

// UseSnapshotStore makes Snapshot take Pebble checkpoints for s. Call it
// before Raft starts.
func (f *FSM) UseSnapshotStore(s *SnapshotStore) { f.snapStore = s }

// Persist writes the snapshot stream to sink.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := WriteSnapshot(s.snap, sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

// Release frees the Pebble snapshot.
func (s *snapshot) Release() { _ = s.snap.Close() }

// WriteSnapshot writes every key of r to w as a version 2 (compressed)
// snapshot stream.
func WriteSnapshot(r reader, w io.Writer) error {
	if _, err := w.Write(snapMagicZstd); err != nil {
		return fmt.Errorf("fsm: write snapshot: %w", err)
	}
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return fmt.Errorf("fsm: snapshot compressor: %w", err)
	}
	if err := writeSnapshotV1(r, zw); err != nil {
		_ = zw.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("fsm: write snapshot: %w", err)
	}
	return nil
}

// writeSnapshotV1 writes every key of r to w as a version 1 stream.
func writeSnapshotV1(r reader, w io.Writer) error {
	h := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, h), 256<<10)
	if _, err := bw.Write(snapMagic); err != nil {
		return fmt.Errorf("fsm: write snapshot: %w", err)
	}
	it, err := r.NewIter(nil)
	if err != nil {
		return fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	var lenBuf [binary.MaxVarintLen64]byte
	for ok := it.First(); ok; ok = it.Next() {
		if bytes.Equal(it.Key(), keyRestoring) {
			continue
		}
		for _, part := range [][]byte{it.Key(), it.Value()} {
			n := binary.PutUvarint(lenBuf[:], uint64(len(part)))
			if _, err := bw.Write(lenBuf[:n]); err != nil {
				return fmt.Errorf("fsm: write snapshot: %w", err)
			}
			if _, err := bw.Write(part); err != nil {
				return fmt.Errorf("fsm: write snapshot: %w", err)
			}
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("fsm: iterate: %w", err)
	}
	if err := bw.WriteByte(0); err != nil {
		return fmt.Errorf("fsm: write snapshot: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("fsm: write snapshot: %w", err)
	}
	if _, err := w.Write(h.Sum(nil)); err != nil {
		return fmt.Errorf("fsm: write snapshot: %w", err)
	}
	return nil
}

// Restore replaces the whole state with the snapshot stream. While it runs a
// marker key is present; Open discards state that still has the marker, so a
// crash mid-restore never leaves a mix of old and new state in service.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	f.restoring.Store(true)
	defer f.restoring.Store(false)
	if err := f.db.Set(keyRestoring, []byte{1}, pebble.Sync); err != nil {
		return fmt.Errorf("fsm: mark restore: %w", err)
	}
	f.cache.resetKeys()
	if err := f.db.DeleteRange([]byte{0}, keyRestoring, pebble.NoSync); err != nil {
		return fmt.Errorf("fsm: clear state: %w", err)
	}
	if err := f.db.DeleteRange(append(bytes.Clone(keyRestoring), 0), bytes.Repeat([]byte{0xff}, 16), pebble.NoSync); err != nil {
		return fmt.Errorf("fsm: clear state: %w", err)
	}
	b := f.db.NewBatch()
	err := readSnapshot(rc, func(k, v []byte) error {
		if bytes.Equal(k, keyRestoring) {
			return nil
		}
		if err := b.Set(k, v, nil); err != nil {
			return err
		}
		if b.Len() >= restoreBatchBytes {
			if err := b.Commit(pebble.NoSync); err != nil {
				return err
			}
			b.Close()
			b = f.db.NewBatch()
		}
		return nil
	})
	if err == nil {
		err = b.Delete(keyRestoring, nil)
	}
	if err == nil {
		err = b.Commit(pebble.Sync)
	}
	seq := batchEnd(b)
	b.Close()
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	idx, term := uint64(0), uint64(0)
	if v, gerr := get(f.db, keyApplied); gerr == nil {
		idx, term, _ = decodeApplied(v)
	}
	f.cache.reset()
	f.cache.resetKeys()
	f.rebuildAuthz()
	f.rebuildMembers()
	if f.onAccessChange != nil {
		f.onAccessChange()
	}
	f.loadAuditSeq()
	f.loadDiverged()
	f.applied.Store(idx)
	f.term.Store(term)
	f.notify()
	// The records the store held before may have carried material the
	// snapshot's do not.
	f.noteMaterialRemoved(idx, seq)
	f.logger.Info("fsm: restored snapshot", "applied_index", idx)
	return nil
}

// Restoring reports whether Restore is replacing the store: until it
// returns, the store holds part of the old state and part of the new, and
// nothing read from it may be served.
func (f *FSM) Restoring() bool { return f.restoring.Load() }

// readSnapshot parses a snapshot stream of either version, calling fn for
// every record, and verifies the trailing checksum.
func readSnapshot(r io.Reader, fn func(k, v []byte) error) error {
	br := bufio.NewReaderSize(r, 256<<10)
	head, err := br.Peek(len(snapMagicZstd))
	if err != nil || !bytes.Equal(head, snapMagicZstd) {
		return readSnapshotV1(br, fn, false)
	}
	if _, err := br.Discard(len(snapMagicZstd)); err != nil {
		return fmt.Errorf("%w: bad header", ErrBadSnapshot)
	}
	zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxSnapWindow), zstd.WithDecoderLowmem(true))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadSnapshot, err)
	}
	defer zr.Close()
	return readSnapshotV1(zr, fn, true)
}

// readSnapshotV1 parses a version 1 stream. With atEnd, the stream must
// end right after the checksum (inside a version 2 stream, reading to the
// end also has zstd check its frames).
func readSnapshotV1(r io.Reader, fn func(k, v []byte) error, atEnd bool) error {
	h := sha256.New()
	br := bufio.NewReaderSize(r, 256<<10)
	tr := &hashReader{r: br, h: h}
	magic := make([]byte, len(snapMagic))
	if _, err := io.ReadFull(tr, magic); err != nil || !bytes.Equal(magic, snapMagic) {
		return fmt.Errorf("%w: bad header", ErrBadSnapshot)
	}
	for {
		k, err := readPart(tr)
		if err != nil {
			return err
		}
		if len(k) == 0 {
			break
		}
		v, err := readPart(tr)
		if err != nil {
			return err
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
	want := h.Sum(nil)
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(br, got); err != nil {
		return fmt.Errorf("%w: missing checksum", ErrBadSnapshot)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%w: checksum mismatch", ErrBadSnapshot)
	}
	if atEnd {
		if _, err := br.ReadByte(); err != io.EOF {
			if err == nil {
				return fmt.Errorf("%w: data after the checksum", ErrBadSnapshot)
			}
			return fmt.Errorf("%w: %v", ErrBadSnapshot, err)
		}
	}
	return nil
}

func readPart(r *hashReader) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("%w: truncated: %v", ErrBadSnapshot, err)
	}
	if n > maxSnapRecord {
		return nil, fmt.Errorf("%w: record of %d bytes exceeds %d", ErrBadSnapshot, n, maxSnapRecord)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("%w: truncated: %v", ErrBadSnapshot, err)
	}
	return buf, nil
}

type hashReader struct {
	r *bufio.Reader
	h hash.Hash
}

func (t *hashReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.h.Write(p[:n])
	return n, err
}

func (t *hashReader) ReadByte() (byte, error) {
	c, err := t.r.ReadByte()
	if err == nil {
		t.h.Write([]byte{c})
	}
	return c, err
}
