package client

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Streams: SealStream and OpenStream encrypt and decrypt data of any size
// in constant memory, in segments of DefaultSegmentSize plaintext bytes,
// each sealed with AES-256-GCM under the stream's data key, a nonce derived
// from the stream's random nonce prefix, the segment's number and whether it
// is the last, and the stream header as associated data (ENVELOPE.md). A
// reordered, duplicated, dropped or changed segment fails to verify, and a
// stream cut at a segment boundary is reported as truncated.

// streamHeaderLen is the length of a stream header with a wrapped key of w
// bytes: the prefix, the wrapped key, the segment size and the nonce prefix.
func streamHeaderLen(w int) int { return envPrefixLen + w + 4 + noncePrefixLen }

// SealStream writes to w the header of a stream envelope whose data key is
// issued as for Seal, and returns a writer that encrypts what is written to
// it, segment by segment, onto w. The caller must Close the writer: Close
// writes the last segment and does not close w; without it the stream reads back as truncated. Memory
// use is about two segments whatever the size of the data. A write error
// from w is returned by that Write or Close and by every call after it.
func (c *Client) SealStream(ctx context.Context, policy, resource string, w io.Writer) (io.WriteCloser, error) {
	return sealStream(ctx, c, policy, resource, w, DefaultSegmentSize)
}

// OpenStream reads a stream envelope's header from r, unwraps its data key
// through the cluster (as Open does) and returns a reader of the plaintext.
// The reader returns each segment's plaintext only after that segment
// verifies, but the stream as a whole is only known to be complete and
// unaltered when Read returns io.EOF: a caller must not act on the data
// before then. Any other error is final; envelope errors wrap
// ErrEnvelopeMalformed, ErrEnvelopeVersion, ErrEnvelopeAuthentication or
// ErrEnvelopeTruncated, and r's own errors are returned wrapped. Memory use
// is about two segments of the size the header declares (at most
// MaxSegmentSize).
func (c *Client) OpenStream(ctx context.Context, r io.Reader) (io.Reader, error) {
	return openStream(ctx, c, r)
}

// segmentNonce writes the nonce of segment i into nonce: the stream's
// nonce prefix, i as a u32, and 1 for the last segment, 0 for the others.
func segmentNonce(nonce []byte, prefix []byte, i uint64, last bool) {
	copy(nonce, prefix)
	binary.BigEndian.PutUint32(nonce[noncePrefixLen:], uint32(i))
	nonce[envNonceSize-1] = 0
	if last {
		nonce[envNonceSize-1] = 1
	}
}

type sealWriter struct {
	w      io.Writer
	aead   cipher.AEAD
	hdr    []byte // the associated data of every segment
	prefix []byte
	nonce  [envNonceSize]byte
	buf    []byte // pending plaintext, at most one segment
	out    []byte // one sealed segment
	n      uint64 // segments written
	err    error  // sticky
	closed bool
}

func sealStream(ctx context.Context, src dataKeySource, policy, resource string, w io.Writer, seg int) (*sealWriter, error) {
	key, wrapped, err := src.newDataKey(ctx, policy, resource)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(key, false)
	if err != nil {
		return nil, err
	}
	hdr := appendPrefix(make([]byte, 0, streamHeaderLen(len(wrapped))), kindStream, wrapped)
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(seg))
	prefix := make([]byte, noncePrefixLen)
	_, _ = rand.Read(prefix) // crypto/rand.Read never fails
	hdr = append(hdr, prefix...)
	if _, err := w.Write(hdr); err != nil {
		return nil, fmt.Errorf("client: writing the stream header: %w", err)
	}
	return &sealWriter{w: w, aead: aead, hdr: hdr, prefix: prefix,
		buf: make([]byte, 0, seg), out: make([]byte, 0, seg+envTagSize)}, nil
}

// Write buffers p and seals every segment that is full and followed by more
// data; a full segment is kept back until then, since only Close knows
// which segment is the last.
func (s *sealWriter) Write(p []byte) (int, error) {
	if s.closed {
		return 0, errors.New("client: write to a closed envelope stream")
	}
	written := 0
	for len(p) > 0 {
		if s.err != nil {
			return written, s.err
		}
		if len(s.buf) == cap(s.buf) {
			s.flush(false)
			continue
		}
		k := min(len(p), cap(s.buf)-len(s.buf))
		s.buf = append(s.buf, p[:k]...)
		p, written = p[k:], written+k
	}
	return written, s.err
}

// flush seals the pending plaintext as segment s.n and writes it.
func (s *sealWriter) flush(last bool) {
	if !last && s.n >= maxSegments-1 {
		s.err = fmt.Errorf("%w: more than %d segments", ErrEnvelopeTooLarge, maxSegments)
		return
	}
	segmentNonce(s.nonce[:], s.prefix, s.n, last)
	s.out = s.aead.Seal(s.out[:0], s.nonce[:], s.buf, s.hdr)
	clear(s.buf)
	s.buf = s.buf[:0]
	s.n++
	if _, err := s.w.Write(s.out); err != nil {
		s.err = fmt.Errorf("client: writing segment %d: %w", s.n-1, err)
	}
}

// Close seals and writes the last segment (an empty one when nothing was
// written). It does not close the underlying writer. Closing twice returns
// the first Close's result.
func (s *sealWriter) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	if s.err == nil {
		s.flush(true)
	}
	return s.err
}

type openReader struct {
	r      io.Reader
	aead   cipher.AEAD
	hdr    []byte
	prefix []byte
	seg    int
	nonce  [envNonceSize]byte
	in     []byte // one sealed segment and one byte of the next
	ahead  int    // bytes of the next segment already at in[0:ahead]
	pt     []byte // verified plaintext not yet returned
	ptBuf  []byte
	n      uint64 // segments read
	eof    bool
	err    error // sticky
}

func openStream(ctx context.Context, src dataKeySource, r io.Reader) (*openReader, error) {
	hdr, err := readStreamHeader(r)
	if err != nil {
		return nil, err
	}
	w := int(binary.BigEndian.Uint16(hdr[5:7]))
	seg := int(binary.BigEndian.Uint32(hdr[envPrefixLen+w:]))
	key, err := src.unwrapDataKey(ctx, hdr[envPrefixLen:envPrefixLen+w])
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(key, false)
	if err != nil {
		return nil, err
	}
	return &openReader{r: r, aead: aead, hdr: hdr, prefix: hdr[len(hdr)-noncePrefixLen:], seg: seg,
		in: make([]byte, seg+envTagSize+1), ptBuf: make([]byte, 0, seg)}, nil
}

// readStreamHeader reads and checks a stream header, reading no byte past
// it.
func readStreamHeader(r io.Reader) ([]byte, error) {
	pre := make([]byte, envPrefixLen)
	n, err := io.ReadFull(r, pre)
	if err != nil && !isEOF(err) {
		return nil, fmt.Errorf("client: reading the stream header: %w", err)
	}
	_, w, err := checkPrefix(pre[:n])
	if err != nil {
		return nil, err
	}
	hdr := make([]byte, streamHeaderLen(w))
	copy(hdr, pre)
	if _, err := io.ReadFull(r, hdr[envPrefixLen:]); err != nil {
		if isEOF(err) {
			return nil, fmt.Errorf("%w: truncated stream header", ErrEnvelopeMalformed)
		}
		return nil, fmt.Errorf("client: reading the stream header: %w", err)
	}
	kind, _, err := parsePrefix(hdr)
	if err != nil {
		return nil, err
	}
	if kind != kindStream {
		return nil, fmt.Errorf("%w: a record envelope (use Open)", ErrEnvelopeMalformed)
	}
	if seg := binary.BigEndian.Uint32(hdr[envPrefixLen+w:]); seg < MinSegmentSize || seg > MaxSegmentSize {
		return nil, fmt.Errorf("%w: segment size %d, %d to %d allowed", ErrEnvelopeMalformed, seg, MinSegmentSize, MaxSegmentSize)
	}
	return hdr, nil
}

func isEOF(err error) bool { return err == io.EOF || err == io.ErrUnexpectedEOF }

// Read returns verified plaintext; see OpenStream.
func (o *openReader) Read(p []byte) (int, error) {
	for len(o.pt) == 0 {
		if o.err != nil {
			return 0, o.err
		}
		if o.eof {
			return 0, io.EOF
		}
		o.err = o.next()
	}
	n := copy(p, o.pt)
	o.pt = o.pt[n:]
	return n, nil
}

// next reads and opens one segment. A segment is the last when fewer than
// a full segment and one more byte remain.
func (o *openReader) next() error {
	if o.n >= maxSegments {
		return fmt.Errorf("%w: more than %d segments", ErrEnvelopeMalformed, maxSegments)
	}
	m, err := io.ReadFull(o.r, o.in[o.ahead:])
	if err != nil && !isEOF(err) {
		return fmt.Errorf("client: reading segment %d: %w", o.n, err)
	}
	total := o.ahead + m
	last := err != nil
	size := len(o.in) - 1
	if last {
		size = total
	}
	if size < envTagSize {
		if size == 0 {
			return fmt.Errorf("%w: no last segment after segment %d", ErrEnvelopeTruncated, o.n)
		}
		return fmt.Errorf("%w: segment %d is %d bytes, shorter than its tag", ErrEnvelopeAuthentication, o.n, size)
	}
	segmentNonce(o.nonce[:], o.prefix, o.n, last)
	pt, oerr := o.aead.Open(o.ptBuf[:0], o.nonce[:], o.in[:size], o.hdr)
	if oerr != nil && last {
		segmentNonce(o.nonce[:], o.prefix, o.n, false)
		if _, err := o.aead.Open(o.ptBuf[:0], o.nonce[:], o.in[:size], o.hdr); err == nil {
			clear(o.ptBuf[:cap(o.ptBuf)])
			return fmt.Errorf("%w: segment %d is not the last", ErrEnvelopeTruncated, o.n)
		}
	}
	if oerr != nil {
		return fmt.Errorf("%w: segment %d does not verify", ErrEnvelopeAuthentication, o.n)
	}
	o.pt, o.n = pt, o.n+1
	if last {
		o.eof = true
	} else {
		o.in[0], o.ahead = o.in[size], 1
	}
	return nil
}
