package fsm

import (
	"sync"
	"sync/atomic"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// recordCache keeps decoded policy and cluster records, which every create
// and many reads need and which change rarely. A batch that writes a policy
// resets it after the commit; a reader that decoded a record before a reset
// does not store it afterwards (the generation check), so the cache never
// holds a record older than committed state.
type recordCache struct {
	cluster atomic.Pointer[cofferv1.ClusterInfo]

	mu       sync.RWMutex
	gen      uint64
	policies map[string]*cofferv1.PolicyRecord
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
