package client

import (
	"container/list"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// Limits of the key cache, whatever the policies allow.
const (
	// MaxCacheEntries bounds the keys cached at once.
	MaxCacheEntries = 1 << 16
	// A persisted cache reserves the uses of an entry with a max_uses
	// bound in its file in blocks (reserveBlock): an eighth of max_uses,
	// at least cacheReserveMin and at most cacheReserveMax.
	cacheReserveMin = 16
	cacheReserveMax = 4096
)

// reserveBlock is how many uses of an entry bounded by maxUses are
// reserved in the cache file at a time: one file write per block of hits,
// and at most a block lost when the process ends.
func reserveBlock(maxUses uint32) uint32 {
	return min(max(maxUses/8, cacheReserveMin), cacheReserveMax)
}

// Operations a ClientCachePolicy allows a cached key to serve.
const (
	cacheOpGet     = "get"
	cacheOpEncrypt = "encrypt"
	cacheOpDecrypt = "decrypt"
)

// keyCache holds keys that both the key's own cache policy (KeyCachePolicy,
// in its metadata) and this client's cache policy (ClientCachePolicy, from
// the cluster's CacheService) allow the client to cache, for the shorter of
// the two TTLs (and never past the key's use-policy not_after), within the
// smaller of the two entry bounds, and for at most max_uses hits per entry.
//
// Material is kept encrypted and integrity-protected: AES-256-GCM under a
// random key that lives only in this process's memory, with the GKID, the
// version and the key's metadata as associated data, so an entry cannot be
// altered or moved to another GKID without get noticing. When a cache file
// is in use (file != nil and the policy allows persisting), every change
// that must survive a restart is written to it before it takes effect
// (cachefile.go).
//
// A cached key is served without asking a node, so its use is not audited
// again: that is what the server's policies permit. Nothing is cached while
// the client policy is unknown.
type keyCache struct {
	mu      sync.Mutex
	aead    cipher.AEAD
	entries map[string]*list.Element // by gkid
	lru     *list.List               // front = most recently used
	now     func() time.Time
	// policy is the client policy in force (nil: unknown; nothing is
	// cached). Never modified once stored.
	policy *cofferv1.ClientCachePolicy
	// ops are the operations policy allows.
	allowGet, allowEncrypt, allowDecrypt bool
	// watchSeq is the last cache event seq applied (persisted, so that a
	// restarted client resumes its Watch after it).
	watchSeq uint64
	// epoch counts drops and policy changes: a key fetched before one is
	// not cached after it (its answer may predate the drop).
	epoch uint64

	// file is the cache file, nil without Config.CacheFile.
	file *cacheFile
	// fileMu serialises writes of the file (taken before mu).
	fileMu sync.Mutex
}

type cacheEntry struct {
	gkid    string
	version uint32
	sealed  []byte // nonce || ciphertext || tag, under the process key
	md      []byte // deterministic encoding of the metadata
	// fileSealed is the material sealed for the cache file (nil without
	// one).
	fileSealed []byte
	cachedAt   time.Time
	expires    time.Time
	// maxUses bounds the hits (0: no bound but expires); uses counts them,
	// those served before a restart included.
	maxUses, uses uint32
	// reserved is the uses asked to be written to the file; durable, the
	// uses known written. A persisted entry serves a hit only within
	// durable.
	reserved, durable uint32
	// generation is the cluster cache generation the entry was cached
	// under.
	generation uint64
	// dead, when set, says why the entry can no longer serve (expired,
	// exhausted): kept, without material, so that a failed fetch can say
	// why the cache could not serve the key.
	dead string
}

func newKeyCache(now func() time.Time) (*keyCache, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	defer clear(k)
	aead, err := newGCM(k)
	if err != nil {
		return nil, err
	}
	return &keyCache{aead: aead, entries: map[string]*list.Element{}, lru: list.New(), now: now}, nil
}

func newGCM(k []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func cacheAAD(gkid string, version uint32, md []byte) []byte {
	b := append([]byte("coffer-client-cache-v2\x00"+gkid+"\x00"), 0, 0, 0, 0)
	binary.BigEndian.PutUint32(b[len(b)-4:], version)
	return append(append(b, md...), 0)
}

func sealWith(aead cipher.AEAD, plaintext, aad []byte) ([]byte, error) {
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plaintext, aad), nil
}

func openWith(aead cipher.AEAD, sealed, aad []byte) ([]byte, error) {
	ns := aead.NonceSize()
	if len(sealed) < ns+aead.Overhead() {
		return nil, fmt.Errorf("too short")
	}
	return aead.Open(nil, sealed[:ns], sealed[ns:], aad)
}

// persisting reports whether changes go to the file. Callers hold mu.
func (c *keyCache) persisting() bool {
	return c.file != nil && c.policy.GetPersist()
}

// allows reports whether the policy lets a cached key serve op. Callers hold
// mu.
func (c *keyCache) allows(op string) bool {
	switch op {
	case cacheOpGet:
		return c.allowGet
	case cacheOpEncrypt:
		return c.allowEncrypt
	case cacheOpDecrypt:
		return c.allowDecrypt
	}
	return false
}

// allowed reports whether the policy in force lets a cached key serve op.
func (c *keyCache) allowed(op string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.allows(op)
}

// limit is the most entries the cache holds under the client policy.
// Callers hold mu.
func (c *keyCache) limit() int {
	return int(min(c.policy.GetMaxEntries(), MaxCacheEntries))
}

// put caches a key if its own cache policy and the client policy allow it,
// and reports whether the file must be written (it did, and persists). epoch is the
// cache's epoch when the fetch began (cacheMiss.epoch): when a key was
// dropped or the policy changed since, the answer may predate it and is
// not cached.
func (c *keyCache) put(resp *cofferv1.GetKeyResponse, epoch uint64) bool {
	md := resp.GetKey()
	cp := md.GetCachePolicy()
	if !cp.GetCacheable() || cp.GetTtl().AsDuration() <= 0 || cp.GetMaxKeys() == 0 || md.GetGkid() == "" || len(resp.GetMaterial()) == 0 {
		return false
	}
	mdBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(md)
	if err != nil {
		return false
	}
	gkid, version := md.GetGkid(), resp.GetVersion()
	sealed, err := sealWith(c.aead, resp.GetMaterial(), cacheAAD(gkid, version, mdBytes))
	if err != nil {
		return false
	}
	var fileSealed []byte
	if c.file != nil {
		if fileSealed, err = sealWith(c.file.aead, resp.GetMaterial(), fileEntryAAD(gkid, version, mdBytes)); err != nil {
			return false
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	pol := c.policy
	if c.epoch != epoch || pol == nil || !(c.allowGet || c.allowEncrypt || c.allowDecrypt) {
		return false
	}
	ttl := min(cp.GetTtl().AsDuration(), pol.GetTtl().AsDuration())
	bound := min(int(cp.GetMaxKeys()), c.limit())
	if ttl <= 0 || bound <= 0 {
		return false
	}
	now := c.now()
	expires := now.Add(ttl)
	if na := md.GetUsePolicy().GetNotAfter(); na != nil && na.AsTime().Before(expires) {
		expires = na.AsTime()
	}
	if !expires.After(now) {
		return false
	}
	c.removeLocked(gkid)
	c.shrinkLocked(bound - 1)
	c.entries[gkid] = c.lru.PushFront(&cacheEntry{gkid: gkid, version: version, sealed: sealed, md: mdBytes,
		fileSealed: fileSealed, cachedAt: now, expires: expires, maxUses: pol.GetMaxUses(), generation: pol.GetGeneration()})
	return c.persisting()
}

// shrinkLocked evicts entries until at most n are left: dead ones first,
// then the least recently used.
func (c *keyCache) shrinkLocked(n int) {
	n = max(n, 0)
	if c.lru.Len() <= n {
		return
	}
	for el := c.lru.Back(); el != nil && c.lru.Len() > n; {
		prev := el.Prev()
		if e := el.Value.(*cacheEntry); e.dead != "" {
			c.lru.Remove(el)
			delete(c.entries, e.gkid)
		}
		el = prev
	}
	for c.lru.Len() > n {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.entries, oldest.Value.(*cacheEntry).gkid)
	}
}

func (c *keyCache) removeLocked(gkid string) {
	if el, ok := c.entries[gkid]; ok {
		c.lru.Remove(el)
		delete(c.entries, gkid)
	}
}

// killLocked makes e unusable, keeping why.
func killLocked(e *cacheEntry, why string) {
	e.sealed, e.fileSealed, e.dead = nil, nil, why
}

// cacheMiss says why the cache could not serve a key; reserve is set when
// the file must be written before the entry serves (a reservation). epoch
// is the cache's epoch at the lookup: a key fetched after it is cached
// only if nothing was dropped meanwhile (see put).
type cacheMiss struct {
	why     string
	reserve bool
	epoch   uint64
}

// get returns a cached key for op, or nil and why the cache could not
// serve it ("" when it has never heard of the key). A damaged entry is
// dropped. A hit counts as one use of the entry. When the entry needs more
// uses reserved in the file first, get reports reserve: the caller writes
// the file (flush) and asks again.
func (c *keyCache) get(gkid, op string) (*cofferv1.GetKeyResponse, cacheMiss) {
	c.mu.Lock()
	epoch := c.epoch
	if c.policy == nil {
		c.mu.Unlock()
		return nil, cacheMiss{epoch: epoch}
	}
	el, ok := c.entries[gkid]
	if !ok {
		c.mu.Unlock()
		return nil, cacheMiss{epoch: epoch}
	}
	e := el.Value.(*cacheEntry)
	if e.dead != "" {
		c.mu.Unlock()
		return nil, cacheMiss{epoch: epoch, why: e.dead}
	}
	if !c.allows(op) {
		c.mu.Unlock()
		return nil, cacheMiss{epoch: epoch, why: fmt.Sprintf("the client cache policy does not allow cached keys for %q (allowed: %v)", op, c.policy.GetAllowedOperations())}
	}
	if now := c.now(); !now.Before(e.expires) {
		why := fmt.Sprintf("cached key %s expired at %s", gkid, e.expires.UTC().Format(time.RFC3339))
		killLocked(e, why)
		c.mu.Unlock()
		return nil, cacheMiss{epoch: epoch, why: why}
	}
	if e.maxUses > 0 && e.uses >= e.maxUses {
		why := fmt.Sprintf("cached key %s has served its %d uses (max_uses)", gkid, e.maxUses)
		killLocked(e, why)
		c.mu.Unlock()
		return nil, cacheMiss{epoch: epoch, why: why}
	}
	if e.maxUses > 0 && c.persisting() && e.uses >= e.durable {
		if e.reserved <= e.uses {
			e.reserved = e.uses + min(e.maxUses-e.uses, reserveBlock(e.maxUses))
		}
		c.mu.Unlock()
		return nil, cacheMiss{epoch: epoch, why: fmt.Sprintf("cached key %s: uses not reserved in the cache file", gkid), reserve: true}
	}
	e.uses++
	c.lru.MoveToFront(el)
	sealed, mdBytes, version := e.sealed, e.md, e.version
	c.mu.Unlock()

	material, err := openWith(c.aead, sealed, cacheAAD(gkid, version, mdBytes))
	if err != nil {
		c.discard(gkid, el)
		return nil, cacheMiss{epoch: epoch, why: fmt.Sprintf("cached key %s failed its integrity check and was dropped", gkid)}
	}
	var md cofferv1.KeyMetadata
	if err := proto.Unmarshal(mdBytes, &md); err != nil {
		clear(material)
		c.discard(gkid, el)
		return nil, cacheMiss{epoch: epoch, why: fmt.Sprintf("cached key %s is damaged and was dropped", gkid)}
	}
	return &cofferv1.GetKeyResponse{Key: &md, Material: material, Version: version}, cacheMiss{}
}

// kill makes gkid's entry unusable (a reservation that could not be
// written).
func (c *keyCache) kill(gkid, why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[gkid]; ok {
		killLocked(el.Value.(*cacheEntry), why)
	}
}

// discard removes a damaged entry, el, if it is still gkid's (unlike drop,
// a fetch in flight may cache the key again).
func (c *keyCache) discard(gkid string, el *list.Element) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[gkid] == el {
		c.removeLocked(gkid)
	}
}

// drop removes gkid's entry (the cluster said so) and reports whether the file needs writing.
func (c *keyCache) drop(gkid string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.entries[gkid]
	c.removeLocked(gkid)
	c.epoch++
	return ok && c.persisting()
}

// dropAll removes every entry.
func (c *keyCache) dropAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries = map[string]*list.Element{}
	c.lru.Init()
	c.epoch++
}

// setPolicy makes p the policy in force and drops what it no longer allows:
// everything when its generation is higher than an entry's or its TTL is
// zero; entries past its TTL counted from when they were cached; entries
// over its max_uses; the least recently used beyond max_entries. A looser
// policy does not lengthen what is already cached. It reports whether the
// file must be written, and whether it must be removed (persist turned
// off).
func (c *keyCache) setPolicy(p *cofferv1.ClientCachePolicy) (write, remove bool) {
	p = proto.CloneOf(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	wasPersisting := c.persisting()
	if c.policy != nil && proto.Equal(c.policy, p) {
		return false, false
	}
	if c.policy != nil {
		c.epoch++
	}
	c.policy = p
	ops := p.GetAllowedOperations()
	c.allowGet, c.allowEncrypt, c.allowDecrypt = slices.Contains(ops, cacheOpGet), slices.Contains(ops, cacheOpEncrypt), slices.Contains(ops, cacheOpDecrypt)
	ttl := p.GetTtl().AsDuration()
	now := c.now()
	for gkid, el := range c.entries {
		e := el.Value.(*cacheEntry)
		switch {
		case ttl <= 0 || e.generation < p.GetGeneration() || !(c.allowGet || c.allowEncrypt || c.allowDecrypt):
			c.removeLocked(gkid)
			continue
		}
		if exp := e.cachedAt.Add(ttl); exp.Before(e.expires) {
			e.expires = exp
		}
		if mu := p.GetMaxUses(); mu > 0 && (e.maxUses == 0 || mu < e.maxUses) {
			e.maxUses = mu
			e.reserved, e.durable = min(e.reserved, mu), min(e.durable, mu)
		}
		if e.dead == "" && (!now.Before(e.expires) || (e.maxUses > 0 && e.uses >= e.maxUses)) {
			c.removeLocked(gkid)
		}
	}
	c.shrinkLocked(c.limit())
	return c.persisting(), wasPersisting && !c.persisting()
}

// currentPolicy returns the policy in force (nil: unknown). It must not be
// modified.
func (c *keyCache) currentPolicy() *cofferv1.ClientCachePolicy {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.policy
}

// CachePolicy returns a copy of the client cache policy in force: the one
// the cluster last gave (GetCachePolicy, or a Watch event), or the one
// saved in the cache file while no node has answered yet. It returns nil
// when the policy is unknown (nothing is cached then) or the cache is
// disabled.
func (c *Client) CachePolicy() *cofferv1.ClientCachePolicy {
	if c.cache == nil {
		return nil
	}
	if p := c.cache.currentPolicy(); p != nil {
		return proto.CloneOf(p)
	}
	return nil
}

// Forget drops every cached key (for example after a security event) and
// removes the cache file, if there is one.
func (c *Client) Forget() {
	if c.cache == nil {
		return
	}
	// Under fileMu, so that no write that began before the drop puts the
	// keys back in the file after it is removed.
	c.cache.fileMu.Lock()
	defer c.cache.fileMu.Unlock()
	c.cache.dropAll()
	if c.cache.file != nil {
		_ = c.cache.file.remove()
	}
}
