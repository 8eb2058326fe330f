package hsmwrap

import (
	"bytes"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// KindPKCS11 is the Kind of the PKCS#11 keystore.
const KindPKCS11 = "pkcs11"

// Defaults for PKCS11Config.
const (
	// DefaultMasterKeyLabel is the CKA_LABEL of the master key object.
	DefaultMasterKeyLabel = "coffer-master"
	// DefaultPINEnv names the environment variable read for the user PIN by
	// default.
	DefaultPINEnv = "COFFER_HSM_PIN"
)

// Limits and sizes of the PKCS#11 keystore.
const (
	// MaxSessionPoolSize bounds PKCS11Config.SessionPoolSize.
	MaxSessionPoolSize = 256

	maxTokenLabelLen  = 32 // CK_TOKEN_INFO.label
	maxMasterLabelLen = 64
	maxPINSize        = 256

	kekLen = 32 // AES-256
	// kwpLen is CKM_AES_KEY_WRAP_PAD's output for a 32-byte key (RFC 5649:
	// the 8-byte integrity block plus the key, already a multiple of 8).
	kwpLen = kekLen + 8
	// cmacLen is CKM_AES_CMAC's output.
	cmacLen = 16
	// pkcs11WrappedKEKLen is the length of the PKCS#11 keystore's wrapped
	// KEK: key-wrapped KEK, then the binding tag.
	pkcs11WrappedKEKLen = kwpLen + cmacLen

	// nonceBatch is how many GCM nonces one C_GenerateRandom draws, so that
	// Seal costs C_EncryptInit and C_Encrypt and, once in nonceBatch calls,
	// a C_GenerateRandom.
	nonceBatch = 256

	// defaultRecoverBackoff is the least time between two attempts to
	// re-establish a lost token; in between, operations fail at once with
	// the last error.
	defaultRecoverBackoff = time.Second
)

// kekBindLabel starts every message the master key authenticates for a
// wrapped KEK (see bindMessage).
const kekBindLabel = "coffer-kek-pkcs11"

// PKCS11Config configures the PKCS#11 keystore: which library, which token,
// where the PIN comes from, which object is the master key. Exactly one of
// TokenLabel and Slot, and exactly one of PINFile and PINEnv, is set. The
// PIN is never taken as a literal value (it would show in process listings
// and shell history), only from a file or an environment variable, and it is
// read again whenever the keystore has to log in again.
type PKCS11Config struct {
	// Module is the path of the vendor's PKCS#11 library (for SoftHSM2 on
	// Debian, /usr/lib/softhsm/libsofthsm2.so). Required.
	Module string
	// TokenLabel selects the token by its label (CK_TOKEN_INFO.label, at
	// most 32 bytes). A token re-inserted into another slot is found again.
	TokenLabel string
	// Slot selects the token by slot id, as an alternative to TokenLabel.
	Slot *uint
	// PINFile is a file whose content is the user PIN. One trailing newline
	// ("\n" or "\r\n") is removed; nothing else is trimmed.
	PINFile string
	// PINEnv is the name (not the value) of an environment variable whose
	// value is the user PIN, used exactly as set.
	PINEnv string
	// SOPINFile and SOPINEnv give the security officer PIN, used only by
	// ExportMasterKey (to mark the transport key trusted). At most one is
	// set; the keystore itself never logs in as the security officer.
	SOPINFile string
	SOPINEnv  string
	// MasterKeyLabel is the CKA_LABEL of the master key token object.
	MasterKeyLabel string
	// SessionPoolSize bounds the sessions the keystore keeps open for
	// Seal, Open, Random and GenerateKEK (one more holds the loaded KEKs).
	// 0 means 2 × GOMAXPROCS at open; at most MaxSessionPoolSize.
	SessionPoolSize int
}

// DefaultPKCS11Config returns the defaults: no module (it must be set), the
// PIN in the environment variable DefaultPINEnv, the master key labelled
// DefaultMasterKeyLabel, 2 × GOMAXPROCS sessions. To use a PIN file instead,
// clear PINEnv as well as setting PINFile.
func DefaultPKCS11Config() PKCS11Config {
	return PKCS11Config{
		PINEnv:          DefaultPINEnv,
		MasterKeyLabel:  DefaultMasterKeyLabel,
		SessionPoolSize: 2 * runtime.GOMAXPROCS(0),
	}
}

// Validate checks the configuration without touching the module, the token,
// the file system or the environment. Errors wrap ErrInvalidArgument.
func (c PKCS11Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: pkcs11 keystore config: %s", ErrInvalidArgument, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Module == "":
		return bad("Module (the PKCS#11 library path) is required")
	case c.TokenLabel == "" && c.Slot == nil:
		return bad("one of TokenLabel or Slot is required")
	case c.TokenLabel != "" && c.Slot != nil:
		return bad("TokenLabel and Slot are alternatives; set one")
	case len(c.TokenLabel) > maxTokenLabelLen:
		return bad("TokenLabel is longer than %d bytes", maxTokenLabelLen)
	case c.PINFile == "" && c.PINEnv == "":
		return bad("one of PINFile or PINEnv is required")
	case c.PINFile != "" && c.PINEnv != "":
		return bad("exactly one of PINFile or PINEnv may be set")
	case c.SOPINFile != "" && c.SOPINEnv != "":
		return bad("at most one of SOPINFile or SOPINEnv may be set")
	case c.MasterKeyLabel == "":
		return bad("MasterKeyLabel is required")
	case len(c.MasterKeyLabel) > maxMasterLabelLen:
		return bad("MasterKeyLabel is longer than %d bytes", maxMasterLabelLen)
	case c.SessionPoolSize < 0 || c.SessionPoolSize > MaxSessionPoolSize:
		return bad("SessionPoolSize %d outside 0..%d", c.SessionPoolSize, MaxSessionPoolSize)
	}
	for _, env := range []struct{ field, name string }{{"PINEnv", c.PINEnv}, {"SOPINEnv", c.SOPINEnv}} {
		if strings.ContainsAny(env.name, "=\x00") {
			return bad("%s %q is not a valid environment variable name", env.field, env.name)
		}
	}
	return nil
}

// token names the configured token in messages.
func (c PKCS11Config) token() string {
	if c.Slot != nil {
		return fmt.Sprintf("slot %d", *c.Slot)
	}
	return fmt.Sprintf("token %q", c.TokenLabel)
}

// PKCS11 is the PKCS#11 keystore: the master key is a token object in an
// HSM, KEKs are session objects unwrapped from their replicated blobs, and
// every cryptographic operation runs inside the HSM. It implements Keystore;
// all methods are safe for concurrent use.
//
// A lost session, a logged-out token or a removed and re-inserted device is
// re-established transparently: the next operation that notices reopens the
// sessions, logs in again, finds the master key (and checks that it is the
// same one), reloads every KEK from the wrapped blob kept for it, and is
// retried once. While the token cannot be re-established, operations fail
// with errors wrapping ErrUnavailable and Healthy reports the cause.
type PKCS11 struct {
	cfg            PKCS11Config
	mod            *p11Module
	ctx            *pkcs11.Ctx
	poolSize       int
	recoverBackoff time.Duration

	// opMu orders operations against re-establishing and Close. Every
	// operation holds the read lock from taking the epoch until it has
	// given its session back, so no operation ever straddles two epochs
	// (object handles of an old epoch are never used in a new one, even on
	// a token that reuses handle numbers). Re-establishing and Close hold
	// the write lock, and with it every pooled session.
	opMu sync.RWMutex
	// Guarded by opMu.
	ep          *epoch // nil while the token is lost
	gen         uint64 // generation of the latest establish attempt
	broken      error  // why the last establish failed, while ep is nil
	lastAttempt time.Time
	closed      bool
	// check is the master key's CMAC of a zero block, taken at open, to
	// recognise the same master key after a device loss.
	check []byte

	// mu guards keks and blobs. Written under opMu (read or write) and,
	// for LoadKEK, objMu.
	mu sync.RWMutex
	// keks maps loaded ids to their session objects in the current epoch.
	keks map[KEKID]pkcs11.ObjectHandle
	// blobs keeps each loaded KEK's wrapped blob, to reload it into a new
	// epoch. Blobs are not secret (they are in replicated state).
	blobs map[KEKID][]byte

	// objMu serialises use of the epoch's object session.
	objMu sync.Mutex

	// slots is the session pool: poolSize entries, each an open session or
	// 0 for one not opened yet (0 is CK_INVALID_HANDLE).
	slots chan pkcs11.SessionHandle

	nonceMu sync.Mutex
	nonces  []byte // random bytes from the HSM, consumed 12 at a time

	health atomic.Pointer[healthState]
}

var _ Keystore = (*PKCS11)(nil)

// OpenPKCS11 loads the module, finds the token, logs in as the user, finds
// the master key (an AES-256 token object, CKA_SENSITIVE, labelled
// cfg.MasterKeyLabel), runs SelfTest and returns the keystore. A refused PIN
// gives an error wrapping ErrSealed; a missing module, token or master key,
// or a failed self-test, one wrapping ErrUnavailable.
func OpenPKCS11(cfg PKCS11Config) (*PKCS11, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mod, err := loadModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	size := cfg.SessionPoolSize
	if size == 0 {
		size = min(2*runtime.GOMAXPROCS(0), MaxSessionPoolSize)
	}
	p := &PKCS11{
		cfg:            cfg,
		mod:            mod,
		ctx:            mod.ctx,
		poolSize:       size,
		recoverBackoff: defaultRecoverBackoff,
		keks:           make(map[KEKID]pkcs11.ObjectHandle),
		blobs:          make(map[KEKID][]byte),
		slots:          make(chan pkcs11.SessionHandle, size),
	}
	for range size {
		p.slots <- 0
	}
	p.gen = 1
	ep, err := p.establish(p.gen)
	if err != nil {
		mod.release()
		return nil, fmt.Errorf("pkcs11 keystore on %s: %w", cfg.token(), err)
	}
	p.ep = ep
	if err := p.SelfTest(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Kind returns "pkcs11".
func (p *PKCS11) Kind() string { return KindPKCS11 }

// Healthy reports the keystore's last known state without touching the
// device: nil while operations succeed, an error wrapping ErrUnavailable
// after a device failure until an operation succeeds again, ErrClosed after
// Close.
func (p *PKCS11) Healthy() error {
	if h := p.health.Load(); h != nil {
		return h.err
	}
	return nil
}

// Random returns n bytes from the HSM's RNG (C_GenerateRandom); n must be in
// 1..MaxRandom.
func (p *PKCS11) Random(n int) ([]byte, error) {
	if n < 1 || n > MaxRandom {
		return nil, fmt.Errorf("%w: random length %d outside 1..%d", ErrInvalidArgument, n, MaxRandom)
	}
	var out []byte
	err := p.run(func(ep *epoch, s pkcs11.SessionHandle) error {
		b, err := p.ctx.GenerateRandom(s, n)
		if err != nil {
			return mapRV("C_GenerateRandom", callPlain, err)
		}
		if len(b) != n {
			return fmt.Errorf("%w: pkcs11: C_GenerateRandom returned %d bytes, want %d", ErrUnavailable, len(b), n)
		}
		out = b
		return nil
	})
	if err != nil {
		return nil, err // never a partial result
	}
	return out, nil
}

// GenerateKEK generates an AES-256 KEK inside the HSM and returns it wrapped
// under the master key and bound to id (see DESIGN.md for the format). The
// KEK is destroyed in the HSM before returning: callers load the committed
// copy with LoadKEK.
func (p *PKCS11) GenerateKEK(id KEKID) ([]byte, error) {
	if err := validateKEKID(id); err != nil {
		return nil, err
	}
	var out []byte
	err := p.run(func(ep *epoch, s pkcs11.SessionHandle) error {
		b, err := p.wrapNewKEK(s, ep.master, id)
		out = b
		return err
	})
	if err != nil {
		return nil, err // never a partial result
	}
	return out, nil
}

// LoadKEK checks that wrapped was made by GenerateKEK for id under this
// master key, unwraps it into a session object (CKA_TOKEN=false,
// CKA_SENSITIVE, not extractable, AES-GCM only) and keeps it under id, with
// the blob kept to reload it after a device loss. Loading an id that is
// already loaded is a no-op (wrapped is not examined).
func (p *PKCS11) LoadKEK(id KEKID, wrapped []byte) error {
	if err := validateKEKID(id); err != nil {
		return err
	}
	return p.run(func(ep *epoch, s pkcs11.SessionHandle) error {
		if p.loaded(id) {
			return nil
		}
		if len(wrapped) != pkcs11WrappedKEKLen {
			return fmt.Errorf("%w: wrapped kek %s is %d bytes, want %d", ErrIntegrity, id, len(wrapped), pkcs11WrappedKEKLen)
		}
		// Authenticate on the pool session; only the unwrap needs the
		// object session, which owns the KEK objects.
		if err := p.verifyBinding(s, ep.master, id, wrapped); err != nil {
			return err
		}
		p.objMu.Lock()
		defer p.objMu.Unlock()
		if p.loaded(id) {
			return nil
		}
		h, err := p.unwrapKEK(ep.obj, ep.master, wrapped)
		if err != nil {
			return err
		}
		p.mu.Lock()
		p.keks[id] = h
		p.blobs[id] = bytes.Clone(wrapped)
		p.mu.Unlock()
		return nil
	})
}

// Seal encrypts plaintext under the KEK id with AES-256-GCM inside the HSM:
// a 96-bit nonce from the HSM's RNG (or the token's own, if it insists on
// choosing), a 128-bit tag, aad as given. The result is nonce (12 bytes) ||
// ciphertext || tag (16 bytes), the software keystore's format.
func (p *PKCS11) Seal(id KEKID, plaintext, aad []byte) ([]byte, error) {
	if len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("%w: plaintext is %d bytes, limit %d", ErrInvalidArgument, len(plaintext), MaxPlaintext)
	}
	if len(aad) > MaxAAD {
		return nil, fmt.Errorf("%w: associated data is %d bytes, limit %d", ErrInvalidArgument, len(aad), MaxAAD)
	}
	var out []byte
	err := p.run(func(ep *epoch, s pkcs11.SessionHandle) error {
		h, err := p.kekHandle(id)
		if err != nil {
			return err
		}
		nonce, err := p.nextNonce(s)
		if err != nil {
			return err
		}
		out, err = p.gcmSeal(s, h, nonce, plaintext, aad)
		return err
	})
	if err != nil {
		return nil, err // never a partial result
	}
	return out, nil
}

// Open decrypts what Seal produced (here or on any keystore holding the same
// KEK) under the same id and aad. Any mismatch, and any input too short or
// too long to be Seal's output, gives ErrIntegrity.
func (p *PKCS11) Open(id KEKID, ciphertext, aad []byte) ([]byte, error) {
	var out []byte
	err := p.run(func(ep *epoch, s pkcs11.SessionHandle) error {
		h, err := p.kekHandle(id)
		if err != nil {
			return err
		}
		if len(ciphertext) < SealOverhead || len(ciphertext) > MaxPlaintext+SealOverhead || len(aad) > MaxAAD {
			return fmt.Errorf("%w: sealed data under kek %s has an impossible length", ErrIntegrity, id)
		}
		out, err = p.gcmOpen(s, h, ciphertext, aad)
		if errors.Is(err, ErrIntegrity) {
			return &integrityError{id: id, err: err}
		}
		return err
	})
	if err != nil {
		return nil, err // never a partial result
	}
	return out, nil
}

// integrityError keeps the classified cause (for the ambiguity probe) while
// printing like the software keystore's error.
type integrityError struct {
	id  KEKID
	err error
}

func (e *integrityError) Error() string {
	return fmt.Sprintf("%v: sealed data under kek %s", ErrIntegrity, e.id)
}
func (e *integrityError) Unwrap() error { return e.err }

// Close destroys the KEK session objects and closes every session (which
// logs the application out of the token once its last session is closed),
// then releases the module. Later calls fail with ErrClosed.
func (p *PKCS11) Close() error {
	p.opMu.Lock()
	if p.closed {
		p.opMu.Unlock()
		return ErrClosed
	}
	p.closed = true
	p.teardown()
	p.mu.Lock()
	p.blobs = nil
	p.mu.Unlock()
	p.opMu.Unlock()
	p.health.Store(&healthState{err: ErrClosed})
	p.mod.release()
	return nil
}

// SelfTest runs, inside the HSM: the AES-256-GCM known-answer test (the
// vector's key as a session object, both directions, a tampered tag that
// must be refused), then a KEK generated, wrapped, authenticated, unwrapped,
// used to seal and open, with altered associated data and a blob presented
// under another id both refused; and it checks that the master key is the
// one found at open. Failures wrap ErrUnavailable.
func (p *PKCS11) SelfTest() error {
	err := p.run(func(ep *epoch, s pkcs11.SessionHandle) error {
		if err := p.knownAnswerTest(s); err != nil {
			return selfTestError{fmt.Errorf("known-answer test: %w", err)}
		}
		if err := p.roundTrip(s, ep.master); err != nil {
			return selfTestError{fmt.Errorf("round trip: %w", err)}
		}
		check, err := p.cmac(s, ep.master, make([]byte, 16))
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare(check, p.check) != 1 {
			return selfTestError{errors.New("the master key is not the one found at open")}
		}
		return nil
	})
	if err == nil || errors.Is(err, ErrClosed) {
		return err
	}
	var st selfTestError
	if errors.As(err, &st) || !errors.Is(err, ErrUnavailable) {
		err = fmt.Errorf("%w: self-test: %w", ErrUnavailable, err)
	} else {
		err = fmt.Errorf("self-test: %w", err)
	}
	p.setHealth(err)
	return err
}

// selfTestError marks a self-test check that failed (as opposed to a call).
type selfTestError struct{ error }

func (e selfTestError) Unwrap() error { return e.error }

// ---- loaded KEKs and nonces ----

// loaded reports whether id is loaded in the current epoch.
func (p *PKCS11) loaded(id KEKID) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	_, ok := p.keks[id]
	return ok
}

// kekHandle returns the session object of a loaded KEK in the current epoch.
func (p *PKCS11) kekHandle(id KEKID) (pkcs11.ObjectHandle, error) {
	p.mu.RLock()
	h, ok := p.keks[id]
	p.mu.RUnlock()
	if !ok {
		return 0, fmt.Errorf("%w: %s", ErrKEKNotLoaded, id)
	}
	return h, nil
}

// nextNonce returns 12 fresh bytes from the HSM's RNG, drawn nonceBatch at
// a time on session s. Each nonce is handed out once.
func (p *PKCS11) nextNonce(s pkcs11.SessionHandle) ([]byte, error) {
	p.nonceMu.Lock()
	defer p.nonceMu.Unlock()
	if len(p.nonces) < gcmNonceLen {
		b, err := p.ctx.GenerateRandom(s, nonceBatch*gcmNonceLen)
		if err != nil {
			return nil, mapRV("C_GenerateRandom", callPlain, err)
		}
		if len(b) != nonceBatch*gcmNonceLen {
			return nil, fmt.Errorf("%w: pkcs11: C_GenerateRandom returned %d bytes", ErrUnavailable, len(b))
		}
		p.nonces = b
	}
	n := p.nonces[:gcmNonceLen:gcmNonceLen]
	p.nonces = p.nonces[gcmNonceLen:]
	return n, nil
}

// ---- the primitives, on a given session ----

func gcmMechanism(params *pkcs11.GCMParams) []*pkcs11.Mechanism {
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
}

// gcmSeal encrypts under key with AES-GCM and returns nonce || ciphertext ||
// tag. The nonce is the one the token used: ours, or its own if it replaces
// the caller's IV.
func (p *PKCS11) gcmSeal(s pkcs11.SessionHandle, key pkcs11.ObjectHandle, nonce, plaintext, aad []byte) ([]byte, error) {
	params := pkcs11.NewGCMParams(nonce, aad, gcmTagLen*8)
	defer params.Free()
	if err := p.ctx.EncryptInit(s, gcmMechanism(params), key); err != nil {
		return nil, mapRV("C_EncryptInit(CKM_AES_GCM)", callPlain, err)
	}
	ct, err := p.ctx.Encrypt(s, plaintext)
	if err != nil {
		return nil, mapRV("C_Encrypt(CKM_AES_GCM)", callPlain, err)
	}
	iv := params.IV()
	if len(iv) != gcmNonceLen || len(ct) != len(plaintext)+gcmTagLen {
		return nil, fmt.Errorf("%w: pkcs11: C_Encrypt(CKM_AES_GCM) returned a %d-byte nonce and %d bytes for %d", ErrUnavailable, len(iv), len(ct), len(plaintext))
	}
	out := make([]byte, 0, gcmNonceLen+len(ct))
	return append(append(out, iv...), ct...), nil
}

// gcmOpen decrypts nonce || ciphertext || tag under key with AES-GCM.
func (p *PKCS11) gcmOpen(s pkcs11.SessionHandle, key pkcs11.ObjectHandle, sealed, aad []byte) ([]byte, error) {
	params := pkcs11.NewGCMParams(sealed[:gcmNonceLen], aad, gcmTagLen*8)
	defer params.Free()
	if err := p.ctx.DecryptInit(s, gcmMechanism(params), key); err != nil {
		return nil, mapRV("C_DecryptInit(CKM_AES_GCM)", callPlain, err)
	}
	pt, err := p.ctx.Decrypt(s, sealed[gcmNonceLen:])
	if err != nil {
		return nil, mapRV("C_Decrypt(CKM_AES_GCM)", callVerify, err)
	}
	if len(pt) != len(sealed)-SealOverhead {
		clear(pt)
		return nil, fmt.Errorf("%w: pkcs11: C_Decrypt(CKM_AES_GCM) returned %d bytes, want %d", ErrUnavailable, len(pt), len(sealed)-SealOverhead)
	}
	return pt, nil
}

var (
	kwpMechanism  = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
	cmacMechanism = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CMAC, nil)}
)

// cmac computes AES-CMAC under key (the master key) inside the HSM.
func (p *PKCS11) cmac(s pkcs11.SessionHandle, key pkcs11.ObjectHandle, msg []byte) ([]byte, error) {
	return cmacOn(p.ctx, s, key, msg)
}

func cmacOn(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, key pkcs11.ObjectHandle, msg []byte) ([]byte, error) {
	if err := ctx.SignInit(s, cmacMechanism, key); err != nil {
		return nil, mapRV("C_SignInit(CKM_AES_CMAC)", callPlain, err)
	}
	tag, err := ctx.Sign(s, msg)
	if err != nil {
		return nil, mapRV("C_Sign(CKM_AES_CMAC)", callPlain, err)
	}
	if len(tag) != cmacLen {
		return nil, fmt.Errorf("%w: pkcs11: C_Sign(CKM_AES_CMAC) returned %d bytes", ErrUnavailable, len(tag))
	}
	return tag, nil
}

// bindMessage is what the binding tag of a wrapped KEK authenticates:
// "coffer-kek-pkcs11" 0x00 policy 0x00 version(uint32, big-endian) kwp.
// Policies contain no NUL byte and the rest is of fixed length, so distinct
// (id, kwp) pairs give distinct messages.
func bindMessage(id KEKID, kwp []byte) []byte {
	b := make([]byte, 0, len(kekBindLabel)+len(id.Policy)+6+len(kwp))
	b = append(b, kekBindLabel...)
	b = append(b, 0)
	b = append(b, id.Policy...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, id.Version)
	return append(b, kwp...)
}

// wrapNewKEK generates a KEK as a session object, wraps it under the master
// key with CKM_AES_KEY_WRAP_PAD, destroys it, and appends the CMAC binding
// tag over the id and the wrapped key.
func (p *PKCS11) wrapNewKEK(s pkcs11.SessionHandle, master pkcs11.ObjectHandle, id KEKID) ([]byte, error) {
	kek, err := p.ctx.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, kekGenerateTemplate())
	if err != nil {
		return nil, mapRV("C_GenerateKey(CKM_AES_KEY_GEN)", callPlain, err)
	}
	// The KEK exists only for the wrap. If the destroy fails (the session
	// is being lost), closing the session destroys it.
	defer p.ctx.DestroyObject(s, kek)
	kwp, err := p.ctx.WrapKey(s, kwpMechanism, master, kek)
	if err != nil {
		return nil, mapRV("C_WrapKey(CKM_AES_KEY_WRAP_PAD)", callPlain, err)
	}
	if len(kwp) != kwpLen {
		return nil, fmt.Errorf("%w: pkcs11: C_WrapKey(CKM_AES_KEY_WRAP_PAD) returned %d bytes, want %d", ErrUnavailable, len(kwp), kwpLen)
	}
	tag, err := p.cmac(s, master, bindMessage(id, kwp))
	if err != nil {
		return nil, err
	}
	return append(kwp, tag...), nil
}

// verifyBinding checks, inside the HSM (C_Verify), the binding tag of a
// wrapped KEK of the right length against id.
func (p *PKCS11) verifyBinding(s pkcs11.SessionHandle, master pkcs11.ObjectHandle, id KEKID, wrapped []byte) error {
	kwp, tag := wrapped[:kwpLen], wrapped[kwpLen:]
	if err := p.ctx.VerifyInit(s, cmacMechanism, master); err != nil {
		return mapRV("C_VerifyInit(CKM_AES_CMAC)", callPlain, err)
	}
	if err := p.ctx.Verify(s, bindMessage(id, kwp), tag); err != nil {
		err = mapRV("C_Verify(CKM_AES_CMAC)", callVerify, err)
		if errors.Is(err, ErrIntegrity) {
			return &kekIntegrityError{id: id, err: err}
		}
		return err
	}
	return nil
}

// kekIntegrityError reports a wrapped KEK that does not belong to its id
// or to this master key, keeping the classified cause.
type kekIntegrityError struct {
	id  KEKID
	err error
}

func (e *kekIntegrityError) Error() string {
	return fmt.Sprintf("%v: wrapped kek %s does not unwrap under this master key and id", ErrIntegrity, e.id)
}
func (e *kekIntegrityError) Unwrap() error { return e.err }

// unwrapKEK unwraps an authenticated wrapped KEK into a session object owned
// by session s. The binding tag has been verified, so a failure here is the
// device's, not the blob's.
func (p *PKCS11) unwrapKEK(s pkcs11.SessionHandle, master pkcs11.ObjectHandle, wrapped []byte) (pkcs11.ObjectHandle, error) {
	h, err := p.ctx.UnwrapKey(s, kwpMechanism, master, wrapped[:kwpLen], kekLoadTemplate())
	if err != nil {
		return 0, mapRV("C_UnwrapKey(CKM_AES_KEY_WRAP_PAD)", callPlain, err)
	}
	return h, nil
}

// knownAnswerTest runs the package's AES-256-GCM vector through the HSM.
func (p *PKCS11) knownAnswerTest(s pkcs11.SessionHandle) error {
	v := katGCM
	key, err := p.ctx.CreateObject(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, v.key),
	})
	if err != nil {
		return mapRV("C_CreateObject(known-answer key)", callPlain, err)
	}
	defer p.ctx.DestroyObject(s, key)
	want := append(append(bytes.Clone(v.nonce), v.ciphertext...), v.tag...)
	got, err := p.gcmSeal(s, key, bytes.Clone(v.nonce), v.plaintext, v.aad)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return errors.New("C_Encrypt does not match the expected ciphertext")
	}
	pt, err := p.gcmOpen(s, key, want, v.aad)
	if err != nil {
		return err
	}
	if !bytes.Equal(pt, v.plaintext) {
		return errors.New("C_Decrypt does not recover the expected plaintext")
	}
	want[len(want)-1] ^= 1
	if err := mustRefuse(p.gcmOpen(s, key, want, v.aad)); err != nil {
		return fmt.Errorf("tampered tag: %w", err)
	}
	return p.sessionUsable(s)
}

// roundTrip exercises the production paths with a throwaway KEK held in a
// session object of s, destroyed at the end, never registered.
func (p *PKCS11) roundTrip(s pkcs11.SessionHandle, master pkcs11.ObjectHandle) error {
	wrapped, err := p.wrapNewKEK(s, master, selfTestKEKID)
	if err != nil {
		return err
	}
	other := KEKID{Policy: selfTestKEKID.Policy, Version: selfTestKEKID.Version + 1}
	if err := mustRefuse(nil, p.verifyBinding(s, master, other, wrapped)); err != nil {
		return fmt.Errorf("wrapped kek under another id: %w", err)
	}
	if err := p.sessionUsable(s); err != nil {
		return err
	}
	if err := p.verifyBinding(s, master, selfTestKEKID, wrapped); err != nil {
		return err
	}
	kek, err := p.unwrapKEK(s, master, wrapped)
	if err != nil {
		return err
	}
	defer p.ctx.DestroyObject(s, kek)
	nonce, err := p.nextNonce(s)
	if err != nil {
		return err
	}
	msg := []byte("coffer keystore self-test")
	aad := []byte("coffer self-test aad")
	sealed, err := p.gcmSeal(s, kek, nonce, msg, aad)
	if err != nil {
		return err
	}
	if len(sealed) != len(msg)+SealOverhead {
		return fmt.Errorf("sealed length %d, want %d", len(sealed), len(msg)+SealOverhead)
	}
	opened, err := p.gcmOpen(s, kek, sealed, aad)
	if err != nil {
		return err
	}
	if !bytes.Equal(opened, msg) {
		return errors.New("seal/open round trip failed")
	}
	if err := mustRefuse(p.gcmOpen(s, kek, sealed, aad[1:])); err != nil {
		return fmt.Errorf("altered associated data: %w", err)
	}
	return p.sessionUsable(s)
}

// mustRefuse checks the outcome of a self-test call that must fail the
// integrity check: nil if it did, the call's own error if it failed
// otherwise (so a lost session is still recognised as one), an error if it
// succeeded.
func mustRefuse(_ []byte, err error) error {
	switch {
	case err == nil:
		return errors.New("accepted")
	case errors.Is(err, ErrIntegrity):
		return nil
	}
	return err
}
