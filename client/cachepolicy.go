package client

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/ciphertext"
)

// cachePolicyRefresh is how often the client asks for its cache policy
// again (sooner when the policy's TTL is shorter), besides the Watch
// stream's policy events.
const cachePolicyRefresh = time.Minute

// cacheGovernor keeps the client cache policy current and applies the
// cluster's cache events (cachewatch.go): the server governs the cache.
type cacheGovernor struct {
	// fetchMu serialises the first fetch of the policy; retryAt is the
	// earliest time (wall clock) of the next one after a failure.
	fetchMu sync.Mutex
	retryAt time.Time
	// confirmed is set once a node gave the policy (not only the file).
	confirmed atomic.Bool
	// interval is cachePolicyRefresh (tests shorten it before first use).
	interval time.Duration

	// startMu guards starting and stopping the background goroutines.
	startMu sync.Mutex
	started atomic.Bool
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}
	// refresh asks the refresh loop for an early fetch.
	refresh chan struct{}

	// fileErr is the last error reading or writing the cache file.
	fileMu  sync.Mutex
	fileErr error
}

// getCachePolicy is CacheService.GetCachePolicy with the client's retry
// policy.
func (c *Client) getCachePolicy(ctx context.Context) (*cofferv1.ClientCachePolicy, error) {
	resp, err := c.GetCachePolicy(ctx, &cofferv1.GetCachePolicyRequest{})
	if err != nil {
		return nil, err
	}
	if resp.GetPolicy() == nil {
		return nil, status.Error(codes.Internal, "GetCachePolicy answered no policy")
	}
	return resp.GetPolicy(), nil
}

// ensureCachePolicy returns the policy in force, fetching it first when it
// is unknown (at most once per refresh interval after a failure: a node
// that predates CacheService answers Unimplemented, and then nothing is
// cached). The fetch is bounded by Config.RequestTimeout.
func (c *Client) ensureCachePolicy(ctx context.Context) *cofferv1.ClientCachePolicy {
	if p := c.cache.currentPolicy(); p != nil {
		return p
	}
	g := &c.gov
	g.fetchMu.Lock()
	defer g.fetchMu.Unlock()
	if p := c.cache.currentPolicy(); p != nil {
		return p
	}
	if time.Now().Before(g.retryAt) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	p, err := c.getCachePolicy(ctx)
	if err != nil {
		if ctx.Err() == nil || status.Code(err) == codes.Unimplemented {
			g.retryAt = time.Now().Add(g.interval)
		}
		return nil
	}
	c.applyCachePolicy(p)
	c.startCacheGovernor()
	return c.cache.currentPolicy()
}

// applyCachePolicy makes p the policy in force (see keyCache.setPolicy) and
// brings the cache file in line: written under the new policy, or removed
// when it no longer allows persisting.
func (c *Client) applyCachePolicy(p *cofferv1.ClientCachePolicy) {
	write, remove := c.cache.setPolicy(p)
	c.gov.confirmed.Store(true)
	if remove {
		c.noteFileErr(c.cache.removeFile())
	}
	if write {
		c.noteFileErr(c.cache.flush())
	}
}

// noteFileErr records a cache file error for CacheFileError.
func (c *Client) noteFileErr(err error) {
	if err == nil {
		return
	}
	c.gov.fileMu.Lock()
	c.gov.fileErr = err
	c.gov.fileMu.Unlock()
}

// CacheFileError returns the last error reading or writing the cache file
// (Config.CacheFile), wrapping ErrCacheFile, or nil. A file that New
// refused (altered, written by another client or certificate, or not a
// cache file) is reported here: the client starts with an empty cache and
// overwrites the file at its next write.
func (c *Client) CacheFileError() error {
	c.gov.fileMu.Lock()
	defer c.gov.fileMu.Unlock()
	return c.gov.fileErr
}

// cachePut caches a key GetKey fetched, when its own cache policy and the
// client policy allow it, and writes the cache file if it persists.
func (c *Client) cachePut(ctx context.Context, resp *cofferv1.GetKeyResponse, lookup cacheMiss) {
	cp := resp.GetKey().GetCachePolicy()
	if !cp.GetCacheable() || cp.GetTtl().AsDuration() <= 0 || cp.GetMaxKeys() == 0 {
		return
	}
	if c.ensureCachePolicy(ctx) == nil {
		return
	}
	if c.cache.put(resp, lookup.epoch) {
		c.noteFileErr(c.cache.flush())
	}
}

// cacheGet returns the cached key gkid for op, or nil and why the cache
// could not serve it (why "" when it does not know the key). When a persisted
// entry needs more uses reserved, they are written to the file first; if
// that fails the entry is given up.
func (c *Client) cacheGet(gkid, op string) (*cofferv1.GetKeyResponse, cacheMiss) {
	if c.closed.Load() {
		return nil, cacheMiss{} // the call fails with ErrClosed
	}
	if !c.gov.started.Load() && c.cache.currentPolicy() != nil {
		c.startCacheGovernor()
	}
	// Each round either serves, or writes a reservation (or finds one
	// written); rounds run out only when many goroutines race for one
	// entry's uses.
	for range 64 {
		resp, miss := c.cache.get(gkid, op)
		if resp != nil || !miss.reserve {
			return resp, miss
		}
		if err := c.cache.flushReservation(gkid); err != nil {
			c.noteFileErr(err)
			miss.why = fmt.Sprintf("cached key %s: its uses could not be reserved in the cache file: %v", gkid, err)
			c.cache.kill(gkid, miss.why)
			return nil, miss
		}
	}
	return nil, cacheMiss{why: fmt.Sprintf("cached key %s: its uses could not be reserved in the cache file", gkid)}
}

// unreachable reports whether a failed call's error says no node could be
// reached (its last attempt failed with Unavailable).
func unreachable(ctx context.Context, err error) bool {
	return ctx.Err() == nil && status.Code(err) == codes.Unavailable
}

// missError is a call's error when no node could be reached and the cache,
// in use (its policy known), could not serve the key either: it says both,
// and matches ErrCacheMiss as well as everything err matches. Any other
// error is returned as is.
func (c *Client) missError(ctx context.Context, gkid string, err error, why string) error {
	if c.cache == nil || !unreachable(ctx, err) || c.cache.currentPolicy() == nil {
		return err
	}
	if why == "" {
		why = fmt.Sprintf("key %s is not cached", gkid)
	}
	return fmt.Errorf("client: key %s could not be fetched (%w), and %w: %s", gkid, err, ErrCacheMiss, why)
}

// encryptOffline encrypts with a cached key when the Encrypt call that
// failed with callErr could reach no node, the client policy allows
// "encrypt", the key is active and its use policy allows encrypting. The
// ciphertext is the service's format (package ciphertext) with the key's
// resource and encCtx as associated data, so any node decrypts it.
// Otherwise it returns callErr: as is when the policy does not allow local
// encryption, explained by missError when the cache could not serve.
func (c *Client) encryptOffline(ctx context.Context, gkid string, plaintext []byte, encCtx map[string]string, callErr error) ([]byte, error) {
	if c.cache == nil || !unreachable(ctx, callErr) {
		return nil, callErr
	}
	if !c.cache.allowed(cacheOpEncrypt) {
		return nil, callErr
	}
	resp, miss := c.cacheGet(gkid, cacheOpEncrypt)
	if resp == nil {
		return nil, c.missError(ctx, gkid, callErr, miss.why)
	}
	defer clear(resp.Material)
	md := resp.GetKey()
	if md.GetState() != cofferv1.KeyState_KEY_STATE_ACTIVE {
		return nil, c.missError(ctx, gkid, callErr, fmt.Sprintf("cached key %s is %s, not active", gkid, md.GetState()))
	}
	if err := CheckUse(md, cacheOpEncrypt, c.now()); err != nil {
		return nil, c.missError(ctx, gkid, callErr, err.Error())
	}
	ct, err := ciphertext.Seal(resp.GetMaterial(), ciphertext.Header{GKID: gkid, KeyVersion: resp.GetVersion()}, md.GetResource(), encCtx, plaintext)
	if err != nil {
		return nil, fmt.Errorf("client: encrypt with cached key %s: %w", gkid, err)
	}
	return ct, nil
}

// decryptOffline decrypts with a cached key under the same conditions as
// encryptOffline ("decrypt" allowed, the key not destroyed or compromised,
// its use policy allowing decrypting), when the cached version is the one
// the ciphertext names.
func (c *Client) decryptOffline(ctx context.Context, ct []byte, encCtx map[string]string, callErr error) ([]byte, error) {
	if c.cache == nil || !unreachable(ctx, callErr) {
		return nil, callErr
	}
	h, err := ciphertext.ParseHeader(ct)
	if err != nil || !c.cache.allowed(cacheOpDecrypt) {
		return nil, callErr
	}
	resp, miss := c.cacheGet(h.GKID, cacheOpDecrypt)
	if resp == nil {
		return nil, c.missError(ctx, h.GKID, callErr, miss.why)
	}
	defer clear(resp.Material)
	md := resp.GetKey()
	switch st := md.GetState(); {
	case st != cofferv1.KeyState_KEY_STATE_ACTIVE && st != cofferv1.KeyState_KEY_STATE_DEACTIVATED, md.GetCompromised():
		return nil, c.missError(ctx, h.GKID, callErr, fmt.Sprintf("cached key %s is %s (compromised: %v)", h.GKID, st, md.GetCompromised()))
	}
	if resp.GetVersion() != h.KeyVersion {
		return nil, c.missError(ctx, h.GKID, callErr, fmt.Sprintf("the cache holds version %d of key %s, the ciphertext is under version %d", resp.GetVersion(), h.GKID, h.KeyVersion))
	}
	if err := CheckUse(md, cacheOpDecrypt, c.now()); err != nil {
		return nil, c.missError(ctx, h.GKID, callErr, err.Error())
	}
	pt, err := ciphertext.Open(resp.GetMaterial(), md.GetResource(), encCtx, ct)
	if err != nil {
		return nil, fmt.Errorf("client: decrypt with cached key %s: %w", h.GKID, err)
	}
	return pt, nil
}
