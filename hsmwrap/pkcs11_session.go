package hsmwrap

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/miekg/pkcs11"
)

// Session management of the PKCS#11 keystore: the token connection (an
// epoch), the pool of logged-in sessions, and re-establishing both after a
// loss. pkcs11.go holds the Keystore methods and the primitives; apart from
// OpenPKCS11 (which establishes the first epoch) and Close (which tears the
// last one down), they reach the token only through run, and never open,
// close or log in sessions themselves.
//
// The contract:
//
//   - run(fn) calls fn with the current epoch and a pooled session that is
//     open and logged in. While fn runs, the epoch cannot change: fn holds
//     opMu's read lock from begin until settle has put the session back, so
//     object handles of one epoch are never used in another.
//   - If fn fails because its session, the login or the token was lost
//     (classLost), run re-establishes the epoch and calls fn once more, with
//     a new epoch and session. fn must therefore leave nothing behind when it
//     fails (every caller only reads, or destroys what it creates). Any other
//     failure, and a second loss, is returned as it is.
//   - A session goes back to the pool after success, after an integrity
//     failure (an ambiguous failure of a verifying call counts as one when
//     the session is found alive and logged in) and after ErrKEKNotLoaded;
//     after any other failure it is closed and its pool slot left empty (it
//     may hold a half-finished operation), and the next acquire opens a new
//     one. The pool holds poolSize slots; acquire
//     blocks while all are in use.
//   - Re-establishing (reestablish, establish) runs under opMu's write lock,
//     so with every session back in the pool: it closes them all and the
//     object session (destroying the KEK session objects), finds the token,
//     logs in, checks that the master key is the one found at open (its CMAC
//     of a zero block), and reloads every KEK from the blob kept for it. It
//     is all or nothing. Concurrent callers that saw the same failed epoch
//     re-establish it once; after a failed attempt the next one waits
//     recoverBackoff, and until then operations fail at once with the last
//     error, which wraps ErrUnavailable.
//   - Health follows from the outcomes: setHealth(nil) after any operation
//     succeeds, the error after a device failure, and ErrClosed, once set by
//     Close, is final.
//
// Lock order: opMu (read or write), then objMu, then mu.

// healthState is the cached result Healthy reports.
type healthState struct{ err error }

// epoch is one established connection to the token: the slot it was found
// in, the master key's handle, and the session that owns the KEK session
// objects (they live as long as it does).
type epoch struct {
	gen    uint64
	slot   uint
	master pkcs11.ObjectHandle
	obj    pkcs11.SessionHandle
}

func (p *PKCS11) setHealth(err error) {
	for {
		cur := p.health.Load()
		switch {
		case cur != nil && cur.err == ErrClosed:
			return // final; a call that finished just before Close must not undo it
		case err == nil && cur == nil:
			return // the common case: healthy and staying so, no write
		}
		var next *healthState
		if err != nil {
			next = &healthState{err: err}
		}
		if p.health.CompareAndSwap(cur, next) {
			return
		}
	}
}

// run runs fn with the current epoch and a pooled session. If fn fails
// because the session, the login or the token was lost, the keystore
// re-establishes them and runs fn once more; fn must therefore have no
// effect that a failed first run leaves behind (every caller only reads, or
// creates what it destroys).
func (p *PKCS11) run(fn func(*epoch, pkcs11.SessionHandle) error) error {
	for attempt := 0; ; attempt++ {
		ep, err := p.begin()
		if err != nil {
			return err
		}
		s, err := p.acquire(ep)
		if err == nil {
			err = p.settle(s, fn(ep, s))
		}
		p.opMu.RUnlock()

		class, isP11 := errClassOf(err)
		switch {
		case err == nil:
			p.setHealth(nil)
			return nil
		case !isP11 || class == classIntegrity || class == classAmbiguous:
			if errors.Is(err, ErrUnavailable) {
				p.setHealth(err)
			}
			return err
		case class != classLost || attempt > 0:
			p.setHealth(err)
			return err
		}
		if rerr := p.reestablish(ep.gen); rerr != nil {
			return rerr
		}
	}
}

// begin read-locks opMu and returns the current epoch, re-establishing a
// lost token first if the backoff allows. On success the caller holds the
// read lock and must release it.
func (p *PKCS11) begin() (*epoch, error) {
	for range 2 {
		p.opMu.RLock()
		if p.closed {
			p.opMu.RUnlock()
			return nil, ErrClosed
		}
		if p.ep != nil {
			return p.ep, nil
		}
		gen := p.gen
		p.opMu.RUnlock()
		if err := p.reestablish(gen); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: pkcs11: token lost again while re-establishing", ErrUnavailable)
}

// acquire takes a session from the pool, opening one if the slot is empty.
// It blocks while all poolSize sessions are in use.
func (p *PKCS11) acquire(ep *epoch) (pkcs11.SessionHandle, error) {
	s := <-p.slots
	if s != 0 {
		return s, nil
	}
	// The object session keeps the application logged in, so a new
	// session starts logged in.
	s, err := p.ctx.OpenSession(ep.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		p.slots <- 0
		return 0, mapRV("C_OpenSession", callPlain, err)
	}
	return s, nil
}

// settle returns the session to the pool and gives err its final meaning. A
// generic failure of a verifying call is an integrity failure if the
// session is still alive and logged in, else the session was lost. A
// session that failed for any reason other than integrity is closed rather
// than reused: it may hold a half-finished operation.
func (p *PKCS11) settle(s pkcs11.SessionHandle, err error) error {
	if err == nil {
		p.slots <- s
		return nil
	}
	class, isP11 := errClassOf(err)
	if isP11 && class == classAmbiguous {
		info, perr := p.ctx.GetSessionInfo(s)
		switch {
		case perr != nil:
			err = mapRV("C_GetSessionInfo", callPlain, perr)
			class = classLost
		case info.State != pkcs11.CKS_RW_USER_FUNCTIONS && info.State != pkcs11.CKS_RO_USER_FUNCTIONS:
			err = mapRV("session check", callPlain, pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN))
			class = classLost
		}
	}
	if isP11 && (class == classIntegrity || class == classAmbiguous) || errors.Is(err, ErrKEKNotLoaded) || errors.Is(err, ErrIntegrity) {
		p.slots <- s
		return err
	}
	p.ctx.CloseSession(s)
	p.slots <- 0
	return err
}

// reestablish replaces the epoch that failed (generation seen) with a new
// one, unless another caller already has, or the last attempt failed less
// than recoverBackoff ago.
func (p *PKCS11) reestablish(seen uint64) error {
	p.opMu.Lock()
	defer p.opMu.Unlock()
	switch {
	case p.closed:
		return ErrClosed
	case p.ep != nil && p.ep.gen != seen:
		return nil // already re-established
	case p.ep == nil && p.broken != nil && time.Since(p.lastAttempt) < p.recoverBackoff:
		return p.broken
	}
	p.teardown()
	p.gen++
	p.lastAttempt = time.Now()
	ep, err := p.establish(p.gen)
	if err != nil {
		p.broken = fmt.Errorf("%w: pkcs11: re-establishing %s: %w", ErrUnavailable, p.cfg.token(), err)
		p.setHealth(p.broken)
		return p.broken
	}
	p.ep, p.broken = ep, nil
	p.setHealth(nil)
	return nil
}

// teardown closes every pooled session and the object session (destroying
// the KEK session objects) and forgets the epoch. The caller holds opMu's
// write lock, so no operation holds a session.
func (p *PKCS11) teardown() {
	n := 0
drain:
	for {
		select {
		case s := <-p.slots:
			if s != 0 {
				p.ctx.CloseSession(s) // best effort: it may be gone already
			}
			n++
		default:
			break drain
		}
	}
	for range n {
		p.slots <- 0
	}
	if p.ep != nil {
		p.objMu.Lock()
		p.ctx.CloseSession(p.ep.obj)
		p.objMu.Unlock()
		p.ep = nil
	}
	p.mu.Lock()
	clear(p.keks)
	p.mu.Unlock()
}

// establish finds the token, opens the object session, logs in, finds and
// checks the master key, and reloads every KEK blob kept so far. It is
// all-or-nothing: on failure nothing stays open. Called with opMu's write
// lock held (or before the keystore is shared).
func (p *PKCS11) establish(gen uint64) (*epoch, error) {
	slot, err := findSlot(p.ctx, p.cfg)
	if err != nil {
		return nil, err
	}
	obj, err := p.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, mapRV("C_OpenSession", callPlain, err)
	}
	ep := &epoch{gen: gen, slot: slot, obj: obj}
	ok := false
	defer func() {
		if !ok {
			p.ctx.CloseSession(obj)
		}
	}()
	if err := login(p.ctx, obj, pkcs11.CKU_USER, p.cfg.PINFile, p.cfg.PINEnv, "user PIN"); err != nil {
		return nil, err
	}
	if ep.master, err = findMasterKey(p.ctx, obj, p.cfg.MasterKeyLabel); err != nil {
		return nil, err
	}
	check, err := p.cmac(obj, ep.master, make([]byte, 16))
	if err != nil {
		return nil, err
	}
	if p.check == nil {
		p.check = check
	} else if subtle.ConstantTimeCompare(check, p.check) != 1 {
		return nil, fmt.Errorf("%w: pkcs11: the master key labelled %q is not the one this keystore opened with", ErrUnavailable, p.cfg.MasterKeyLabel)
	}
	p.mu.RLock()
	blobs := maps.Clone(p.blobs)
	p.mu.RUnlock()
	keks := make(map[KEKID]pkcs11.ObjectHandle, len(blobs))
	for id, blob := range blobs {
		if err := p.verifyBinding(obj, ep.master, id, blob); err != nil {
			return nil, fmt.Errorf("reloading kek %s: %w", id, err)
		}
		h, err := p.unwrapKEK(obj, ep.master, blob)
		if err != nil {
			return nil, fmt.Errorf("reloading kek %s: %w", id, err)
		}
		keks[id] = h
	}
	p.mu.Lock()
	p.keks = keks
	p.mu.Unlock()
	ok = true
	return ep, nil
}

// sessionUsable tells a refused input (expected in the self-test) from a
// session that died under it: it fails with a classLost error if s is not a
// live, logged-in session.
func (p *PKCS11) sessionUsable(s pkcs11.SessionHandle) error {
	info, err := p.ctx.GetSessionInfo(s)
	if err != nil {
		return mapRV("C_GetSessionInfo", callPlain, err)
	}
	if info.State != pkcs11.CKS_RW_USER_FUNCTIONS && info.State != pkcs11.CKS_RO_USER_FUNCTIONS {
		return mapRV("session check", callPlain, pkcs11.Error(pkcs11.CKR_USER_NOT_LOGGED_IN))
	}
	return nil
}
