package client

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"

	"github.com/coffer-kms/coffer/ciphertext"
)

// Envelope encryption: Seal encrypts a record locally under a fresh data
// key that the cluster issues wrapped under a key of the record's policy and
// resource, and Open unwraps the data key through the cluster and decrypts
// locally. The plaintext never leaves the process; the data key does not
// outlive the call. The blob format is specified in ENVELOPE.md; DESIGN.md
// says why it is built this way.

// Envelope format constants (ENVELOPE.md).
const (
	// EnvelopeVersion is the envelope format version Seal and SealStream
	// write, and the only one Open and OpenStream read.
	EnvelopeVersion = 1
	// MaxEnvelopePlaintext is the most plaintext one Seal takes: AES-GCM's
	// limit for one nonce. Larger data: SealStream.
	MaxEnvelopePlaintext = 1<<36 - 32
	// DefaultSegmentSize is the plaintext bytes per segment of a stream.
	DefaultSegmentSize = 64 << 10
	// MinSegmentSize and MaxSegmentSize bound the segment size a stream
	// may declare; a reader holds about two segments in memory.
	MinSegmentSize = 4 << 10
	MaxSegmentSize = 4 << 20

	kindRecord = 1
	kindStream = 2

	envPrefixLen   = 7                // magic, version, kind, wrapped key length
	envNonceSize   = 12               // AES-GCM nonce
	envTagSize     = 16               // AES-GCM tag
	dataKeySize    = 32               // version 1 data keys are AES-256
	noncePrefixLen = 7                // stream nonce: prefix, u32 counter, last flag
	minWrappedKey  = 38 + dataKeySize // a ciphertext of a data key under a 1-byte GKID
	maxWrappedKey  = ciphertext.MaxOverhead + dataKeySize
	maxSegments    = uint64(1) << 32 // the stream nonce's counter
)

// envMagic starts every envelope; in base64 it reads "cofe".
var envMagic = [3]byte{0x72, 0x87, 0xde}

// envelopeContext is the encryption context bound to every wrapped data key
// of an envelope, so that the data key of an envelope is not accepted as a
// plain Coffer ciphertext of something else, and vice versa.
var envelopeContext = map[string]string{"coffer.envelope": "1"}

// dataKeySource issues and unwraps the data keys of envelopes. *Client is
// one (through the cluster); tests and benchmarks use a local one.
//
// newDataKey returns a fresh 32-byte AES key, owned by the caller, and the
// same key wrapped as a Coffer ciphertext under a key of policy and
// resource, with envelopeContext bound. unwrapDataKey returns the key a
// wrapped key holds, owned by the caller.
type dataKeySource interface {
	newDataKey(ctx context.Context, policy, resource string) (key, wrapped []byte, err error)
	unwrapDataKey(ctx context.Context, wrapped []byte) ([]byte, error)
}

// Seal encrypts plaintext (at most MaxEnvelopePlaintext bytes) under a
// fresh data key issued by the cluster and wrapped under the key the
// client keeps for policy ("" selects "default") and resource, creating that
// key on first use (see DESIGN.md), and returns the envelope (ENVELOPE.md).
// The data key is AES-256, used for this record only, and wiped before
// Seal returns; the plaintext is encrypted locally and neither modified
// nor kept. One GenerateDataKey call per record, audited by the cluster:
// the caller needs the datakey grant on resource, and list and generate
// for the first Seal of a policy and resource in the client's life.
func (c *Client) Seal(ctx context.Context, policy, resource string, plaintext []byte) ([]byte, error) {
	return sealRecord(ctx, c, policy, resource, plaintext)
}

// Open decrypts an envelope from Seal: it checks the header, unwraps the
// data key with Decrypt (audited by the cluster; the caller needs the
// decrypt grant on the resource of the key the wrapped data key names),
// decrypts locally and wipes the data key. It returns the plaintext, owned
// by the caller, only when the whole envelope verifies. Errors wrap
// ErrEnvelopeMalformed, ErrEnvelopeVersion or ErrEnvelopeAuthentication
// (the envelope's bytes), or the *Error of the Decrypt call.
func (c *Client) Open(ctx context.Context, blob []byte) ([]byte, error) {
	return openRecord(ctx, c, blob)
}

func sealRecord(ctx context.Context, src dataKeySource, policy, resource string, plaintext []byte) ([]byte, error) {
	if uint64(len(plaintext)) > MaxEnvelopePlaintext {
		return nil, fmt.Errorf("%w: %d bytes, the most is %d (use SealStream)", ErrEnvelopeTooLarge, len(plaintext), uint64(MaxEnvelopePlaintext))
	}
	key, wrapped, err := src.newDataKey(ctx, policy, resource)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(key, true)
	if err != nil {
		return nil, err
	}
	hdr := appendPrefix(make([]byte, 0, envPrefixLen+len(wrapped)+envNonceSize+len(plaintext)+envTagSize), kindRecord, wrapped)
	// The AEAD draws the nonce and writes nonce || ciphertext || tag.
	return aead.Seal(hdr, nil, plaintext, hdr), nil
}

func openRecord(ctx context.Context, src dataKeySource, blob []byte) ([]byte, error) {
	kind, hdrLen, err := parsePrefix(blob)
	if err != nil {
		return nil, err
	}
	if kind != kindRecord {
		return nil, fmt.Errorf("%w: a stream envelope (use OpenStream)", ErrEnvelopeMalformed)
	}
	if len(blob)-hdrLen < envNonceSize+envTagSize {
		return nil, fmt.Errorf("%w: truncated: %d bytes after the header, at least %d needed", ErrEnvelopeMalformed, len(blob)-hdrLen, envNonceSize+envTagSize)
	}
	key, err := src.unwrapDataKey(ctx, blob[envPrefixLen:hdrLen])
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(key, true)
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(nil, nil, blob[hdrLen:], blob[:hdrLen])
	if err != nil {
		return nil, fmt.Errorf("%w: the record does not verify under its data key", ErrEnvelopeAuthentication)
	}
	return pt, nil
}

// appendPrefix appends magic, version, kind, the wrapped key's length and
// the wrapped key to b.
func appendPrefix(b []byte, kind byte, wrapped []byte) []byte {
	b = append(b, envMagic[:]...)
	b = append(b, EnvelopeVersion, kind)
	b = binary.BigEndian.AppendUint16(b, uint16(len(wrapped)))
	return append(b, wrapped...)
}

// checkPrefix checks the first envPrefixLen bytes of an envelope in the
// order ENVELOPE.md gives (magic, version, kind, wrapped key length) and
// returns the kind and the wrapped key's length. It never panics.
func checkPrefix(b []byte) (kind byte, w int, err error) {
	if len(b) < 4 || [3]byte(b[:3]) != envMagic {
		return 0, 0, fmt.Errorf("%w: not a Coffer envelope (no magic)", ErrEnvelopeMalformed)
	}
	if b[3] != EnvelopeVersion {
		return 0, 0, fmt.Errorf("%w: version %d", ErrEnvelopeVersion, b[3])
	}
	if len(b) < envPrefixLen {
		return 0, 0, fmt.Errorf("%w: truncated header", ErrEnvelopeMalformed)
	}
	kind = b[4]
	if kind != kindRecord && kind != kindStream {
		return 0, 0, fmt.Errorf("%w: unknown kind %d", ErrEnvelopeMalformed, kind)
	}
	w = int(binary.BigEndian.Uint16(b[5:7]))
	if w < minWrappedKey || w > maxWrappedKey {
		return 0, 0, fmt.Errorf("%w: wrapped data key of %d bytes, %d to %d allowed", ErrEnvelopeMalformed, w, minWrappedKey, maxWrappedKey)
	}
	return kind, w, nil
}

// parsePrefix checks an envelope's prefix and wrapped data key and returns
// the kind and the offset just past the wrapped key. It never panics and
// does bounded work.
func parsePrefix(b []byte) (kind byte, end int, err error) {
	kind, w, err := checkPrefix(b)
	if err != nil {
		return 0, 0, err
	}
	if len(b) < envPrefixLen+w {
		return 0, 0, fmt.Errorf("%w: truncated wrapped data key", ErrEnvelopeMalformed)
	}
	if _, err := ciphertext.ParseHeader(b[envPrefixLen : envPrefixLen+w]); err != nil {
		return 0, 0, fmt.Errorf("%w: wrapped data key: %w", ErrEnvelopeMalformed, err)
	}
	return kind, envPrefixLen + w, nil
}

// newAEAD makes AES-256-GCM from a 32-byte data key and wipes the key.
// random selects the AEAD that draws its own nonce (records); streams
// derive theirs. The key schedule inside the AEAD is left to the garbage
// collector.
func newAEAD(key []byte, random bool) (cipher.AEAD, error) {
	defer clear(key)
	if len(key) != dataKeySize {
		return nil, fmt.Errorf("%w: a data key of %d bytes, %d expected", ErrEnvelopeAuthentication, len(key), dataKeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEnvelopeAuthentication, err)
	}
	var aead cipher.AEAD
	if random {
		aead, err = cipher.NewGCMWithRandomNonce(block)
	} else {
		aead, err = cipher.NewGCM(block) // refused in FIPS 140-only mode
	}
	if err != nil {
		return nil, fmt.Errorf("client: AES-GCM: %w", err)
	}
	return aead, nil
}
