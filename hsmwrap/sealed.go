package hsmwrap

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/hkdf"
)

// The sealed master key file. The format is specified in full in DESIGN.md
// ("The sealed master key file"); keep the two in step.
const (
	sealedFormat  = "coffer-sealed-master-key"
	sealedVersion = 1

	kdfArgon2id   = "argon2id"
	kdfHKDFSHA256 = "hkdf-sha256"

	// hkdfInfo is the HKDF context string for the key-file KDF.
	hkdfInfo = "coffer sealed master key v1"

	masterKeyLen  = 32 // AES-256
	sealSaltLen   = 32
	gcmNonceLen   = 12
	gcmTagLen     = 16
	sealedCTLen   = masterKeyLen + gcmTagLen
	minKeyFileLen = 32

	// Limits on what is read from disk, so a wrong path (a log file, a
	// device) is a clear error rather than a large allocation.
	maxSealedFileSize = 64 << 10
	maxKeyFileSize    = 64 << 10
	maxPassphraseSize = 64 << 10

	// minPassphraseLen applies when sealing; opening accepts any non-empty
	// passphrase so that the check can be tightened without locking out
	// existing files.
	minPassphraseLen = 8
)

// argon2Params are the argon2id cost parameters recorded in a sealed file.
type argon2Params struct {
	Time      uint32 // passes over memory
	MemoryKiB uint32 // memory in KiB
	Threads   uint8  // lanes
}

// defaultArgon2Params are used by CreateMasterKeyFile: 64 MiB and three
// passes, paid once per node start (and by every passphrase guess). NOTES.md,
// "Figures behind constants", has what that costs in time.
var defaultArgon2Params = argon2Params{Time: 3, MemoryKiB: 64 << 10, Threads: 2}

// Bounds on argon2id parameters accepted from a file. The upper bounds stop a
// corrupted or hostile file from making a node allocate or spin without
// limit; the lower bounds are argon2's own (memory >= 8 KiB per lane).
const (
	maxArgon2Time      = 64
	maxArgon2MemoryKiB = 4 << 20 // 4 GiB
	maxArgon2Threads   = 64
)

func (p argon2Params) validate() error {
	switch {
	case p.Time < 1 || p.Time > maxArgon2Time:
		return fmt.Errorf("argon2id time %d outside 1..%d", p.Time, maxArgon2Time)
	case p.Threads < 1 || p.Threads > maxArgon2Threads:
		return fmt.Errorf("argon2id threads %d outside 1..%d", p.Threads, maxArgon2Threads)
	case p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > maxArgon2MemoryKiB:
		return fmt.Errorf("argon2id memory %d KiB outside %d..%d", p.MemoryKiB, 8*uint32(p.Threads), maxArgon2MemoryKiB)
	}
	return nil
}

// SealOptions says how the master key file is sealed: with a passphrase
// (argon2id) or with a key file (HKDF-SHA256). Exactly one must be set.
type SealOptions struct {
	// Passphrase is the passphrase itself. The functions in this package do
	// not keep or modify it; the caller zeroes it when done.
	Passphrase []byte
	// KeyFile is the path of a file holding at least 32 random bytes (see
	// GenerateKeyFile). Its whole content, byte for byte, is the secret.
	KeyFile string
}

func (o SealOptions) validate() error {
	hasPass, hasFile := len(o.Passphrase) > 0, o.KeyFile != ""
	switch {
	case hasPass && hasFile:
		return fmt.Errorf("%w: seal options: set a passphrase or a key file, not both", ErrInvalidArgument)
	case !hasPass && !hasFile:
		return fmt.Errorf("%w: seal options: a passphrase or a key file is required", ErrInvalidArgument)
	case len(o.Passphrase) > maxPassphraseSize:
		return fmt.Errorf("%w: seal options: passphrase longer than %d bytes", ErrInvalidArgument, maxPassphraseSize)
	}
	return nil
}

// sealedFile is the on-disk JSON document. Byte fields are standard base64
// (encoding/json's []byte encoding).
type sealedFile struct {
	Format     string    `json:"format"`
	Version    int       `json:"version"`
	KDF        sealedKDF `json:"kdf"`
	Salt       []byte    `json:"salt"`
	Nonce      []byte    `json:"nonce"`
	Ciphertext []byte    `json:"ciphertext"`
}

type sealedKDF struct {
	Name      string `json:"name"`
	Time      uint32 `json:"time,omitempty"`
	MemoryKiB uint32 `json:"memory_kib,omitempty"`
	Threads   uint8  `json:"threads,omitempty"`
}

// associatedData is the GCM associated data for the sealed master key: every
// header field, in a fixed binary layout (see DESIGN.md), so that none of
// them can be changed without the open failing.
func (f *sealedFile) associatedData() []byte {
	b := make([]byte, 0, 64+len(f.Salt))
	b = append(b, sealedFormat...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(f.Version))
	b = append(b, byte(len(f.KDF.Name)))
	b = append(b, f.KDF.Name...)
	b = binary.BigEndian.AppendUint32(b, f.KDF.Time)
	b = binary.BigEndian.AppendUint32(b, f.KDF.MemoryKiB)
	b = append(b, f.KDF.Threads)
	b = append(b, byte(len(f.Salt)))
	b = append(b, f.Salt...)
	return b
}

// CreateMasterKeyFile generates a fresh random 32-byte master key, seals it
// under a key derived from opts and writes the sealed file to path with mode
// 0600. It refuses to overwrite an existing file (the error wraps
// fs.ErrExist): replacing a master key orphans every KEK wrapped under it,
// so that must be a deliberate, manual step. The write is atomic: a crash
// leaves either no file or the complete file.
//
// The master key is never returned; a node obtains it by opening the file
// (OpenSoftware). Passphrases shorter than 8 bytes are refused.
func CreateMasterKeyFile(path string, opts SealOptions) error {
	return createMasterKeyFile(path, opts, defaultArgon2Params)
}

// createMasterKeyFile is CreateMasterKeyFile with the argon2id cost as a
// parameter, so tests can seal cheaply.
func createMasterKeyFile(path string, opts SealOptions, params argon2Params) error {
	if err := opts.validate(); err != nil {
		return err
	}
	if len(opts.Passphrase) > 0 && len(opts.Passphrase) < minPassphraseLen {
		return fmt.Errorf("%w: passphrase shorter than %d bytes", ErrInvalidArgument, minPassphraseLen)
	}
	if err := params.validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	// Fail early, before the expensive KDF; the final link re-checks.
	if err := refuseExisting(path); err != nil {
		return err
	}

	f := &sealedFile{Format: sealedFormat, Version: sealedVersion}
	f.Salt = make([]byte, sealSaltLen)
	f.Nonce = make([]byte, gcmNonceLen)
	if _, err := rand.Read(f.Salt); err != nil {
		return fmt.Errorf("hsmwrap: reading random salt: %w", err)
	}
	if _, err := rand.Read(f.Nonce); err != nil {
		return fmt.Errorf("hsmwrap: reading random nonce: %w", err)
	}

	var sealKey []byte
	if len(opts.Passphrase) > 0 {
		f.KDF = sealedKDF{Name: kdfArgon2id, Time: params.Time, MemoryKiB: params.MemoryKiB, Threads: params.Threads}
		sealKey = argon2.IDKey(opts.Passphrase, f.Salt, params.Time, params.MemoryKiB, params.Threads, masterKeyLen)
	} else {
		f.KDF = sealedKDF{Name: kdfHKDFSHA256}
		secret, err := readKeyFile(opts.KeyFile)
		if err != nil {
			return err
		}
		sealKey, err = hkdfKey(secret, f.Salt)
		clear(secret)
		if err != nil {
			return err
		}
	}
	defer clear(sealKey)

	master := make([]byte, masterKeyLen)
	defer clear(master)
	if _, err := rand.Read(master); err != nil {
		return fmt.Errorf("hsmwrap: reading random master key: %w", err)
	}
	aead, err := newGCM(sealKey)
	if err != nil {
		return err
	}
	f.Ciphertext = aead.Seal(nil, f.Nonce, master, f.associatedData())

	doc, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("hsmwrap: encoding sealed master key file: %w", err)
	}
	doc = append(doc, '\n')
	if err := writeNewFileAtomic(path, doc); err != nil {
		return fmt.Errorf("hsmwrap: writing sealed master key file: %w", err)
	}
	return nil
}

// GenerateKeyFile writes 32 fresh random bytes to path with mode 0600, for
// use as SealOptions.KeyFile. It refuses to overwrite an existing file (the
// error wraps fs.ErrExist) and writes atomically.
func GenerateKeyFile(path string) error {
	if err := refuseExisting(path); err != nil {
		return err
	}
	secret := make([]byte, minKeyFileLen)
	defer clear(secret)
	if _, err := rand.Read(secret); err != nil {
		return fmt.Errorf("hsmwrap: reading random key file content: %w", err)
	}
	if err := writeNewFileAtomic(path, secret); err != nil {
		return fmt.Errorf("hsmwrap: writing key file: %w", err)
	}
	return nil
}

// openMasterKeyFile reads and unseals the sealed master key file at path.
// Every failure to produce the master key wraps ErrSealed (an unreadable
// file also wraps the underlying fs error). The caller owns, and zeroes, the
// returned key.
func openMasterKeyFile(path string, opts SealOptions) ([]byte, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSealed, err)
	}
	data, err := readLimited(path, maxSealedFileSize)
	if err != nil {
		return nil, fmt.Errorf("%w: reading sealed master key file: %w", ErrSealed, err)
	}
	return unsealMasterKey(data, opts)
}

// unsealMasterKey is openMasterKeyFile after the file has been read.
func unsealMasterKey(data []byte, opts SealOptions) ([]byte, error) {
	f, err := parseSealedFile(data)
	if err != nil {
		return nil, err
	}

	var sealKey []byte
	switch f.KDF.Name {
	case kdfArgon2id:
		if len(opts.Passphrase) == 0 {
			return nil, fmt.Errorf("%w: the file is sealed with a passphrase, but a key file was given", ErrSealed)
		}
		p := argon2Params{Time: f.KDF.Time, MemoryKiB: f.KDF.MemoryKiB, Threads: f.KDF.Threads}
		sealKey = argon2.IDKey(opts.Passphrase, f.Salt, p.Time, p.MemoryKiB, p.Threads, masterKeyLen)
	case kdfHKDFSHA256:
		if opts.KeyFile == "" {
			return nil, fmt.Errorf("%w: the file is sealed with a key file, but a passphrase was given", ErrSealed)
		}
		secret, err := readKeyFile(opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrSealed, err)
		}
		sealKey, err = hkdfKey(secret, f.Salt)
		clear(secret)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrSealed, err)
		}
	}
	defer clear(sealKey)

	aead, err := newGCM(sealKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSealed, err)
	}
	master, err := aead.Open(nil, f.Nonce, f.Ciphertext, f.associatedData())
	if err != nil {
		return nil, fmt.Errorf("%w: wrong passphrase or key file, or the sealed file was altered", ErrSealed)
	}
	return master, nil
}

// parseSealedFile decodes and checks a sealed file's structure. It does not
// derive keys or decrypt. Every error wraps ErrSealed.
//
// The decoding is strict so that the file has one reading: member names are
// matched exactly (encoding/json alone would match them case-insensitively),
// unknown or missing members are refused, and base64 is decoded in strict
// mode (no stray padding bits). Together with the header being the GCM
// associated data, any change to the file either fails to parse or fails to
// authenticate.
func parseSealedFile(data []byte) (*sealedFile, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: sealed master key file: %s", ErrSealed, fmt.Sprintf(format, args...))
	}
	top, err := jsonMembers(data)
	if err == nil {
		err = wantMembers(top, "format", "version", "kdf", "salt", "nonce", "ciphertext")
	}
	if err != nil {
		return nil, bad("%v", err)
	}
	var f sealedFile
	if err := json.Unmarshal(top["format"], &f.Format); err != nil || f.Format != sealedFormat {
		return nil, bad("not a sealed master key file (format is not %q)", sealedFormat)
	}
	if err := json.Unmarshal(top["version"], &f.Version); err != nil {
		return nil, bad("version: %v", err)
	}
	if f.Version != sealedVersion {
		return nil, bad("version %d not supported (want %d)", f.Version, sealedVersion)
	}

	kdf, err := jsonMembers(top["kdf"])
	if err != nil {
		return nil, bad("kdf: %v", err)
	}
	if err := json.Unmarshal(kdf["name"], &f.KDF.Name); err != nil {
		return nil, bad("kdf name: %v", err)
	}
	switch f.KDF.Name {
	case kdfArgon2id:
		if err := wantMembers(kdf, "name", "time", "memory_kib", "threads"); err != nil {
			return nil, bad("kdf: %v", err)
		}
		if err := errors.Join(
			json.Unmarshal(kdf["time"], &f.KDF.Time),
			json.Unmarshal(kdf["memory_kib"], &f.KDF.MemoryKiB),
			json.Unmarshal(kdf["threads"], &f.KDF.Threads),
		); err != nil {
			return nil, bad("kdf parameters: %v", err)
		}
		p := argon2Params{Time: f.KDF.Time, MemoryKiB: f.KDF.MemoryKiB, Threads: f.KDF.Threads}
		if err := p.validate(); err != nil {
			return nil, bad("%v", err)
		}
	case kdfHKDFSHA256:
		if err := wantMembers(kdf, "name"); err != nil {
			return nil, bad("kdf: %v", err)
		}
	default:
		return nil, bad("unknown kdf %q", f.KDF.Name)
	}

	for _, fld := range []struct {
		name string
		dst  *[]byte
		want int
	}{
		{"salt", &f.Salt, sealSaltLen},
		{"nonce", &f.Nonce, gcmNonceLen},
		{"ciphertext", &f.Ciphertext, sealedCTLen},
	} {
		var s string
		if err := json.Unmarshal(top[fld.name], &s); err != nil {
			return nil, bad("%s: %v", fld.name, err)
		}
		b, err := base64.StdEncoding.Strict().DecodeString(s)
		if err != nil {
			return nil, bad("%s: %v", fld.name, err)
		}
		if len(b) != fld.want {
			return nil, bad("%s is %d bytes, want %d", fld.name, len(b), fld.want)
		}
		*fld.dst = b
	}
	return &f, nil
}

// wantMembers checks that an object's member names are exactly names
// (case-sensitive, none missing, none extra).
func wantMembers(m map[string]json.RawMessage, names ...string) error {
	for _, n := range names {
		if _, ok := m[n]; !ok {
			return fmt.Errorf("member %q missing", n)
		}
	}
	for k := range m {
		if !slices.Contains(names, k) {
			return fmt.Errorf("unknown member %q", k)
		}
	}
	return nil
}

// jsonMembers decodes one JSON object into its raw members, refusing
// duplicate member names and anything after the object.
func jsonMembers(data []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	m := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, ok := tok.(string)
		if !ok {
			return nil, errors.New("malformed object")
		}
		if _, dup := m[name]; dup {
			return nil, fmt.Errorf("duplicate member %q", name)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		m[name] = v
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON object")
	}
	return m, nil
}

// hkdfKey derives the 32-byte sealing key from a key file's content.
func hkdfKey(secret, salt []byte) ([]byte, error) {
	key := make([]byte, masterKeyLen)
	if _, err := io.ReadFull(hkdf.New(sha256.New, secret, salt, []byte(hkdfInfo)), key); err != nil {
		return nil, fmt.Errorf("hsmwrap: hkdf: %w", err)
	}
	return key, nil
}

// readKeyFile reads a key file and checks its size.
func readKeyFile(path string) ([]byte, error) {
	secret, err := readLimited(path, maxKeyFileSize)
	if err != nil {
		return nil, fmt.Errorf("%w: reading key file: %w", ErrInvalidArgument, err)
	}
	if len(secret) < minKeyFileLen {
		clear(secret)
		return nil, fmt.Errorf("%w: key file %s holds %d bytes, want at least %d", ErrInvalidArgument, path, len(secret), minKeyFileLen)
	}
	return secret, nil
}

// newGCM returns AES-256-GCM with caller-supplied 12-byte nonces.
func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("%w: aes-256 key must be 32 bytes, got %d", ErrInvalidArgument, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("hsmwrap: aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("hsmwrap: gcm: %w", err)
	}
	return aead, nil
}

// readLimited reads a whole regular file of at most limit bytes.
// readSecretFile reads a passphrase or PIN file (what names it in errors),
// without one trailing newline; the secret never appears in an error, and
// an empty one is refused. Errors wrap ErrSealed.
func readSecretFile(path string, limit int64, what string) ([]byte, error) {
	p, err := readLimited(path, limit)
	if err != nil {
		return nil, fmt.Errorf("%w: reading %s file: %w", ErrSealed, what, err)
	}
	n := len(p)
	switch {
	case bytes.HasSuffix(p, []byte("\r\n")):
		n -= 2
	case bytes.HasSuffix(p, []byte("\n")):
		n--
	}
	clear(p[n:])
	p = p[:n]
	if len(p) == 0 {
		return nil, fmt.Errorf("%w: %s file %s is empty", ErrSealed, what, path)
	}
	return p, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		clear(data)
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return data, nil
}

// refuseExisting returns an error wrapping fs.ErrExist if path exists.
func refuseExisting(path string) error {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return fmt.Errorf("hsmwrap: %s already exists; refusing to overwrite it (move it away first if replacing it is really intended): %w", path, fs.ErrExist)
	case errors.Is(err, fs.ErrNotExist):
		return nil
	default:
		return fmt.Errorf("hsmwrap: checking %s: %w", path, err)
	}
}

// writeNewFileAtomic creates path with content data and mode 0600, or fails
// if path exists. The data is written to a temporary file in the same
// directory and fsynced; the temporary file is then hard-linked to path,
// which, unlike rename, fails instead of replacing an existing file; then the
// directory is fsynced. Where the file system cannot hard-link, it falls
// back to an existence check and rename, which leaves a small race with a
// concurrent creator of the same path.
func writeNewFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	defer func() {
		if tmp != nil {
			tmp.Close()
		}
		os.Remove(tmpName) // after the link or rename: a no-op or the cleanup
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	cerr := tmp.Close()
	tmp = nil
	if cerr != nil {
		return cerr
	}

	if lerr := os.Link(tmpName, path); lerr != nil {
		if errors.Is(lerr, fs.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to overwrite it: %w", path, fs.ErrExist)
		}
		if err := refuseExisting(path); err != nil {
			return err
		}
		if err := os.Rename(tmpName, path); err != nil {
			return err
		}
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory so a new entry in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
