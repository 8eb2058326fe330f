package p11cred

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
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

// findPrivateKey finds the one private key labelled label, checks that it
// can sign and is of a supported kind, and reads its public key from the
// public key object with the same CKA_ID (or label), if there is one.
func findPrivateKey(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string) (pkcs11.ObjectHandle, keyInfo, error) {
	var info keyInfo
	hs, err := hsmwrap.FindObjects(ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, 2)
	if err != nil {
		return 0, info, wrapP11("finding key "+label, err)
	}
	switch len(hs) {
	case 0:
		return 0, info, fmt.Errorf("%w: no private key labelled %q (provision one with `coffer pkcs11 keygen`)", ErrNotFound, label)
	case 1:
	default:
		return 0, info, fmt.Errorf("%w: more than one private key is labelled %q; give each key its own label", ErrUnsupportedKey, label)
	}
	h := hs[0]
	attrs, err := ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
	})
	if err != nil {
		return 0, info, wrapP11("key "+label, hsmwrap.PKCS11Error("C_GetAttributeValue(private key)", err))
	}
	v := attrMap(attrs)
	if b := v[pkcs11.CKA_SIGN]; len(b) != 1 || b[0] == 0 {
		return 0, info, fmt.Errorf("%w: the private key labelled %q may not sign (CKA_SIGN is false)", ErrUnsupportedKey, label)
	}
	info.typ = hsmwrap.ULongAttr(v[pkcs11.CKA_KEY_TYPE])
	info.id = bytes.Clone(v[pkcs11.CKA_ID])
	if info.typ != pkcs11.CKK_EC && info.typ != pkcs11.CKK_RSA {
		return 0, info, fmt.Errorf("%w: the key labelled %q is of PKCS#11 key type %#x; ECDSA P-256 and RSA are supported", ErrUnsupportedKey, label, info.typ)
	}
	pub, err := findPublicKey(ctx, s, label, info.id, info.typ)
	if err != nil {
		return 0, info, err
	}
	if pub == nil {
		return 0, info, fmt.Errorf("%w: no public key object beside the private key labelled %q (same CKA_ID or label)", ErrNotFound, label)
	}
	info.pub = pub
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		info.bits = k.Curve.Params().BitSize
	case *rsa.PublicKey:
		info.bits = k.N.BitLen()
		if info.bits < minRSABits {
			return 0, info, fmt.Errorf("%w: the RSA key labelled %q has %d bits, at least %d are needed", ErrUnsupportedKey, label, info.bits, minRSABits)
		}
	}
	return h, info, nil
}

// minRSABits is the smallest RSA key accepted.
const minRSABits = 2048

// findPublicKey reads the public key object matching the private key: by
// CKA_ID when it has one, else by label. It returns nil when there is none.
func findPublicKey(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string, id []byte, typ uint) (crypto.PublicKey, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY)}
	if len(id) > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	} else {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	hs, err := hsmwrap.FindObjects(ctx, s, tmpl, 2)
	if err != nil {
		return nil, wrapP11("finding the public key of "+label, err)
	}
	if len(hs) == 0 {
		return nil, nil
	}
	if len(hs) > 1 {
		return nil, fmt.Errorf("%w: several public key objects match the private key labelled %q", ErrUnsupportedKey, label)
	}
	if typ == pkcs11.CKK_EC {
		attrs, err := ctx.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		})
		if err != nil {
			return nil, wrapP11("key "+label, hsmwrap.PKCS11Error("C_GetAttributeValue(EC public key)", err))
		}
		v := attrMap(attrs)
		if !bytes.Equal(v[pkcs11.CKA_EC_PARAMS], hsmwrap.P256ECParams()) {
			return nil, fmt.Errorf("%w: the EC key labelled %q is not on P-256", ErrUnsupportedKey, label)
		}
		pub, err := hsmwrap.DecodeP256Point(v[pkcs11.CKA_EC_POINT])
		if err != nil {
			return nil, fmt.Errorf("%w: the public key labelled %q: %w", ErrUnsupportedKey, label, err)
		}
		return pub, nil
	}
	attrs, err := ctx.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
	})
	if err != nil {
		return nil, wrapP11("key "+label, hsmwrap.PKCS11Error("C_GetAttributeValue(RSA public key)", err))
	}
	v := attrMap(attrs)
	e := new(big.Int).SetBytes(v[pkcs11.CKA_PUBLIC_EXPONENT])
	if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
		return nil, fmt.Errorf("%w: the RSA public key labelled %q has an unusable exponent", ErrUnsupportedKey, label)
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(v[pkcs11.CKA_MODULUS]), E: int(e.Int64())}, nil
}

// findCacheSecret finds the one secret key labelled label; none is
// ErrNotFound.
func findCacheSecret(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string) (pkcs11.ObjectHandle, error) {
	hs, err := hsmwrap.FindObjects(ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, 2)
	if err != nil {
		return 0, wrapP11("finding cache secret "+label, err)
	}
	switch len(hs) {
	case 0:
		return 0, fmt.Errorf("%w: no cache secret labelled %q (`coffer pkcs11 keygen` creates it)", ErrNotFound, label)
	case 1:
		return hs[0], nil
	}
	return 0, fmt.Errorf("%w: more than one secret key is labelled %q", ErrUnsupportedKey, label)
}

func attrMap(attrs []*pkcs11.Attribute) map[uint][]byte {
	v := make(map[uint][]byte, len(attrs))
	for _, a := range attrs {
		v[a.Type] = a.Value
	}
	return v
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

// Certificate returns the client's TLS certificate: the chain from
// Config.CertFile, or else the leaf from the token's certificate object
// (label KeyLabel), with PrivateKey set to Signer() and Leaf parsed. The
// leaf's public key must be the token key's (ErrMismatch). Once read, the
// same certificate is returned again; a failure is not kept, so a later
// call tries again.
func (c *Credential) Certificate() (tls.Certificate, error) {
	c.certMu.Lock()
	defer c.certMu.Unlock()
	if c.cert != nil {
		return *c.cert, nil
	}
	pair, err := c.loadCertificate()
	if err != nil {
		return tls.Certificate{}, err
	}
	c.cert = &pair
	return pair, nil
}

func (c *Credential) loadCertificate() (tls.Certificate, error) {
	var chain [][]byte
	if c.cfg.CertFile != "" {
		data, err := readLimited(c.cfg.CertFile)
		if err != nil {
			return tls.Certificate{}, err
		}
		if chain, err = decodeChain(data); err != nil {
			return tls.Certificate{}, fmt.Errorf("%s: %w", c.cfg.CertFile, err)
		}
	} else {
		der, err := c.tokenCertificate()
		if err != nil {
			return tls.Certificate{}, err
		}
		chain = [][]byte{der}
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%w: certificate: %w", ErrInvalidArgument, err)
	}
	if !publicEqual(leaf.PublicKey, c.key.pub) {
		return tls.Certificate{}, fmt.Errorf("%w: the certificate for %q is not for the key labelled %q", ErrMismatch, leaf.Subject.CommonName, c.cfg.KeyLabel)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: c.key, Leaf: leaf}, nil
}

// tokenCertificate reads the DER of the certificate object belonging to
// the key.
func (c *Credential) tokenCertificate() ([]byte, error) {
	var der []byte
	err := c.run(func(s pkcs11.SessionHandle, _ *state) error {
		hs, err := hsmwrap.FindObjects(c.ctx, s, certTemplate(c.cfg.KeyLabel), 2)
		if err != nil {
			return err
		}
		switch len(hs) {
		case 0:
			return fmt.Errorf("%w: no certificate labelled %q: give the certificate file (--cert) or store it in the token (`coffer pkcs11 import-cert`)", ErrNotFound, c.cfg.KeyLabel)
		case 1:
		default:
			return fmt.Errorf("%w: more than one certificate is labelled %q", ErrInvalidArgument, c.cfg.KeyLabel)
		}
		attrs, err := c.ctx.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return hsmwrap.PKCS11Error("C_GetAttributeValue(certificate)", err)
		}
		if v := attrMap(attrs)[pkcs11.CKA_VALUE]; len(v) > 0 && len(v) <= maxCertBytes {
			der = bytes.Clone(v)
			return nil
		}
		return fmt.Errorf("%w: the certificate labelled %q is empty or larger than %d bytes", ErrInvalidArgument, c.cfg.KeyLabel, maxCertBytes)
	})
	if err != nil {
		return nil, opError("reading the certificate", err)
	}
	return der, nil
}

// certTemplate finds X.509 certificate objects labelled label.
func certTemplate(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
		pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// readLimited reads at most maxCertBytes of path.
func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate file: %w", ErrInvalidConfig, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCertBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrInvalidConfig, path, err)
	}
	if len(b) > maxCertBytes {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalidArgument, path, maxCertBytes)
	}
	return b, nil
}

// decodeChain decodes every CERTIFICATE block of a PEM input, leaf first.
func decodeChain(data []byte) ([][]byte, error) {
	var chain [][]byte
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: unexpected PEM block %q", ErrInvalidArgument, b.Type)
		}
		chain = append(chain, b.Bytes)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: data after the PEM certificates", ErrInvalidArgument)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: no PEM certificate", ErrInvalidArgument)
	}
	return chain, nil
}

func publicEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}

// tokenKey is the private key in the token, as a crypto.Signer.
type tokenKey struct {
	c    *Credential
	typ  uint
	bits int
	pub  crypto.PublicKey
}

var _ crypto.Signer = (*tokenKey)(nil)

// Public returns the *ecdsa.PublicKey or *rsa.PublicKey.
func (k *tokenKey) Public() crypto.PublicKey { return k.pub }

// Sign signs digest inside the token, ignoring rand (the token draws any
// randomness). An ECDSA key signs a digest of any hash (CKM_ECDSA) and
// returns the ASN.1 DER signature, as *ecdsa.PrivateKey does. An RSA key
// signs with PSS (CKM_RSA_PKCS_PSS) when opts is *rsa.PSSOptions, with the
// salt as long as the hash unless a length is given, and with PKCS #1 v1.5
// (CKM_RSA_PKCS over the DigestInfo) otherwise; SHA-256, SHA-384 and
// SHA-512 only. Safe for concurrent use: each call runs on its own session.
func (k *tokenKey) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil {
		return nil, fmt.Errorf("%w: no hash function given", ErrInvalidArgument)
	}
	h := opts.HashFunc()
	if h == 0 || !h.Available() || len(digest) != h.Size() {
		return nil, fmt.Errorf("%w: the token key signs digests of a known hash function; got %d bytes for %v", ErrInvalidArgument, len(digest), h)
	}
	mech, msg, err := k.mechanism(digest, opts)
	if err != nil {
		return nil, err
	}
	var raw []byte
	err = k.c.run(func(s pkcs11.SessionHandle, st *state) error {
		if err := k.c.ctx.SignInit(s, mech, st.priv); err != nil {
			return hsmwrap.PKCS11Error("C_SignInit", err)
		}
		out, err := k.c.ctx.Sign(s, msg)
		if err != nil {
			return hsmwrap.PKCS11Error("C_Sign", err)
		}
		raw = out
		return nil
	})
	if err != nil {
		return nil, opError("signing with key "+k.c.cfg.KeyLabel, err)
	}
	if k.typ == pkcs11.CKK_RSA {
		return raw, nil
	}
	return ecdsaDER(raw, (k.bits+7)/8)
}

// mechanism returns the PKCS#11 mechanism and the input to C_Sign.
func (k *tokenKey) mechanism(digest []byte, opts crypto.SignerOpts) ([]*pkcs11.Mechanism, []byte, error) {
	if k.typ == pkcs11.CKK_EC {
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, digest, nil
	}
	h := opts.HashFunc()
	p, ok := rsaHashes[h]
	if !ok {
		return nil, nil, fmt.Errorf("%w: the RSA token key signs SHA-256, SHA-384 or SHA-512 digests, not %v", ErrInvalidArgument, h)
	}
	if pss, isPSS := opts.(*rsa.PSSOptions); isPSS {
		salt := pss.SaltLength
		switch salt {
		case rsa.PSSSaltLengthAuto, rsa.PSSSaltLengthEqualsHash:
			salt = h.Size()
		}
		if salt < 0 {
			return nil, nil, fmt.Errorf("%w: PSS salt length %d", ErrInvalidArgument, pss.SaltLength)
		}
		params := pkcs11.NewPSSParams(p.mech, p.mgf, uint(salt))
		return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_PSS, params)}, digest, nil
	}
	msg := append(append([]byte(nil), p.prefix...), digest...)
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS, nil)}, msg, nil
}

// rsaHash is what RSA signing needs to know of a hash: its PKCS#11
// mechanism and MGF for PSS, and its DigestInfo prefix for PKCS #1 v1.5
// (RFC 8017 §9.2, note 1).
type rsaHash struct {
	mech, mgf uint
	prefix    []byte
}

var rsaHashes = map[crypto.Hash]rsaHash{
	crypto.SHA256: {pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, []byte{0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20}},
	crypto.SHA384: {pkcs11.CKM_SHA384, pkcs11.CKG_MGF1_SHA384, []byte{0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30}},
	crypto.SHA512: {pkcs11.CKM_SHA512, pkcs11.CKG_MGF1_SHA512, []byte{0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40}},
}

// ecdsaDER converts a PKCS#11 ECDSA signature (r ‖ s, each n bytes) to the
// ASN.1 DER SEQUENCE { r, s } that crypto/ecdsa and X.509 use.
func ecdsaDER(raw []byte, n int) ([]byte, error) {
	if len(raw) != 2*n {
		return nil, fmt.Errorf("%w: C_Sign(CKM_ECDSA) returned %d bytes, want %d", ErrUnavailable, len(raw), 2*n)
	}
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(raw[:n]), new(big.Int).SetBytes(raw[n:])})
}

// check signs a probe and verifies it with pub.
func (k *tokenKey) check(pub crypto.PublicKey) error {
	digest := sha256.Sum256([]byte("coffer client key check\x00" + k.c.cfg.KeyLabel))
	var opts crypto.SignerOpts = crypto.SHA256
	if k.typ == pkcs11.CKK_RSA {
		opts = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}
	}
	sig, err := k.Sign(nil, digest[:], opts)
	if err != nil {
		return fmt.Errorf("a test signature with key %q: %w", k.c.cfg.KeyLabel, err)
	}
	if err := verify(pub, digest[:], sig, opts); err != nil {
		return fmt.Errorf("%w: key %q: its signature does not verify under the public key beside it: %w", ErrMismatch, k.c.cfg.KeyLabel, err)
	}
	return nil
}

// verify checks sig over digest with pub.
func verify(pub crypto.PublicKey, digest, sig []byte, opts crypto.SignerOpts) error {
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(p, digest, sig) {
			return errors.New("the token's signature does not verify under the public key")
		}
		return nil
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			return rsa.VerifyPSS(p, opts.HashFunc(), digest, sig, pss)
		}
		return rsa.VerifyPKCS1v15(p, opts.HashFunc(), digest, sig)
	}
	return fmt.Errorf("public key of type %T", pub)
}
