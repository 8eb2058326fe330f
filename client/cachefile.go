package client

import (
	"bytes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// The cache file (Config.CacheFile) keeps a persisted key cache across
// restarts, encrypted and authenticated under a key derived from this
// client's credentials. DESIGN.md ("Key cache") specifies the format and
// says what it protects against and what it cannot.

const (
	// cacheFileMagic starts every cache file; cacheFileVersion follows it.
	cacheFileMagic   = "COFCACHE"
	cacheFileVersion = 1
	// cacheFileHeaderLen is magic and version: the associated data of the
	// file's AES-GCM.
	cacheFileHeaderLen = len(cacheFileMagic) + 1
	// maxCacheFileBytes bounds the file read: MaxCacheEntries entries of
	// generous metadata fit well within it.
	maxCacheFileBytes = 256 << 20
	// cacheFileKeyLen is the least a Config.CacheFileKey secret holds.
	cacheFileKeyLen = 32
)

// cacheFile is the file a persisted cache is kept in and its key.
type cacheFile struct {
	path     string
	aead     cipher.AEAD
	identity string
	certHash []byte
}

// cacheFileInfo is the HKDF info of the file key, and what
// Config.CacheFileKey is given: the format version, the client identity
// and the SHA-256 of the client certificate.
func cacheFileInfo(identity string, certHash []byte) []byte {
	b := []byte(fmt.Sprintf("coffer client cache file v%d\x00%s\x00", cacheFileVersion, identity))
	return append(b, certHash...)
}

// newCacheFile derives the key of cfg.CacheFile for the client identity
// id: HKDF-SHA256 with the SHA-256 of the client certificate as salt and
// cacheFileInfo as info, over the PKCS#8 encoding of the certificate's
// private key, or over what cfg.CacheFileKey returns for that info when
// set. A private key that cannot be exported, without CacheFileKey, is an
// ErrInvalidConfig.
func newCacheFile(cfg Config, id string) (*cacheFile, error) {
	cert := cfg.TLS.Certificates[0]
	sum := sha256.Sum256(cert.Certificate[0])
	info := cacheFileInfo(id, sum[:])
	var secret []byte
	if cfg.CacheFileKey != nil {
		s, err := cfg.CacheFileKey(bytes.Clone(info))
		if err != nil {
			return nil, fmt.Errorf("%w: CacheFileKey: %v", ErrInvalidConfig, err)
		}
		if len(s) < cacheFileKeyLen {
			return nil, fmt.Errorf("%w: CacheFileKey returned %d bytes, at least %d needed", ErrInvalidConfig, len(s), cacheFileKeyLen)
		}
		secret = bytes.Clone(s)
	} else {
		der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("%w: CacheFile: the client's private key (%T) cannot be exported to derive the cache file key; set Config.CacheFileKey: %v", ErrInvalidConfig, cert.PrivateKey, err)
		}
		secret = der
	}
	defer clear(secret)
	key, err := hkdf.Key(sha256.New, secret, sum[:], string(info), 32)
	if err != nil {
		return nil, fmt.Errorf("%w: CacheFile: derive the key: %v", ErrInvalidConfig, err)
	}
	defer clear(key)
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	return &cacheFile{path: cfg.CacheFile, aead: aead, identity: id, certHash: sum[:]}, nil
}

// fileEntryAAD is the associated data of an entry's material in the file.
func fileEntryAAD(gkid string, version uint32, md []byte) []byte {
	b := append([]byte("coffer-client-cache-file-entry-v1\x00"+gkid+"\x00"), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], version)
	return append(b, md...)
}

// fileBody is the plaintext of a cache file: JSON, []byte fields in
// base64.
type fileBody struct {
	Identity  string    `json:"identity"`
	CertHash  []byte    `json:"cert_sha256"`
	WrittenAt time.Time `json:"written_at"`
	// Policy is the ClientCachePolicy in force, deterministic protobuf.
	Policy   []byte      `json:"policy"`
	WatchSeq uint64      `json:"watch_seq"`
	Entries  []fileEntry `json:"entries"`
}

type fileEntry struct {
	GKID    string `json:"gkid"`
	Version uint32 `json:"version"`
	// Metadata is the KeyMetadata, deterministic protobuf.
	Metadata []byte `json:"metadata"`
	// Material is nonce || AES-GCM(material) || tag under the file key,
	// with fileEntryAAD.
	Material []byte    `json:"material"`
	CachedAt time.Time `json:"cached_at"`
	Expires  time.Time `json:"expires"`
	MaxUses  uint32    `json:"max_uses"`
	// Uses counts the uses that may have been served: those served and
	// those reserved.
	Uses       uint32 `json:"uses"`
	Generation uint64 `json:"generation"`
}

// write replaces the file with body, atomically: a temporary file in the
// same directory, mode 0600, synced, renamed over the file, and the
// directory synced.
func (f *cacheFile) write(body *fileBody) error {
	plain, err := json.Marshal(body)
	if err != nil {
		return err
	}
	hdr := append([]byte(cacheFileMagic), cacheFileVersion)
	sealed, err := sealWith(f.aead, plain, hdr)
	if err != nil {
		return err
	}
	dir, base := filepath.Split(f.path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, base+".tmp-*")
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := tmp.Write(append(hdr, sealed...)); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return err
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// remove deletes the file; a missing file is not an error.
func (f *cacheFile) remove() error {
	if err := os.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: remove %s: %v", ErrCacheFile, f.path, err)
	}
	return nil
}

// load reads and opens the file: nil, nil when there is none. Every
// refusal wraps ErrCacheFile.
func (f *cacheFile) load() (*fileBody, error) {
	fh, err := os.Open(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCacheFile, err)
	}
	defer fh.Close()
	raw, err := io.ReadAll(io.LimitReader(fh, maxCacheFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %v", ErrCacheFile, f.path, err)
	}
	return f.open(raw)
}

// open authenticates and decodes a file's bytes.
func (f *cacheFile) open(raw []byte) (*fileBody, error) {
	if len(raw) > maxCacheFileBytes {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrCacheFile, f.path, maxCacheFileBytes)
	}
	if len(raw) < cacheFileHeaderLen || string(raw[:len(cacheFileMagic)]) != cacheFileMagic {
		return nil, fmt.Errorf("%w: %s is not a Coffer cache file", ErrCacheFile, f.path)
	}
	if v := raw[len(cacheFileMagic)]; v != cacheFileVersion {
		return nil, fmt.Errorf("%w: %s has format version %d; this client reads %d", ErrCacheFile, f.path, v, cacheFileVersion)
	}
	plain, err := openWith(f.aead, raw[cacheFileHeaderLen:], raw[:cacheFileHeaderLen])
	if err != nil {
		return nil, fmt.Errorf("%w: %s does not authenticate under this client's credentials (altered, or written by another client or certificate)", ErrCacheFile, f.path)
	}
	var body fileBody
	if err := json.Unmarshal(plain, &body); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCacheFile, f.path, err)
	}
	if body.Identity != f.identity || !bytes.Equal(body.CertHash, f.certHash) {
		return nil, fmt.Errorf("%w: %s was written for %q with another certificate", ErrCacheFile, f.path, body.Identity)
	}
	return &body, nil
}

// restore fills an empty cache from body, all or nothing: any entry that
// does not open, does not match its GKID or exceeds the bounds refuses the
// whole file (ErrCacheFile). Entries expired, exhausted or cached under an
// older generation are left out. Uses start at those the file counts, so a
// restart gives none back.
func (c *keyCache) restore(body *fileBody) error {
	f := c.file
	pol := &cofferv1.ClientCachePolicy{}
	if err := proto.Unmarshal(body.Policy, pol); err != nil {
		return fmt.Errorf("%w: %s: policy: %v", ErrCacheFile, f.path, err)
	}
	if !pol.GetPersist() {
		return fmt.Errorf("%w: %s was written under a policy that does not allow persisting", ErrCacheFile, f.path)
	}
	limit := int(min(pol.GetMaxEntries(), MaxCacheEntries))
	if len(body.Entries) > limit {
		return fmt.Errorf("%w: %s holds %d entries, its policy allows %d", ErrCacheFile, f.path, len(body.Entries), limit)
	}
	now := c.now()
	seen := map[string]bool{}
	var keep []*cacheEntry
	for i, fe := range body.Entries {
		if seen[fe.GKID] {
			return fmt.Errorf("%w: %s: entry %d repeats key %s", ErrCacheFile, f.path, i, fe.GKID)
		}
		seen[fe.GKID] = true
		material, err := openWith(f.aead, fe.Material, fileEntryAAD(fe.GKID, fe.Version, fe.Metadata))
		if err != nil {
			return fmt.Errorf("%w: %s: entry %d (key %s) fails its integrity check", ErrCacheFile, f.path, i, fe.GKID)
		}
		var md cofferv1.KeyMetadata
		err = proto.Unmarshal(fe.Metadata, &md)
		if err != nil || md.GetGkid() != fe.GKID {
			clear(material)
			return fmt.Errorf("%w: %s: entry %d (key %s): metadata of key %q", ErrCacheFile, f.path, i, fe.GKID, md.GetGkid())
		}
		if !now.Before(fe.Expires) || fe.Generation < pol.GetGeneration() || (fe.MaxUses > 0 && fe.Uses >= fe.MaxUses) {
			clear(material)
			continue
		}
		sealed, err := sealWith(c.aead, material, cacheAAD(fe.GKID, fe.Version, fe.Metadata))
		clear(material)
		if err != nil {
			return err
		}
		keep = append(keep, &cacheEntry{gkid: fe.GKID, version: fe.Version, sealed: sealed, md: fe.Metadata,
			fileSealed: fe.Material, cachedAt: fe.CachedAt, expires: fe.Expires, maxUses: fe.MaxUses,
			uses: fe.Uses, reserved: fe.Uses, durable: fe.Uses, generation: fe.Generation})
	}
	c.setPolicy(pol)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watchSeq = body.WatchSeq
	for _, e := range keep {
		c.entries[e.gkid] = c.lru.PushBack(e)
	}
	return nil
}

// reservation is a number of uses a snapshot wrote for an entry.
type reservation struct {
	e    *cacheEntry
	uses uint32
}

// snapshotLocked is the file body of the cache, most recently used first.
// Callers hold mu.
func (c *keyCache) snapshotLocked() (*fileBody, []reservation) {
	pol, _ := proto.MarshalOptions{Deterministic: true}.Marshal(c.policy)
	body := &fileBody{Identity: c.file.identity, CertHash: c.file.certHash, WrittenAt: c.now().UTC(), Policy: pol, WatchSeq: c.watchSeq}
	var res []reservation
	for el := c.lru.Front(); el != nil; el = el.Next() {
		e := el.Value.(*cacheEntry)
		if e.dead != "" || e.fileSealed == nil {
			continue
		}
		uses := max(e.uses, e.reserved)
		body.Entries = append(body.Entries, fileEntry{GKID: e.gkid, Version: e.version, Metadata: e.md, Material: e.fileSealed,
			CachedAt: e.cachedAt.UTC(), Expires: e.expires.UTC(), MaxUses: e.maxUses, Uses: uses, Generation: e.generation})
		res = append(res, reservation{e, uses})
	}
	return body, res
}

// flush writes the cache to its file, when it persists; then the uses it
// wrote count as reserved. It returns the error wrapping ErrCacheFile.
func (c *keyCache) flush() error { return c.flushUnless(nil) }

// flushUnless is flush, skipped when skip (called with mu held) says the
// write is not needed.
func (c *keyCache) flushUnless(skip func() bool) error {
	if c.file == nil {
		return nil
	}
	c.fileMu.Lock()
	defer c.fileMu.Unlock()
	c.mu.Lock()
	if !c.persisting() || (skip != nil && skip()) {
		c.mu.Unlock()
		return nil
	}
	body, res := c.snapshotLocked()
	c.mu.Unlock()
	if err := c.file.write(body); err != nil {
		return fmt.Errorf("%w: write %s: %v", ErrCacheFile, c.file.path, err)
	}
	c.mu.Lock()
	for _, r := range res {
		r.e.durable = max(r.e.durable, r.uses)
	}
	c.mu.Unlock()
	return nil
}

// release writes the file with the uses actually served (at Close): the
// uses reserved but not served are given back, so a clean exit loses none.
func (c *keyCache) release() error {
	if c.file == nil {
		return nil
	}
	c.mu.Lock()
	for el := c.lru.Front(); el != nil; el = el.Next() {
		e := el.Value.(*cacheEntry)
		e.reserved = e.uses
	}
	c.mu.Unlock()
	return c.flush()
}

// flushReservation writes the file for a reservation of gkid's uses,
// unless a write since the reservation already covers it.
func (c *keyCache) flushReservation(gkid string) error {
	return c.flushUnless(func() bool {
		el, ok := c.entries[gkid]
		return !ok || el.Value.(*cacheEntry).uses < el.Value.(*cacheEntry).durable
	})
}

// removeFile deletes the file (persisting was turned off).
func (c *keyCache) removeFile() error {
	if c.file == nil {
		return nil
	}
	c.fileMu.Lock()
	defer c.fileMu.Unlock()
	return c.file.remove()
}

// openCacheFile sets up Config.CacheFile, if set, and loads it. A bad
// configuration fails New; a file that is refused leaves the cache empty
// and is reported by CacheFileError.
func (c *Client) openCacheFile() error {
	if c.cfg.CacheFile == "" {
		return nil
	}
	id, err := c.identity()
	if err != nil {
		return fmt.Errorf("%w (CacheFile)", err)
	}
	f, err := newCacheFile(c.cfg, id)
	if err != nil {
		return err
	}
	c.cache.file = f
	body, err := f.load()
	if err == nil && body != nil {
		err = c.cache.restore(body)
	}
	c.noteFileErr(err)
	return nil
}
