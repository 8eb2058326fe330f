package client

import (
	"container/list"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// keyCache holds keys the server allowed clients to cache (the key's cache
// policy), for the time and up to the number the policy states. Material is
// kept encrypted and integrity-protected: AES-256-GCM under a random key that
// lives only in this process's memory, with the GKID and the key's metadata
// as associated data, so an entry cannot be altered or moved to another GKID
// without Get noticing. An entry is dropped at the end of its TTL or of the
// key's use-policy validity, whichever comes first.
//
// A cached key is served without asking a node, so its use is not audited
// again: that is what the server's cache policy permits. Keys whose policy is
// not cacheable (the default) are never cached.
type keyCache struct {
	mu      sync.Mutex
	aead    cipher.AEAD
	entries map[string]*list.Element // by gkid
	lru     *list.List               // front = most recently used
	now     func() time.Time
}

type cacheEntry struct {
	gkid    string
	sealed  []byte // nonce || ciphertext || tag
	md      []byte // deterministic encoding of the metadata
	expires time.Time
}

func newKeyCache(now func() time.Time) (*keyCache, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	defer clear(k)
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &keyCache{aead: aead, entries: map[string]*list.Element{}, lru: list.New(), now: now}, nil
}

func cacheAAD(gkid string, md []byte) []byte {
	return append(append([]byte("coffer-client-cache-v1\x00"+gkid+"\x00"), md...), 0)
}

// put caches a key if its cache policy allows it.
func (c *keyCache) put(resp *cofferv1.GetKeyResponse) {
	md := resp.GetKey()
	cp := md.GetCachePolicy()
	if !cp.GetCacheable() || cp.GetTtl().AsDuration() <= 0 || cp.GetMaxKeys() == 0 || md.GetGkid() == "" {
		return
	}
	now := c.now()
	expires := now.Add(cp.GetTtl().AsDuration())
	if na := md.GetUsePolicy().GetNotAfter(); na != nil && na.AsTime().Before(expires) {
		expires = na.AsTime()
	}
	if !expires.After(now) {
		return
	}
	mdBytes, err := proto.MarshalOptions{Deterministic: true}.Marshal(md)
	if err != nil {
		return
	}
	nonce := make([]byte, c.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return
	}
	sealed := c.aead.Seal(nonce, nonce, resp.GetMaterial(), cacheAAD(md.GetGkid(), mdBytes))
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[md.GetGkid()]; ok {
		c.lru.Remove(el)
		delete(c.entries, md.GetGkid())
	}
	for c.lru.Len() >= int(cp.GetMaxKeys()) {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.entries, oldest.Value.(*cacheEntry).gkid)
	}
	c.entries[md.GetGkid()] = c.lru.PushFront(&cacheEntry{gkid: md.GetGkid(), sealed: sealed, md: mdBytes, expires: expires})
}

// get returns a cached key, or nil. A damaged entry is dropped and reported.
func (c *keyCache) get(gkid string) (*cofferv1.GetKeyResponse, error) {
	c.mu.Lock()
	el, ok := c.entries[gkid]
	if !ok {
		c.mu.Unlock()
		return nil, nil
	}
	e := el.Value.(*cacheEntry)
	if !c.now().Before(e.expires) {
		c.lru.Remove(el)
		delete(c.entries, gkid)
		c.mu.Unlock()
		return nil, nil
	}
	c.lru.MoveToFront(el)
	sealed, mdBytes := e.sealed, e.md
	c.mu.Unlock()

	ns := c.aead.NonceSize()
	if len(sealed) < ns {
		c.drop(gkid)
		return nil, fmt.Errorf("client: cached key %s is damaged", gkid)
	}
	material, err := c.aead.Open(nil, sealed[:ns], sealed[ns:], cacheAAD(gkid, mdBytes))
	if err != nil {
		c.drop(gkid)
		return nil, fmt.Errorf("client: cached key %s failed its integrity check", gkid)
	}
	var md cofferv1.KeyMetadata
	if err := proto.Unmarshal(mdBytes, &md); err != nil {
		c.drop(gkid)
		return nil, fmt.Errorf("client: cached key %s is damaged", gkid)
	}
	return &cofferv1.GetKeyResponse{Key: &md, Material: material}, nil
}

func (c *keyCache) drop(gkid string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[gkid]; ok {
		c.lru.Remove(el)
		delete(c.entries, gkid)
	}
}

// Forget drops every cached key (for example after a security event).
func (c *Client) Forget() {
	if c.cache == nil {
		return
	}
	c.cache.mu.Lock()
	defer c.cache.mu.Unlock()
	c.cache.entries = map[string]*list.Element{}
	c.cache.lru.Init()
}
