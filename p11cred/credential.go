package p11cred

import (
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/miekg/pkcs11"

	"github.com/coffer-kms/coffer/hsmwrap"
)

// cacheKeyDomain prefixes every message DeriveKey authenticates, so the
// cache secret's HMACs can never be mistaken for anything else it might
// ever compute.
const cacheKeyDomain = "coffer-client-cache-key-v1\x00"

// Credential is the client's private key (and, when provisioned, its cache
// secret) in a PKCS#11 token, opened and logged in. Every method is safe for
// concurrent use.
type Credential struct {
	cfg   Config
	mod   *hsmwrap.Module
	ctx   *pkcs11.Ctx
	key   *tokenKey
	keyID []byte                    // the private key's CKA_ID
	pool  chan pkcs11.SessionHandle // Sessions slots; 0 is an empty slot

	// mu's read lock is held by every operation from taking a session to
	// returning it, so the write lock (re-establishing, Close) sees every
	// session back in the pool and no handle of an old login in use.
	mu     sync.RWMutex
	closed bool
	gen    uint64 // incremented by every re-establishment
	st     state
	// pinRefused, once set, is returned instead of logging in again: the
	// token refused the PIN, and trying again would lock it.
	pinRefused error

	certMu sync.Mutex
	cert   *tls.Certificate // read once successfully, then kept
}

// state is one established login: the slot, the session that holds the
// login (login state belongs to the application and lasts while it has a
// session open; tokens may give private objects new handles after a new
// login, so the handles belong to it too), and the object handles.
type state struct {
	slot   uint
	login  pkcs11.SessionHandle
	priv   pkcs11.ObjectHandle
	secret pkcs11.ObjectHandle // 0: no cache secret in the token
}

// Open loads the module, finds the token, logs in with the PIN, finds the
// private key labelled cfg.KeyLabel (and the cache secret, if there is
// one) and checks that the key signs. The certificate is not read until
// Certificate is called, so a key with no certificate yet (provisioning)
// opens too. Close releases everything.
func Open(cfg Config) (*Credential, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mod, err := hsmwrap.OpenModule(cfg.Module)
	if err != nil {
		return nil, wrapP11(fmt.Sprintf("module %s", cfg.Module), err)
	}
	c := &Credential{cfg: cfg, mod: mod, ctx: mod.Ctx(), pool: make(chan pkcs11.SessionHandle, cfg.Sessions)}
	for range cfg.Sessions {
		c.pool <- 0
	}
	st, info, err := c.establish()
	if err != nil {
		mod.Close()
		return nil, err
	}
	c.st = st
	c.key = &tokenKey{c: c, typ: info.typ, pub: info.pub, bits: info.bits}
	c.keyID = info.id
	// One signature now, checked against the public key: a private key
	// that does not match the public key beside it, or a token that signs
	// wrongly, fails here rather than in a handshake.
	if err := c.key.check(info.pub); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// keyInfo is what establish learns about the private key.
type keyInfo struct {
	typ  uint // CKK_EC or CKK_RSA
	bits int
	pub  crypto.PublicKey
	id   []byte
}

// establish opens the login session, logs in and finds the objects. It is
// all or nothing: on failure no session stays open.
func (c *Credential) establish() (state, keyInfo, error) {
	var st state
	var info keyInfo
	slot, err := c.mod.FindToken(c.cfg.TokenLabel)
	if err != nil {
		return st, info, wrapP11("token "+c.cfg.TokenLabel, err)
	}
	s, err := c.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return st, info, wrapP11("token "+c.cfg.TokenLabel, hsmwrap.PKCS11Error("C_OpenSession", err))
	}
	ok := false
	defer func() {
		if !ok {
			c.ctx.CloseSession(s)
		}
	}()
	if err := hsmwrap.LoginUser(c.ctx, s, c.cfg.PINFile, c.cfg.PINEnv); err != nil {
		return st, info, wrapP11(fmt.Sprintf("token %s (%s)", c.cfg.TokenLabel, c.cfg.pinSource()), err)
	}
	st = state{slot: slot, login: s}
	if st.priv, info, err = findPrivateKey(c.ctx, s, c.cfg.KeyLabel); err != nil {
		return st, info, err
	}
	if st.secret, err = findCacheSecret(c.ctx, s, c.cfg.ResolvedCacheKeyLabel()); err != nil && !errors.Is(err, ErrNotFound) {
		return st, info, err
	}
	ok = true
	return st, info, nil
}

// wrapP11 gives an error from hsmwrap's PKCS#11 plumbing this package's
// sentinel. The result still matches hsmwrap's error with errors.Is and
// keeps its detail (the call and the return value), without the keystore
// wording of hsmwrap's sentinels, which is about the node's master key.
func wrapP11(what string, err error) error {
	sentinel := ErrUnavailable
	switch {
	case err == nil:
		return nil
	case errors.Is(err, hsmwrap.ErrSealed):
		sentinel = ErrPIN
	case errors.Is(err, hsmwrap.ErrInvalidArgument):
		sentinel = ErrInvalidConfig
	}
	return &p11Error{sentinel: sentinel, what: what, err: err}
}

// opError gives the error of an operation (run's result) its final form:
// this package's errors keep their sentinel, hsmwrap's get one.
func opError(what string, err error) error {
	for _, s := range []error{ErrClosed, ErrNotFound, ErrInvalidArgument, ErrMismatch, ErrPIN, ErrUnavailable, ErrUnsupportedKey, ErrInvalidConfig} {
		if errors.Is(err, s) {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return wrapP11(what, err)
}

// p11Error is a failure from hsmwrap's PKCS#11 plumbing.
type p11Error struct {
	sentinel error
	what     string
	err      error
}

func (e *p11Error) Error() string {
	msg := e.err.Error()
	for _, s := range []error{hsmwrap.ErrSealed, hsmwrap.ErrUnavailable, hsmwrap.ErrInvalidArgument} {
		msg = strings.TrimPrefix(msg, s.Error()+": ")
	}
	return e.sentinel.Error() + ": " + e.what + ": " + msg
}

func (e *p11Error) Unwrap() []error { return []error{e.sentinel, e.err} }

// run runs fn on a pooled session of the current login. If fn fails because
// the session, the login or the token was lost, the credential logs in
// again (once for all concurrent callers that saw the same loss) and runs
// fn once more; fn therefore only reads or signs.
func (c *Credential) run(fn func(s pkcs11.SessionHandle, st *state) error) error {
	for attempt := 0; ; attempt++ {
		c.mu.RLock()
		if c.closed {
			c.mu.RUnlock()
			return ErrClosed
		}
		gen, st := c.gen, c.st
		s := <-c.pool
		var err error
		if s == 0 {
			// The login session keeps the application logged in, so a new
			// session starts logged in.
			if s, err = c.ctx.OpenSession(st.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
				err = hsmwrap.PKCS11Error("C_OpenSession", err)
			}
		}
		if err == nil {
			err = fn(s, &st)
		}
		if err != nil && s != 0 && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrInvalidArgument) {
			// It may hold a half-finished operation, or be gone already.
			c.ctx.CloseSession(s)
			s = 0
		}
		c.pool <- s
		c.mu.RUnlock()
		if err == nil || !hsmwrap.SessionLost(err) || attempt > 0 {
			return err
		}
		if rerr := c.reestablish(gen); rerr != nil {
			return rerr
		}
	}
}

// reestablish replaces the login of generation gen, unless another caller
// already has.
func (c *Credential) reestablish(gen uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if c.gen != gen {
		return nil
	}
	if c.pinRefused != nil {
		return c.pinRefused
	}
	c.teardown()
	c.gen++
	st, info, err := c.establish()
	if err != nil {
		err = fmt.Errorf("logging in to the token again: %w", err)
		if errors.Is(err, ErrPIN) {
			c.pinRefused = err
		}
		return err
	}
	if !publicEqual(info.pub, c.key.pub) {
		c.ctx.CloseSession(st.login)
		return fmt.Errorf("%w: the key labelled %q is no longer the key opened", ErrMismatch, c.cfg.KeyLabel)
	}
	c.st = st
	return nil
}

// teardown closes every pooled session and the login session. The caller
// holds mu's write lock, so every session is in the pool.
func (c *Credential) teardown() {
	for range cap(c.pool) {
		if s := <-c.pool; s != 0 {
			c.ctx.CloseSession(s)
		}
	}
	for range cap(c.pool) {
		c.pool <- 0
	}
	if c.st.login != 0 {
		c.ctx.CloseSession(c.st.login)
		c.st = state{slot: c.st.slot}
	}
}

// Close closes the sessions (which logs the application out of the token
// when it has no other session) and releases the module. Operations after
// Close fail with ErrClosed; closing twice is a no-op.
func (c *Credential) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.teardown()
	c.mod.Close()
	return nil
}

// Signer returns the private key as a crypto.Signer whose signatures are
// made inside the token. It is the PrivateKey of Certificate's result.
func (c *Credential) Signer() crypto.Signer { return c.key }

// Public returns the key's public key: *ecdsa.PublicKey or *rsa.PublicKey.
func (c *Credential) Public() crypto.PublicKey { return c.key.pub }

// HasCacheSecret reports whether the token held the cache secret when the
// credential last logged in, that is whether DeriveKey can work.
func (c *Credential) HasCacheSecret() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.st.secret != 0
}

// DeriveKey returns a DerivedKeyLen-byte key for info, computed inside the
// token as HMAC-SHA256 under the cache secret (a generic secret that never
// leaves the token) over "coffer-client-cache-key-v1" ‖ 0x00 ‖ info. The
// same token, secret and info always give the same key, across sessions
// and processes; another info or another secret gives an unrelated key. It
// has the signature client.Config.CacheFileKey takes. A token without the
// cache secret is ErrNotFound; info longer than MaxInfoLen
// ErrInvalidArgument.
func (c *Credential) DeriveKey(info []byte) ([]byte, error) {
	if len(info) > MaxInfoLen {
		return nil, fmt.Errorf("%w: info is %d bytes, at most %d", ErrInvalidArgument, len(info), MaxInfoLen)
	}
	msg := make([]byte, 0, len(cacheKeyDomain)+len(info))
	msg = append(append(msg, cacheKeyDomain...), info...)
	var out []byte
	err := c.run(func(s pkcs11.SessionHandle, st *state) error {
		if st.secret == 0 {
			return fmt.Errorf("%w: no cache secret labelled %q (`coffer pkcs11 keygen` creates it)", ErrNotFound, c.cfg.ResolvedCacheKeyLabel())
		}
		if err := c.ctx.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, st.secret); err != nil {
			return hsmwrap.PKCS11Error("C_SignInit(CKM_SHA256_HMAC)", err)
		}
		mac, err := c.ctx.Sign(s, msg)
		if err != nil {
			return hsmwrap.PKCS11Error("C_Sign(CKM_SHA256_HMAC)", err)
		}
		out = mac
		return nil
	})
	if err != nil {
		return nil, opError("deriving a cache key", err)
	}
	if len(out) != DerivedKeyLen {
		return nil, fmt.Errorf("%w: CKM_SHA256_HMAC returned %d bytes, want %d", ErrUnavailable, len(out), DerivedKeyLen)
	}
	return out, nil
}
