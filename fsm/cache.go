package fsm

import (
	"sync"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// keyCacheSize bounds the decoded key records kept in memory (a record is
// well under 2 KiB, escrow copies included).
const keyCacheSize = 16384

// recordCache keeps decoded policy and cluster records, which every create
// and many reads need and which change rarely. A batch that writes a policy
// resets it after the commit; a reader that decoded a record before a reset
// does not store it afterwards (the generation check), so the cache never
// holds a record older than committed state.
//
// It also keeps recently read key records. A key record changes only with
// its state (SET_KEY_STATE), whose batch puts the new record in the cache
// after the commit (replaceKey), and a restore, which replaces the whole
// state, drops them all. Every read of a key (the serving node's, and
// Apply's for a decided read) would otherwise decode it from Pebble; the
// key's integrity is still checked by the keystore at every use.
type recordCache struct {
	cluster atomic.Pointer[cofferv1.ClusterInfo]

	mu       sync.RWMutex
	gen      uint64
	policies map[string]*cofferv1.PolicyRecord

	keyGen atomic.Uint64
	keys   *lru.Cache[string, *cofferv1.KeyRecord]

	// Encryption counts (encryptions.go), kept the same way: Apply puts
	// every count it changed after the commit (setCount), a reader that
	// read one from Pebble before a change or a restore does not keep it.
	countGen atomic.Uint64
	counts   *lru.Cache[encKey, uint64]
}

// countCacheSize bounds the encryption counts kept in memory.
const countCacheSize = 65536

func newRecordCache() *recordCache {
	keys, err := lru.New[string, *cofferv1.KeyRecord](keyCacheSize)
	if err != nil {
		panic(err) // only for a size below 1
	}
	counts, err := lru.New[encKey, uint64](countCacheSize)
	if err != nil {
		panic(err)
	}
	return &recordCache{keys: keys, counts: counts}
}

func (c *recordCache) count(k encKey) (uint64, bool) { return c.counts.Get(k) }

// countGeneration is read before a count is read from Pebble and passed to
// putCount.
func (c *recordCache) countGeneration() uint64 { return c.countGen.Load() }

// putCount keeps n, read from Pebble for k, unless a count changed or the
// state was replaced since gen.
func (c *recordCache) putCount(gen uint64, k encKey, n uint64) {
	c.counts.Add(k, n)
	if c.countGen.Load() != gen {
		c.counts.Remove(k)
	}
}

// setCount keeps n, just committed for k.
func (c *recordCache) setCount(k encKey, n uint64) {
	c.countGen.Add(1)
	c.counts.Add(k, n)
}

func (c *recordCache) key(gkid string) (*cofferv1.KeyRecord, bool) {
	return c.keys.Get(gkid)
}

// keyGeneration is read before a key is decoded and passed to putKey, which
// drops the record if the state was replaced in between.
func (c *recordCache) keyGeneration() uint64 { return c.keyGen.Load() }

// putKey keeps rec, read under gkid. A record that names another key (a
// swapped record) is not kept: its reader refuses it.
func (c *recordCache) putKey(gen uint64, gkid string, rec *cofferv1.KeyRecord) {
	if rec.GetGkid() != gkid {
		return
	}
	c.keys.Add(gkid, rec)
	if c.keyGen.Load() != gen {
		c.keys.Remove(gkid)
	}
}

// replaceKey keeps rec, just committed under gkid, in place of the record
// cached before. Readers that decoded the old record before this call do
// not store it afterwards (the generation moves on).
func (c *recordCache) replaceKey(gkid string, rec *cofferv1.KeyRecord) {
	c.keyGen.Add(1)
	c.keys.Add(gkid, rec)
}

// resetKeys drops every key record and encryption count: the state is
// being replaced.
func (c *recordCache) resetKeys() {
	c.keyGen.Add(1)
	c.keys.Purge()
	c.countGen.Add(1)
	c.counts.Purge()
}

func (c *recordCache) policy(name string) (*cofferv1.PolicyRecord, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	p, ok := c.policies[name]
	return p, ok
}

func (c *recordCache) generation() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen
}

func (c *recordCache) putPolicy(gen uint64, name string, p *cofferv1.PolicyRecord) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.policies == nil {
		c.policies = map[string]*cofferv1.PolicyRecord{}
	}
	c.policies[name] = p
}

func (c *recordCache) reset() {
	c.mu.Lock()
	c.gen++
	c.policies = nil
	c.mu.Unlock()
	c.cluster.Store(nil)
}
