package hsmwrap

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/crypto/hkdf"
)

// KindSoftware is the Kind of the software keystore.
const KindSoftware = "software"

// Defaults for SoftwareConfig.
const (
	// DefaultMasterKeyFile is the sealed master key file's default path. A
	// relative path is resolved against the process's working directory; the
	// node may join it with its data directory before opening.
	DefaultMasterKeyFile = "master-key.sealed.json"
	// DefaultPassphraseEnv names the environment variable read for the
	// passphrase by default.
	DefaultPassphraseEnv = "COFFER_MASTER_PASSPHRASE"
)

// maxPolicyLen bounds KEKID.Policy.
const maxPolicyLen = 256

// wrappedKEKLen is the length of GenerateKEK's result: nonce, the 32-byte
// KEK encrypted, tag.
const wrappedKEKLen = SealOverhead + 32

// SoftwareConfig configures the software keystore: where the sealed master
// key file is and where the secret that unseals it comes from. Exactly one of
// PassphraseFile, PassphraseEnv and KeyFile is set. A passphrase is never
// taken as a literal value (it would show in process listings and shell
// history), only from a file or an environment variable.
type SoftwareConfig struct {
	// MasterKeyFile is the sealed master key file (CreateMasterKeyFile).
	// Required.
	MasterKeyFile string
	// PassphraseFile is a file whose content is the passphrase. One trailing
	// newline ("\n" or "\r\n") is removed, so `echo secret > file` works;
	// nothing else is trimmed.
	PassphraseFile string
	// PassphraseEnv is the name (not the value) of an environment variable
	// whose value is the passphrase, used exactly as set.
	PassphraseEnv string
	// KeyFile is a file of at least 32 random bytes (GenerateKeyFile), used
	// byte for byte.
	KeyFile string
}

// DefaultSoftwareConfig returns the default configuration: the master key
// file DefaultMasterKeyFile, unsealed with the passphrase in the environment
// variable DefaultPassphraseEnv. To use a passphrase file or a key file
// instead, clear PassphraseEnv as well as setting the other.
func DefaultSoftwareConfig() SoftwareConfig {
	return SoftwareConfig{
		MasterKeyFile: DefaultMasterKeyFile,
		PassphraseEnv: DefaultPassphraseEnv,
	}
}

// Validate checks the configuration without touching the file system or the
// environment. Errors wrap ErrInvalidArgument.
func (c SoftwareConfig) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: software keystore config: %s", ErrInvalidArgument, fmt.Sprintf(format, args...))
	}
	if c.MasterKeyFile == "" {
		return bad("MasterKeyFile is required")
	}
	var set []string
	if c.PassphraseFile != "" {
		set = append(set, "PassphraseFile")
	}
	if c.PassphraseEnv != "" {
		set = append(set, "PassphraseEnv")
	}
	if c.KeyFile != "" {
		set = append(set, "KeyFile")
	}
	switch len(set) {
	case 0:
		return bad("one of PassphraseFile, PassphraseEnv or KeyFile is required")
	case 1:
	default:
		return bad("exactly one of PassphraseFile, PassphraseEnv or KeyFile may be set, got %s", strings.Join(set, " and "))
	}
	if c.PassphraseEnv != "" && strings.ContainsAny(c.PassphraseEnv, "=\x00") {
		return bad("PassphraseEnv %q is not a valid environment variable name", c.PassphraseEnv)
	}
	if c.PassphraseFile == c.MasterKeyFile || c.KeyFile == c.MasterKeyFile {
		return bad("the passphrase or key file cannot be the master key file itself")
	}
	return nil
}

// SealOptions reads the configured secret and returns the SealOptions that
// open (or, for tooling, create) the master key file. A passphrase is read
// from its file or environment variable now; a key file is only named, and
// read when used. The caller zeroes the returned Passphrase when done
// (clear(opts.Passphrase)). Errors wrap ErrInvalidArgument or ErrSealed and
// never include the secret.
func (c SoftwareConfig) SealOptions() (SealOptions, error) {
	if err := c.Validate(); err != nil {
		return SealOptions{}, err
	}
	switch {
	case c.KeyFile != "":
		return SealOptions{KeyFile: c.KeyFile}, nil
	case c.PassphraseFile != "":
		p, err := readSecretFile(c.PassphraseFile, maxPassphraseSize, "passphrase")
		if err != nil {
			return SealOptions{}, err
		}
		return SealOptions{Passphrase: p}, nil
	default:
		v, ok := os.LookupEnv(c.PassphraseEnv)
		if !ok || v == "" {
			return SealOptions{}, fmt.Errorf("%w: environment variable %s is not set or empty", ErrSealed, c.PassphraseEnv)
		}
		if len(v) > maxPassphraseSize {
			return SealOptions{}, fmt.Errorf("%w: environment variable %s is longer than %d bytes", ErrSealed, c.PassphraseEnv, maxPassphraseSize)
		}
		return SealOptions{Passphrase: []byte(v)}, nil
	}
}

// Software is the software keystore: AES-256-GCM in process memory, under a
// master key unsealed from a file at start. See the package documentation
// for what it does and does not protect against. It implements Keystore; all
// methods are safe for concurrent use.
type Software struct {
	// mu guards the fields below. Seal and Open take the read lock only for
	// the map lookup, never across the cryptography.
	mu     sync.RWMutex
	closed bool
	// master wraps and unwraps KEKs (random-nonce AES-256-GCM).
	master cipher.AEAD
	// keks holds one random-nonce AES-256-GCM instance per loaded KEK. An
	// instance is immutable and safe for concurrent use, so it is shared by
	// all callers; the key schedule is computed once, at load.
	keks map[KEKID]cipher.AEAD
	// signPRK is an HKDF pseudorandom key derived from the master key, from
	// which Signer derives named signing keys (never the master key itself).
	signPRK []byte
}

var _ Keystore = (*Software)(nil)

// OpenSoftware unseals the master key file named by cfg, runs SelfTest and
// returns the keystore. A wrong passphrase or key file, or a damaged master
// key file, gives an error wrapping ErrSealed; a failed self-test one
// wrapping ErrUnavailable.
func OpenSoftware(cfg SoftwareConfig) (*Software, error) {
	opts, err := cfg.SealOptions()
	if err != nil {
		return nil, err
	}
	defer clear(opts.Passphrase)
	master, err := openMasterKeyFile(cfg.MasterKeyFile, opts)
	if err != nil {
		return nil, err
	}
	defer clear(master)
	return newSoftware(master)
}

// NewSoftwareFromKey returns a software keystore holding the given 32-byte
// master key, after running SelfTest. masterKey is not retained (the caller
// may zero it on return).
//
// This is for tests of other packages and for tooling. Production nodes open
// a sealed master key file with OpenSoftware, so that the master key is
// never stored in the clear.
func NewSoftwareFromKey(masterKey []byte) (*Software, error) {
	if len(masterKey) != masterKeyLen {
		return nil, fmt.Errorf("%w: master key must be %d bytes, got %d", ErrInvalidArgument, masterKeyLen, len(masterKey))
	}
	return newSoftware(masterKey)
}

func newSoftware(masterKey []byte) (*Software, error) {
	master, err := newRandomNonceGCM(masterKey)
	if err != nil {
		return nil, err
	}
	prk := hkdf.Extract(sha256.New, masterKey, []byte(signingSalt))
	s := &Software{master: master, keks: make(map[KEKID]cipher.AEAD), signPRK: prk}
	if err := s.SelfTest(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Kind returns "software".
func (s *Software) Kind() string { return KindSoftware }

// Random returns n bytes from crypto/rand; n must be in 1..MaxRandom.
func (s *Software) Random(n int) ([]byte, error) {
	if n < 1 || n > MaxRandom {
		return nil, fmt.Errorf("%w: random length %d outside 1..%d", ErrInvalidArgument, n, MaxRandom)
	}
	if s.isClosed() {
		return nil, ErrClosed
	}
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("%w: rng: %w", ErrUnavailable, err)
	}
	return b, nil
}

// GenerateKEK creates a random AES-256 KEK and returns it wrapped under the
// master key (see DESIGN.md for the layout and associated data). The KEK is
// not loaded: callers load the copy that was committed with LoadKEK, so a
// KEK whose proposal never committed is never used.
func (s *Software) GenerateKEK(id KEKID) ([]byte, error) {
	if err := validateKEKID(id); err != nil {
		return nil, err
	}
	master, err := s.masterAEAD()
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("%w: rng: %w", ErrUnavailable, err)
	}
	return master.Seal(nil, nil, key, kekAAD(id)), nil
}

// LoadKEK unwraps a KEK produced by GenerateKEK under the same master key
// and the same id, and keeps it loaded. Loading an id that is already loaded
// is a no-op (wrapped is not examined).
func (s *Software) LoadKEK(id KEKID, wrapped []byte) error {
	if err := validateKEKID(id); err != nil {
		return err
	}
	master, err := s.masterAEAD()
	if err != nil {
		return err
	}
	s.mu.RLock()
	_, loaded := s.keks[id]
	s.mu.RUnlock()
	if loaded {
		return nil
	}

	if len(wrapped) != wrappedKEKLen {
		return fmt.Errorf("%w: wrapped kek %s is %d bytes, want %d", ErrIntegrity, id, len(wrapped), wrappedKEKLen)
	}
	key, err := master.Open(nil, nil, wrapped, kekAAD(id))
	if err != nil {
		return fmt.Errorf("%w: wrapped kek %s does not unwrap under this master key and id", ErrIntegrity, id)
	}
	defer clear(key)
	aead, err := newRandomNonceGCM(key)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if _, loaded := s.keks[id]; !loaded {
		s.keks[id] = aead
	}
	return nil
}

// Seal encrypts plaintext under the KEK id with associated data aad. The
// result is nonce (12 bytes) || ciphertext || tag (16 bytes), with a fresh
// random nonce.
func (s *Software) Seal(id KEKID, plaintext, aad []byte) ([]byte, error) {
	if len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("%w: plaintext is %d bytes, limit %d", ErrInvalidArgument, len(plaintext), MaxPlaintext)
	}
	if len(aad) > MaxAAD {
		return nil, fmt.Errorf("%w: associated data is %d bytes, limit %d", ErrInvalidArgument, len(aad), MaxAAD)
	}
	aead, err := s.kek(id)
	if err != nil {
		return nil, err
	}
	return aead.Seal(nil, nil, plaintext, aad), nil
}

// Open decrypts what Seal produced under the same id and aad. Any mismatch,
// and any input too short or too long to be Seal's output, gives
// ErrIntegrity.
func (s *Software) Open(id KEKID, ciphertext, aad []byte) ([]byte, error) {
	aead, err := s.kek(id)
	if err != nil {
		return nil, err
	}
	if len(ciphertext) < SealOverhead || len(ciphertext) > MaxPlaintext+SealOverhead || len(aad) > MaxAAD {
		return nil, fmt.Errorf("%w: sealed data under kek %s has an impossible length", ErrIntegrity, id)
	}
	pt, err := aead.Open(nil, nil, ciphertext, aad)
	if err != nil {
		return nil, fmt.Errorf("%w: sealed data under kek %s", ErrIntegrity, id)
	}
	return pt, nil
}

// Close drops the master key and every KEK. The raw key bytes were zeroed
// as soon as their AES key schedules were built; the schedules live inside
// crypto/aes, cannot be zeroed from here, and are left to the garbage
// collector. Later calls fail with ErrClosed.
func (s *Software) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.closed = true
	s.master = nil
	clear(s.signPRK)
	s.signPRK = nil
	clear(s.keks)
	s.keks = nil
	return nil
}

func (s *Software) isClosed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.closed
}

func (s *Software) masterAEAD() (cipher.AEAD, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	return s.master, nil
}

// kek returns the AEAD of a loaded KEK: the hot path of Seal and Open.
func (s *Software) kek(id KEKID) (cipher.AEAD, error) {
	s.mu.RLock()
	aead, ok := s.keks[id]
	closed := s.closed
	s.mu.RUnlock()
	switch {
	case closed:
		return nil, ErrClosed
	case !ok:
		return nil, fmt.Errorf("%w: %s", ErrKEKNotLoaded, id)
	}
	return aead, nil
}

// kekAAD is the associated data of a KEK wrapped under the master key:
// "coffer-kek" 0x00 policy 0x00 version(uint32, big-endian). Policies
// contain no NUL byte, so distinct ids give distinct associated data.
func kekAAD(id KEKID) []byte {
	b := make([]byte, 0, len("coffer-kek")+len(id.Policy)+6)
	b = append(b, "coffer-kek\x00"...)
	b = append(b, id.Policy...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint32(b, id.Version)
}

func validateKEKID(id KEKID) error {
	switch {
	case id.Policy == "":
		return fmt.Errorf("%w: kek id has an empty policy", ErrInvalidArgument)
	case len(id.Policy) > maxPolicyLen:
		return fmt.Errorf("%w: kek id policy is longer than %d bytes", ErrInvalidArgument, maxPolicyLen)
	case strings.IndexByte(id.Policy, 0) >= 0:
		return fmt.Errorf("%w: kek id policy contains a NUL byte", ErrInvalidArgument)
	}
	return nil
}

// newRandomNonceGCM returns AES-256-GCM that draws a random 12-byte nonce
// per Seal and lays out its output as nonce || ciphertext || tag.
func newRandomNonceGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("%w: aes-256 key must be 32 bytes, got %d", ErrInvalidArgument, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("hsmwrap: aes: %w", err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, fmt.Errorf("hsmwrap: gcm: %w", err)
	}
	return aead, nil
}

// The self-test vector: AES-256-GCM test case 16 of McGrew and Viega, "The
// Galois/Counter Mode of Operation (GCM)" (the NIST submission), 60-byte
// plaintext, 20-byte associated data. Checked against an independent
// implementation (OpenSSL) as well.
var katGCM = gcmVector{
	key:   mustHex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"),
	nonce: mustHex("cafebabefacedbaddecaf888"),
	plaintext: mustHex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d" +
		"8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"),
	aad: mustHex("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
	ciphertext: mustHex("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd" +
		"2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"),
	tag: mustHex("76fc6ece0f4e1768cddf8853bb2d551b"),
}

type gcmVector struct {
	key, nonce, plaintext, aad, ciphertext, tag []byte
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// selfTestKEKID names the throwaway KEK of the self-test round trip. Its
// policy holds a NUL byte, which validateKEKID refuses, so it can never
// coincide with a real id.
var selfTestKEKID = KEKID{Policy: "\x00self-test", Version: 1}

// SelfTest runs the known-answer test (fixed key, nonce, plaintext and aad
// against the published ciphertext and tag, both directions, plus a tampered
// tag that must be refused) and a round trip through the production paths:
// a throwaway KEK generated, wrapped under the master key, unwrapped, and
// used to seal and open. Failures wrap ErrUnavailable.
func (s *Software) SelfTest() error {
	master, err := s.masterAEAD()
	if err != nil {
		return err
	}
	if err := checkGCMVector(katGCM); err != nil {
		return fmt.Errorf("%w: self-test: known-answer test: %w", ErrUnavailable, err)
	}
	if err := roundTrip(master); err != nil {
		return fmt.Errorf("%w: self-test: round trip: %w", ErrUnavailable, err)
	}
	return nil
}

// checkGCMVector checks both the fixed-nonce GCM and the random-nonce GCM
// used in production against a known answer.
func checkGCMVector(v gcmVector) error {
	want := append(append([]byte(nil), v.ciphertext...), v.tag...)

	fixed, err := newGCM(v.key)
	if err != nil {
		return err
	}
	if got := fixed.Seal(nil, v.nonce, v.plaintext, v.aad); !bytes.Equal(got, want) {
		return errors.New("seal does not match the expected ciphertext")
	}

	prod, err := newRandomNonceGCM(v.key)
	if err != nil {
		return err
	}
	sealed := append(append([]byte(nil), v.nonce...), want...)
	got, err := prod.Open(nil, nil, sealed, v.aad)
	if err != nil || !bytes.Equal(got, v.plaintext) {
		return errors.New("open does not recover the expected plaintext")
	}
	sealed[len(sealed)-1] ^= 1
	if _, err := prod.Open(nil, nil, sealed, v.aad); err == nil {
		return errors.New("open accepted a tampered tag")
	}
	return nil
}

// roundTrip exercises KEK wrapping under master and seal/open under the KEK,
// without touching the loaded KEKs.
func roundTrip(master cipher.AEAD) error {
	key := make([]byte, 32)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("rng: %w", err)
	}
	wrapped := master.Seal(nil, nil, key, kekAAD(selfTestKEKID))
	if bytes.Contains(wrapped, key) {
		return errors.New("wrapped kek contains the kek")
	}
	unwrapped, err := master.Open(nil, nil, wrapped, kekAAD(selfTestKEKID))
	if err != nil || !bytes.Equal(unwrapped, key) {
		return errors.New("kek does not unwrap")
	}
	clear(unwrapped)
	kek, err := newRandomNonceGCM(key)
	if err != nil {
		return err
	}
	msg := []byte("coffer keystore self-test")
	aad := []byte("coffer self-test aad")
	sealed := kek.Seal(nil, nil, msg, aad)
	if len(sealed) != len(msg)+SealOverhead {
		return fmt.Errorf("sealed length %d, want %d", len(sealed), len(msg)+SealOverhead)
	}
	opened, err := kek.Open(nil, nil, sealed, aad)
	if err != nil || !bytes.Equal(opened, msg) {
		return errors.New("seal/open round trip failed")
	}
	if _, err := kek.Open(nil, nil, sealed, aad[1:]); err == nil {
		return errors.New("open accepted altered associated data")
	}
	return nil
}
