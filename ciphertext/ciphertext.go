package ciphertext

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
)

// Version is the format version Seal writes and the only one Open and
// ParseHeader read.
const Version = 1

// MaxGKIDLen is the longest GKID a ciphertext can name, in bytes.
const MaxGKIDLen = 128

// MaxEncryptionsPerKey is the most encryptions one key (one version of a
// GKID) may perform with random 96-bit nonces, the bound of NIST SP 800-38D
// section 8.3. This package keeps no state and does not enforce it: the
// caller counts encryptions per key version and refuses Seal once a key has
// reached it.
const MaxEncryptionsPerKey uint64 = 1 << 32

// magic starts every ciphertext. Its base64 encoding (standard or URL-safe)
// is "coff", so every encoded ciphertext starts with "coff"; its second
// byte, 0x87, is a UTF-8 continuation byte after an ASCII one, so the bytes
// are never valid UTF-8 text.
var magic = [3]byte{0x72, 0x87, 0xdf}

const (
	// headerFixedLen is the header without the GKID: magic, version, GKID
	// length and key version.
	headerFixedLen = len(magic) + 1 + 1 + 4
	nonceSize      = 12
	tagSize        = 16
	// maxPlaintextLen is the most AES-GCM encrypts under one nonce:
	// 2^32 - 2 blocks of 16 bytes.
	maxPlaintextLen uint64 = (1<<32 - 2) * 16
	// maxResourceLen is what the resource's 2-byte length prefix in the
	// associated data holds.
	maxResourceLen = 1<<16 - 1
)

// Header is what a ciphertext says about itself: which key sealed it.
type Header struct {
	// GKID names the key: 1 to MaxGKIDLen bytes of visible ASCII
	// (0x21 to 0x7e; no space, no control characters).
	GKID string
	// KeyVersion is the version of that key, at least 1.
	KeyVersion uint32
}

// validate reports, wrapping ErrInvalidHeader, a Header Seal cannot write.
func (h Header) validate() error {
	if err := checkGKID(h.GKID); err != "" {
		return fmt.Errorf("%w: %s", ErrInvalidHeader, err)
	}
	if h.KeyVersion == 0 {
		return fmt.Errorf("%w: key version is 0; versions start at 1", ErrInvalidHeader)
	}
	return nil
}

// checkGKID returns why s cannot be a GKID in a ciphertext, or "".
func checkGKID(s string) string {
	if s == "" {
		return "GKID is empty"
	}
	if len(s) > MaxGKIDLen {
		return fmt.Sprintf("GKID is %d bytes; the limit is %d", len(s), MaxGKIDLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e {
			return fmt.Sprintf("GKID byte %d is 0x%02x, outside visible ASCII", i, c)
		}
	}
	return ""
}

// MaxOverhead is the most bytes Seal adds to a plaintext: Overhead of a
// GKID of MaxGKIDLen bytes.
const MaxOverhead = headerFixedLen + MaxGKIDLen + nonceSize + tagSize

// Overhead is how many bytes Seal adds to a plaintext under a key named
// gkid: len(Seal(..., plaintext)) == len(plaintext) + Overhead(gkid) for any
// valid GKID. It is 37 + len(gkid), 77 for a 40-byte Coffer GKID.
func Overhead(gkid string) int {
	return headerFixedLen + len(gkid) + nonceSize + tagSize
}

// Seal encrypts plaintext with AES-GCM under key, the AES key named by h,
// and returns the ciphertext: h's header, a random nonce, the encrypted
// plaintext and the tag. The associated data binds the header, resource
// and ctx; Open needs the same key, resource and ctx.
//
// Seal checks, in this order, that h is valid (ErrInvalidHeader), key is
// 16, 24 or 32 bytes (ErrKey), resource, the key's resource, is 1 to 65535
// bytes (ErrInvalidResource), ctx passes ValidateContext
// (ErrInvalidContext; nil and an empty map are the same context), and
// plaintext is at most 2^36 - 32 bytes (ErrTooLarge). The nonce comes from
// the Go cryptographic random source (the one behind crypto/rand); the
// caller keeps each key under MaxEncryptionsPerKey encryptions. Seal does
// not retain its arguments.
func Seal(key []byte, h Header, resource string, ctx map[string]string, plaintext []byte) ([]byte, error) {
	return seal(key, h, resource, ctx, plaintext, nil)
}

// seal is Seal with the nonce given, for reproducible test vectors, or
// drawn by crypto/cipher's random-nonce GCM when nonce is nil. The random-
// nonce GCM is what FIPS 140-3 mode (GODEBUG=fips140=only) permits; a given
// nonce needs cipher.NewGCM, which that mode refuses.
func seal(key []byte, h Header, resource string, ctx map[string]string, plaintext, nonce []byte) ([]byte, error) {
	if err := h.validate(); err != nil {
		return nil, err
	}
	block, err := newBlock(key)
	if err != nil {
		return nil, err
	}
	if err := checkResource(resource); err != nil {
		return nil, err
	}
	keys, err := contextKeys(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkPlaintextLen(uint64(len(plaintext))); err != nil {
		return nil, err
	}
	out := make([]byte, 0, Overhead(h.GKID)+len(plaintext))
	out = appendHeader(out, h)
	aad := appendAAD(out, resource, ctx, keys)
	if nonce == nil {
		aead, err := cipher.NewGCMWithRandomNonce(block)
		if err != nil {
			return nil, fmt.Errorf("%w: AES-GCM: %v", ErrKey, err)
		}
		return aead.Seal(out, nil, plaintext, aad), nil
	}
	if len(nonce) != nonceSize {
		return nil, fmt.Errorf("%w: nonce is %d bytes; the format uses %d", ErrKey, len(nonce), nonceSize)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%w: AES-GCM: %v", ErrKey, err)
	}
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plaintext, aad), nil
}

// Open decrypts ct with key, the key its header names, and returns the
// plaintext. resource and ctx must be those given to Seal.
//
// Open checks, in this order, that key is 16, 24 or 32 bytes (ErrKey),
// resource is valid (ErrInvalidResource), ctx passes ValidateContext
// (ErrInvalidContext), ct is a well-formed ciphertext (ErrMalformed) of
// this version (ErrUnsupportedVersion), and ct verifies (ErrAuthentication,
// the same message whatever differed). On any error the plaintext is nil:
// nothing of it is returned unless the whole ciphertext verifies. On success
// it is non-nil, empty for an empty plaintext. Open does not retain its
// arguments.
func Open(key []byte, resource string, ctx map[string]string, ct []byte) ([]byte, error) {
	block, err := newBlock(key)
	if err != nil {
		return nil, err
	}
	if err := checkResource(resource); err != nil {
		return nil, err
	}
	keys, err := contextKeys(ctx)
	if err != nil {
		return nil, err
	}
	_, n, err := parseHeader(ct)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("%w: AES-GCM: %v", ErrKey, err)
	}
	aad := appendAAD(ct[:n], resource, ctx, keys)
	pt, err := aead.Open(nil, nil, ct[n:], aad)
	if err != nil {
		return nil, fmt.Errorf("%w: the ciphertext does not verify under this key, resource and encryption context", ErrAuthentication)
	}
	if pt == nil {
		pt = []byte{}
	}
	return pt, nil
}

// ParseHeader reads the header of ct, without a key, so the caller can find
// the key that opens it. It checks the whole layout (magic, version, GKID,
// key version, room for nonce and tag) but not authenticity: a Header from
// ParseHeader names the key to try, nothing more, until Open succeeds.
//
// Errors wrap ErrMalformed or ErrUnsupportedVersion. ParseHeader never
// panics, reads at most the first 137 bytes of ct (the longest header) and
// does not retain ct.
func ParseHeader(ct []byte) (Header, error) {
	h, _, err := parseHeader(ct)
	return h, err
}

// parseHeader is ParseHeader, also returning the header's length.
func parseHeader(ct []byte) (Header, int, error) {
	if len(ct) < len(magic)+1 {
		return Header{}, 0, fmt.Errorf("%w: %d bytes is too short for a ciphertext", ErrMalformed, len(ct))
	}
	if [3]byte(ct[:3]) != magic {
		return Header{}, 0, fmt.Errorf("%w: not a Coffer ciphertext (the magic bytes differ)", ErrMalformed)
	}
	if v := ct[3]; v != Version {
		return Header{}, 0, fmt.Errorf("%w: format version %d; this reader knows version %d", ErrUnsupportedVersion, v, Version)
	}
	if len(ct) < headerFixedLen {
		return Header{}, 0, fmt.Errorf("%w: truncated in the header", ErrMalformed)
	}
	l := int(ct[4])
	if l == 0 || l > MaxGKIDLen {
		return Header{}, 0, fmt.Errorf("%w: GKID length %d is outside 1 to %d", ErrMalformed, l, MaxGKIDLen)
	}
	n := headerFixedLen + l
	if len(ct) < n {
		return Header{}, 0, fmt.Errorf("%w: truncated in the header", ErrMalformed)
	}
	gkid := ct[5 : 5+l]
	for i, c := range gkid {
		if c < 0x21 || c > 0x7e {
			return Header{}, 0, fmt.Errorf("%w: GKID byte %d is 0x%02x, outside visible ASCII", ErrMalformed, i, c)
		}
	}
	kv := binary.BigEndian.Uint32(ct[5+l:])
	if kv == 0 {
		return Header{}, 0, fmt.Errorf("%w: key version is 0", ErrMalformed)
	}
	rest := uint64(len(ct) - n)
	if rest < nonceSize+tagSize {
		return Header{}, 0, fmt.Errorf("%w: %d bytes after the header; nonce and tag need %d", ErrMalformed, rest, nonceSize+tagSize)
	}
	if rest > nonceSize+maxPlaintextLen+tagSize {
		return Header{}, 0, fmt.Errorf("%w: %d bytes after the header is more than AES-GCM produces", ErrMalformed, rest)
	}
	return Header{GKID: string(gkid), KeyVersion: kv}, n, nil
}

// appendHeader appends the header of a valid h to b.
func appendHeader(b []byte, h Header) []byte {
	b = append(b, magic[:]...)
	b = append(b, Version, byte(len(h.GKID)))
	b = append(b, h.GKID...)
	return binary.BigEndian.AppendUint32(b, h.KeyVersion)
}

// appendAAD returns, in a new slice, the associated data of a ciphertext
// whose header is hdr: hdr, then the resource with a 2-byte length, then
// the canonical encoding of ctx, whose sorted keys are keys. resource and
// ctx must be valid.
func appendAAD(hdr []byte, resource string, ctx map[string]string, keys []string) []byte {
	aad := make([]byte, 0, len(hdr)+2+len(resource)+contextEncodedLen(ctx))
	aad = append(aad, hdr...)
	aad = appendString(aad, resource)
	return appendContext(aad, ctx, keys)
}

// newBlock returns the AES cipher for key, or an error wrapping ErrKey.
func newBlock(key []byte) (cipher.Block, error) {
	switch len(key) {
	case 16, 24, 32:
	default:
		return nil, fmt.Errorf("%w: key is %d bytes; AES needs 16, 24 or 32", ErrKey, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	return block, nil
}

// checkResource reports, wrapping ErrInvalidResource, a resource the
// associated data cannot carry, or an empty one: every Coffer key has a
// resource, so an empty one means the caller did not pass it.
func checkResource(resource string) error {
	if resource == "" {
		return fmt.Errorf("%w: resource is empty", ErrInvalidResource)
	}
	if len(resource) > maxResourceLen {
		return fmt.Errorf("%w: resource is %d bytes; the limit is %d", ErrInvalidResource, len(resource), maxResourceLen)
	}
	return nil
}

// checkPlaintextLen refuses, wrapping ErrTooLarge, a plaintext of n bytes
// that AES-GCM cannot encrypt under one nonce (crypto/cipher panics on one).
func checkPlaintextLen(n uint64) error {
	if n > maxPlaintextLen {
		return fmt.Errorf("%w: plaintext is %d bytes; AES-GCM encrypts at most %d", ErrTooLarge, n, maxPlaintextLen)
	}
	return nil
}

// appendString appends s with a 2-byte big-endian length; len(s) < 2^16.
func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}
