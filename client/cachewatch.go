package client

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// Reconnect backoff of the cache Watch stream.
const (
	watchBackoffBase = 100 * time.Millisecond
	watchBackoffMax  = 5 * time.Second
)

// startCacheGovernor starts, once a cache is in use, the two goroutines
// that let the cluster govern it until Close: the Watch stream, which
// applies cache events, and the periodic refresh of the client policy.
func (c *Client) startCacheGovernor() {
	g := &c.gov
	g.startMu.Lock()
	defer g.startMu.Unlock()
	if g.started.Load() || g.stopped || c.closed.Load() {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel, g.done, g.refresh = cancel, make(chan struct{}), make(chan struct{}, 1)
	watched, refreshed := make(chan struct{}), make(chan struct{})
	go func() { defer close(watched); c.watchCacheLoop(ctx) }()
	go func() { defer close(refreshed); c.refreshCacheLoop(ctx) }()
	go func() { <-watched; <-refreshed; close(g.done) }()
	g.started.Store(true)
}

// stopCacheGovernor stops the goroutines and waits for them; none starts
// after it.
func (c *Client) stopCacheGovernor() {
	g := &c.gov
	g.startMu.Lock()
	g.stopped = true
	cancel, done := g.cancel, g.done
	g.startMu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// refreshCacheLoop asks for the client policy every refresh interval (or
// at once when the Watch stream reconnected, or while only the file's
// policy is known) and applies it. A failed fetch keeps the policy in
// force: offline, the cache goes on serving under it.
func (c *Client) refreshCacheLoop(ctx context.Context) {
	g := &c.gov
	for first := true; ; first = false {
		if !first || g.confirmed.Load() {
			t := time.NewTimer(c.refreshInterval())
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			case <-g.refresh:
				t.Stop()
			}
		}
		if p, err := c.getCachePolicy(ctx); err == nil {
			c.applyCachePolicy(p)
		} else if ctx.Err() != nil {
			return
		}
	}
}

// refreshInterval is the refresh interval, shortened to the policy's TTL
// (not below a second, or the interval itself when that is shorter).
func (c *Client) refreshInterval() time.Duration {
	d := c.gov.interval
	if ttl := c.cache.currentPolicy().GetTtl().AsDuration(); ttl > 0 && ttl < d {
		d = max(ttl, min(time.Second, c.gov.interval))
	}
	return d
}

// watchCacheLoop keeps a Watch stream open to some node, moving to another
// with backoff when it fails and resuming after the last event applied.
// A node that does not implement CacheService is asked again after the
// refresh interval.
func (c *Client) watchCacheLoop(ctx context.Context) {
	var prev *endpoint
	failures := 0
	for ctx.Err() == nil {
		ep := c.pick(prev, "")
		again := prev != nil
		prev = ep
		progressed, err := c.watchGoverned(ctx, ep, again)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			failures = 0
		}
		failures++
		wait := watchBackoff(failures)
		switch status.Code(err) {
		case codes.Unimplemented:
			wait = max(wait, c.gov.interval)
		case codes.Unavailable:
			c.markDown(ep)
		}
		if sleep(ctx, wait) != nil {
			return
		}
	}
}

func watchBackoff(failures int) time.Duration {
	b := watchBackoffBase << min(failures-1, 8)
	b = min(b, watchBackoffMax)
	return b + time.Duration(rand.Int64N(int64(b)/5*2+1)) - b/5
}

// watchGoverned runs one Watch stream against ep until it fails, applying
// each event; it reports whether any event arrived. A stream opened after
// an earlier attempt (again) asks the refresh loop for the policy at once,
// in case a change was not delivered in between. A stream the node ends is
// Unavailable.
func (c *Client) watchGoverned(ctx context.Context, ep *endpoint, again bool) (progressed bool, err error) {
	if again {
		select {
		case c.gov.refresh <- struct{}{}:
		default:
		}
	}
	return watchCacheFrom(ctx, ep, &cofferv1.WatchCacheRequest{AfterSeq: c.cache.seq()}, func(ev *cofferv1.CacheEvent) error {
		c.applyCacheEvent(ev)
		return nil
	})
}

// applyCacheEvent applies one cache event, once (an event at or below the
// last seq applied is a replay and skipped).
func (c *Client) applyCacheEvent(ev *cofferv1.CacheEvent) {
	if !c.cache.advanceSeq(ev.GetSeq()) {
		return
	}
	switch e := ev.GetEvent().(type) {
	case *cofferv1.CacheEvent_DropKey:
		if c.cache.drop(e.DropKey) {
			c.noteFileErr(c.cache.flush())
		}
	case *cofferv1.CacheEvent_DropAll:
		if e.DropAll {
			c.Forget()
		}
	case *cofferv1.CacheEvent_Policy:
		if e.Policy != nil {
			c.applyCachePolicy(e.Policy)
		}
	}
}

// seq is the last cache event seq applied.
func (c *keyCache) seq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watchSeq
}

// advanceSeq records seq as applied and reports whether it is new (0, an
// event without a seq, always is).
func (c *keyCache) advanceSeq(seq uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if seq == 0 {
		return true
	}
	if seq <= c.watchSeq {
		return false
	}
	c.watchSeq = seq
	return true
}
