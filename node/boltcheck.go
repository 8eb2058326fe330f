package node

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"sort"
)

// walkBolt checks the page structure of the bbolt file at path with plain
// reads, before bbolt reads it through its memory map. bbolt trusts its
// pages: a damaged page makes it panic, often on a goroutine of its own
// where no recover reaches, or fault on an address outside the map, which
// no recover catches either. So every page id, element offset and length
// that bbolt would follow is bounded here first: after walkBolt passes,
// bbolt's own traversal (Tx.Check, the free page scan when it opens) stays
// inside the file.
//
// It reads the meta page bbolt would use (the valid one with the higher
// transaction id), then every page reachable from it once: ids in range and
// matching the header, page types, element tables and keys inside the page,
// keys in order within and across pages, no page referenced twice, bucket
// headers and inline buckets; and the freelist page's bounds when one is
// written. For the Raft log store it also checks what raft-boltdb reads
// without checking: log keys of 8 bytes and 8-byte term values.
//
// Pages are read level by level, each level in page id order and in 1 MiB
// pieces: about one sequential read of the file. bothMetas reports whether both meta pages are valid: bbolt survives a torn
// meta page (the write a crash interrupted) by using the other one.
func walkBolt(path string, pageSize int) (bothMetas bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	w := &boltWalker{f: f, size: st.Size(), pageSize: pageSize}
	err = w.walk()
	return w.validMetas == 2, err
}

// bbolt's file format (go.etcd.io/bbolt/internal/common), in the byte order
// of the machine that wrote it.
const (
	boltPageHeader   = 16 // id u64, flags u16, count u16, overflow u32
	boltElementSize  = 16 // branch: pos u32, ksize u32, pgid u64; leaf: flags u32, pos u32, ksize u32, vsize u32
	boltBucketHeader = 16 // root pgid u64, sequence u64
	boltMetaSize     = 64 // magic, version, page size, flags u32; root, sequence, freelist, pgid, txid, checksum u64
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltNoFreelist   = ^uint64(0)

	boltBranchPage   = 0x01
	boltLeafPage     = 0x02
	boltFreelistPage = 0x10
	boltBucketLeaf   = 0x01

	// boltMaxDepth bounds the nesting of pages and buckets: a B+tree of
	// this file's size is a few levels deep; a deeper chain is damage.
	boltMaxDepth = 64
)

var boltEndian = binary.NativeEndian

type boltMeta struct {
	pageSize       uint32
	root, freelist uint64
	hwm, txid      uint64
}

// parseBoltMeta decodes and validates the meta page in p, as bbolt's
// Meta.Validate does.
func parseBoltMeta(p []byte) (boltMeta, error) {
	if len(p) < boltPageHeader+boltMetaSize {
		return boltMeta{}, fmt.Errorf("short page")
	}
	m := p[boltPageHeader : boltPageHeader+boltMetaSize]
	if boltEndian.Uint32(m[0:]) != boltMagic {
		return boltMeta{}, fmt.Errorf("no bbolt magic number")
	}
	if v := boltEndian.Uint32(m[4:]); v != boltVersion {
		return boltMeta{}, fmt.Errorf("format version %d, want %d", v, boltVersion)
	}
	h := fnv.New64a()
	_, _ = h.Write(m[:56])
	if h.Sum64() != boltEndian.Uint64(m[56:]) {
		return boltMeta{}, fmt.Errorf("checksum mismatch")
	}
	return boltMeta{pageSize: boltEndian.Uint32(m[8:]), root: boltEndian.Uint64(m[16:]), freelist: boltEndian.Uint64(m[32:]),
		hwm: boltEndian.Uint64(m[40:]), txid: boltEndian.Uint64(m[48:])}, nil
}

type boltWalker struct {
	f        io.ReaderAt
	size     int64
	pageSize int
	meta     boltMeta
	// validMetas counts the valid meta pages.
	validMetas int
	seen       []uint64 // bit per page id below hwm
	// chunk caches the aligned boltChunk bytes at chunkOff: pages are read
	// in id order, so the file is read in large sequential pieces.
	chunk    []byte
	chunkOff int64
}

// boltChunk is how much of the file one read brings in.
const boltChunk = 1 << 20

// pageRef is a page still to check: its id, the bounds its keys must lie
// in ([lo, hi), nil: unbounded), its bucket, the page that refers to it (0:
// the bucket's header) and its depth in pages and buckets.
type pageRef struct {
	id, from uint64
	lo, hi   []byte
	path     string
	depth    int
}

func (w *boltWalker) walk() error {
	meta, err := w.pickMeta()
	if err != nil {
		return err
	}
	w.meta = meta
	ps := uint64(w.pageSize)
	if int(meta.pageSize) != w.pageSize {
		return fmt.Errorf("meta page (txid %d) gives a page size of %d, but the file was opened with %d", meta.txid, meta.pageSize, w.pageSize)
	}
	if meta.hwm < 3 || meta.hwm > uint64(w.size)/ps {
		return fmt.Errorf("the file is %d bytes, but its meta page (txid %d) describes %d pages of %d bytes (%d bytes): the file was truncated or the meta page is wrong",
			w.size, meta.txid, meta.hwm, ps, meta.hwm*ps)
	}
	w.seen = make([]uint64, meta.hwm/64+1)
	w.mark(0)
	w.mark(1)
	if meta.freelist != boltNoFreelist {
		if err := w.checkFreelist(meta.freelist); err != nil {
			return err
		}
	}
	if meta.root < 2 || meta.root >= meta.hwm {
		return fmt.Errorf("meta page (txid %d) names root page %d, outside pages 2 to %d", meta.txid, meta.root, meta.hwm-1)
	}
	// Level by level, each level in page id order.
	level := []pageRef{{id: meta.root}}
	for len(level) > 0 {
		sort.Slice(level, func(i, j int) bool { return level[i].id < level[j].id })
		var next []pageRef
		for _, ref := range level {
			if ref.depth > boltMaxDepth {
				return fmt.Errorf("pages nest more than %d deep at page %d (%s)", boltMaxDepth, ref.id, bucketName(ref.path))
			}
			p, err := w.readPage(ref)
			if err != nil {
				return err
			}
			if next, err = w.checkPage(p, ref, next); err != nil {
				return err
			}
		}
		level = next
	}
	return nil
}

// pickMeta reads both meta pages and returns the one bbolt uses: the one
// with the higher transaction id if it is valid, else the other.
func (w *boltWalker) pickMeta() (boltMeta, error) {
	var metas [2]boltMeta
	var errs [2]error
	var txids [2]uint64
	for i := range metas {
		p := make([]byte, boltPageHeader+boltMetaSize)
		if _, err := w.f.ReadAt(p, int64(i*w.pageSize)); err != nil {
			errs[i] = fmt.Errorf("unreadable: %v", err)
			continue
		}
		txids[i] = boltEndian.Uint64(p[boltPageHeader+48:])
		metas[i], errs[i] = parseBoltMeta(p)
	}
	for _, err := range errs {
		if err == nil {
			w.validMetas++
		}
	}
	a, b := 0, 1
	if txids[1] > txids[0] {
		a, b = 1, 0
	}
	if errs[a] == nil {
		return metas[a], nil
	}
	if errs[b] == nil {
		return metas[b], nil
	}
	return boltMeta{}, fmt.Errorf("both meta pages are invalid (page 0: %v; page 1: %v)", errs[0], errs[1])
}

// mark records page id as reachable and reports whether it already was.
func (w *boltWalker) mark(id uint64) bool {
	bit := uint64(1) << (id % 64)
	was := w.seen[id/64]&bit != 0
	w.seen[id/64] |= bit
	return was
}

// read returns n bytes at off, valid until the next call.
func (w *boltWalker) read(off int64, n int) ([]byte, error) {
	if off >= w.chunkOff && off+int64(n) <= w.chunkOff+int64(len(w.chunk)) {
		return w.chunk[off-w.chunkOff : off-w.chunkOff+int64(n)], nil
	}
	start := off - off%boltChunk
	if off+int64(n) > start+boltChunk {
		// Spans chunks (a page with overflow pages): read it alone.
		b := make([]byte, n)
		_, err := w.f.ReadAt(b, off)
		return b, err
	}
	size := int64(boltChunk)
	if start+size > w.size {
		size = w.size - start
	}
	if w.chunk == nil {
		w.chunk = make([]byte, boltChunk)
	}
	w.chunk = w.chunk[:size]
	w.chunkOff = start
	if _, err := w.f.ReadAt(w.chunk, start); err != nil {
		w.chunk = w.chunk[:0]
		return nil, err
	}
	return w.chunk[off-start : off-start+int64(n)], nil
}

// refName says where a reference to a page came from.
func (ref pageRef) refName() string {
	if ref.from != 0 {
		return fmt.Sprintf("branch page %d of %s", ref.from, bucketName(ref.path))
	}
	return bucketName(ref.path)
}

// readPage reads the page ref names with its overflow pages, checking that
// it lies inside the file, names itself and is not referenced twice.
func (w *boltWalker) readPage(ref pageRef) ([]byte, error) {
	id := ref.id
	if id < 2 || id >= w.meta.hwm {
		return nil, fmt.Errorf("%s refers to page %d, outside pages 2 to %d", ref.refName(), id, w.meta.hwm-1)
	}
	ps := uint64(w.pageSize)
	head, err := w.read(int64(id*ps), int(ps))
	if err != nil {
		return nil, fmt.Errorf("page %d: %v", id, err)
	}
	if got := boltEndian.Uint64(head); got != id {
		return nil, fmt.Errorf("page %d (%s) identifies itself as page %d", id, ref.refName(), got)
	}
	overflow := uint64(boltEndian.Uint32(head[12:]))
	if overflow >= w.meta.hwm-id {
		return nil, fmt.Errorf("page %d (%s) claims %d overflow pages, past the end at page %d", id, ref.refName(), overflow, w.meta.hwm-1)
	}
	for i := id; i <= id+overflow; i++ {
		if w.mark(i) {
			return nil, fmt.Errorf("page %d (%s) is referenced twice", i, ref.refName())
		}
	}
	if overflow == 0 {
		return head, nil
	}
	p, err := w.read(int64(id*ps), int((overflow+1)*ps))
	if err != nil {
		return nil, fmt.Errorf("page %d with its %d overflow pages: %v", id, overflow, err)
	}
	return p, nil
}

func (w *boltWalker) checkFreelist(id uint64) error {
	p, err := w.readPage(pageRef{id: id, path: "freelist"})
	if err != nil {
		return err
	}
	if flags := boltEndian.Uint16(p[8:]); flags != boltFreelistPage {
		return fmt.Errorf("freelist page %d has type 0x%02x, not a freelist", id, flags)
	}
	start, count := uint64(boltPageHeader), uint64(boltEndian.Uint16(p[10:]))
	if count == 0xFFFF {
		// The real count is the first id slot.
		count = boltEndian.Uint64(p[start:])
		start += 8
	}
	if count > (uint64(len(p))-start)/8 {
		return fmt.Errorf("freelist page %d claims %d free pages, more than it holds", id, count)
	}
	for i := uint64(0); i < count; i++ {
		if fid := boltEndian.Uint64(p[start+8*i:]); fid < 2 || fid >= w.meta.hwm {
			return fmt.Errorf("freelist page %d lists page %d, outside pages 2 to %d", id, fid, w.meta.hwm-1)
		}
	}
	return nil
}

// checkPage checks the branch or leaf page p that ref names (id 0: an
// inline bucket's page) and appends the pages it refers to to next. Keys
// that go into next are copied: p is only valid until the next read.
func (w *boltWalker) checkPage(p []byte, ref pageRef, next []pageRef) ([]pageRef, error) {
	where := func() string {
		if ref.id == 0 {
			return "the inline page of " + bucketName(ref.path)
		}
		return fmt.Sprintf("page %d (%s)", ref.id, bucketName(ref.path))
	}
	if len(p) < boltPageHeader {
		return nil, fmt.Errorf("%s is %d bytes, shorter than a page header", where(), len(p))
	}
	flags, count := boltEndian.Uint16(p[8:]), int(boltEndian.Uint16(p[10:]))
	if flags != boltBranchPage && flags != boltLeafPage {
		return nil, fmt.Errorf("%s has type 0x%02x where a branch or leaf page belongs", where(), flags)
	}
	if boltPageHeader+count*boltElementSize > len(p) {
		return nil, fmt.Errorf("%s claims %d elements, more than fit in %d bytes", where(), count, len(p))
	}
	if flags == boltBranchPage && (count == 0 || ref.id == 0) {
		return nil, fmt.Errorf("%s is a branch page with %d elements", where(), count)
	}
	// element returns element i's key and value (nil for a branch).
	element := func(i int) (k, v []byte, err error) {
		e := boltPageHeader + i*boltElementSize
		var pos, ksize, vsize uint64
		if flags == boltBranchPage {
			pos, ksize = uint64(boltEndian.Uint32(p[e:])), uint64(boltEndian.Uint32(p[e+4:]))
		} else {
			pos, ksize, vsize = uint64(boltEndian.Uint32(p[e+4:])), uint64(boltEndian.Uint32(p[e+8:])), uint64(boltEndian.Uint32(p[e+12:]))
		}
		end := uint64(e) + pos + ksize + vsize
		if end > uint64(len(p)) {
			return nil, nil, fmt.Errorf("%s: element %d points %d bytes past the page", where(), i, end-uint64(len(p)))
		}
		k = p[uint64(e)+pos : uint64(e)+pos+ksize]
		if flags == boltLeafPage {
			v = p[uint64(e)+pos+ksize : end]
		}
		return k, v, nil
	}
	prev := ref.lo
	var k, v []byte
	var err error
	if count > 0 {
		if k, v, err = element(0); err != nil {
			return nil, err
		}
	}
	for i := 0; i < count; i++ {
		var nk, nv []byte
		if i+1 < count {
			if nk, nv, err = element(i + 1); err != nil {
				return nil, err
			}
		}
		if prev != nil && (bytes.Compare(k, prev) < 0 || (i > 0 && bytes.Equal(k, prev))) {
			return nil, fmt.Errorf("%s: key %d (%x) is out of order after %x", where(), i, k, prev)
		}
		if ref.hi != nil && bytes.Compare(k, ref.hi) >= 0 {
			return nil, fmt.Errorf("%s: key %d (%x) is not below its parent's next key %x", where(), i, k, ref.hi)
		}
		e := boltPageHeader + i*boltElementSize
		switch {
		case flags == boltBranchPage:
			hi := ref.hi
			if i+1 < count {
				hi = bytes.Clone(nk)
			}
			next = append(next, pageRef{id: boltEndian.Uint64(p[e+8:]), from: ref.id, lo: bytes.Clone(k), hi: hi,
				path: ref.path, depth: ref.depth + 1})
		default:
			leafFlags := boltEndian.Uint32(p[e:])
			if err := checkRaftEntry(ref.path, k, v, leafFlags); err != nil {
				return nil, fmt.Errorf("%s: %w", where(), err)
			}
			if leafFlags&boltBucketLeaf == 0 {
				break
			}
			if ref.id == 0 {
				return nil, fmt.Errorf("%s holds bucket %q, which an inline bucket cannot", where(), k)
			}
			if next, err = w.checkBucket(k, v, ref, next); err != nil {
				return nil, err
			}
		}
		prev, k, v = k, nk, nv
	}
	return next, nil
}

// checkBucket checks the header v of the bucket named name found on the
// page ref names, checks its page at once when it is inline, and appends
// its root page to next otherwise.
func (w *boltWalker) checkBucket(name, v []byte, ref pageRef, next []pageRef) ([]pageRef, error) {
	path := string(name)
	if ref.path != "" {
		path = ref.path + "/" + path
	}
	if len(v) < boltBucketHeader {
		return nil, fmt.Errorf("%s has a %d-byte header, shorter than %d", bucketName(path), len(v), boltBucketHeader)
	}
	if root := boltEndian.Uint64(v); root != 0 {
		return append(next, pageRef{id: root, path: path, depth: ref.depth + 1}), nil
	}
	// An inline bucket: its page follows the header.
	return w.checkPage(v[boltBucketHeader:], pageRef{path: path, depth: ref.depth + 1}, next)
}

// checkRaftEntry checks what raft-boltdb decodes without checking lengths
// (a short value would panic in Raft at start): log indexes are 8-byte keys
// and the stored terms 8-byte values.
func checkRaftEntry(bucket string, k, v []byte, flags uint32) error {
	switch bucket {
	case "logs":
		if len(k) != 8 || flags&boltBucketLeaf != 0 {
			return fmt.Errorf("log key %x is not an 8-byte index", k)
		}
	case "conf":
		if (string(k) == "CurrentTerm" || string(k) == "LastVoteTerm") && (len(v) != 8 || flags&boltBucketLeaf != 0) {
			return fmt.Errorf("%s has %d bytes, not 8", k, len(v))
		}
	}
	return nil
}

func bucketName(path string) string {
	if path == "" {
		return "the root bucket"
	}
	return fmt.Sprintf("bucket %q", path)
}
