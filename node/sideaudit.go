package node

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
)

// maxPendingRefusals bounds the audit entries of refused node identities
// waiting to be committed.
const maxPendingRefusals = 1024

var metricRefusalsUnaudited = prometheus.NewCounter(prometheus.CounterOpts{
	Namespace: "coffer", Name: "member_refusals_unaudited_total",
	Help: "Refused node identities whose audit entry was dropped because too many were waiting (each is still logged).",
})

// refusalWindow is how long repeats of one refusal are counted instead of
// recorded one by one.
const refusalWindow = time.Minute

// maxRefusalKinds bounds the distinct refusals remembered for counting.
const maxRefusalKinds = 4096

// sideAuditor commits audit entries that are not a request's own answer
// path, off the path that produced them: refused node identities, the
// membership changes the leader sees (record), and the status answered
// without a quorum (record, committed once a leader is back). For refusals: a Raft handshake must not wait for a Raft
// round (there may be no leader), and a flood of refusals must not hold
// the handshake slots that members need. Entries wait in a bounded queue;
// one worker commits what has gathered as one batch. A refusal that finds
// the queue full is logged and counted, not audited.
//
// A refused node retries: Raft redials every few milliseconds, a locked-out
// member for as long as it runs. The first refusal of a kind (caller, door,
// cause) is recorded as it happens; repeats within refusalWindow are
// counted, and when the window closes one entry records how many there
// were, so the log holds every refusal without growing by thousands of
// entries a minute.
type sideAuditor struct {
	n    *Node
	mu   sync.Mutex
	q    []*cofferv1.AuditEntry
	seen map[refusalKey]*refusalCount
	wake chan struct{}
}

// refusalKey is a kind of refusal: who, where, and why (without the
// remote address, whose port changes with every connection).
type refusalKey struct {
	caller string
	door   memberDoor
	cause  string
}

// refusalCount is a kind of refusal recorded at first, and the repeats
// counted since.
type refusalCount struct {
	first    *cofferv1.AuditEntry
	since    time.Time
	repeated int
}

func newSideAuditor(n *Node) *sideAuditor {
	return &sideAuditor{n: n, seen: map[refusalKey]*refusalCount{}, wake: make(chan struct{}, 1)}
}

// add records a refusal: queued for the audit log if it is the first of its
// kind in the window (true: the caller logs it), counted otherwise (false).
func (r *sideAuditor) add(e *cofferv1.AuditEntry, k refusalKey) bool {
	now := time.Now()
	r.mu.Lock()
	if c, ok := r.seen[k]; ok && now.Sub(c.since) < refusalWindow {
		c.repeated++
		r.mu.Unlock()
		return false
	}
	if len(r.seen) < maxRefusalKinds {
		r.seen[k] = &refusalCount{first: e, since: now}
	}
	full := !r.enqueueLocked(e)
	r.mu.Unlock()
	if full {
		r.n.logger.Error("audit entry of a refused node identity dropped: too many waiting", "caller", e.GetCaller(), "op", e.GetOperation())
	}
	r.signal()
	return true
}

// record queues an entry to be committed as it is, counted nowhere: a
// membership change the leader saw.
func (r *sideAuditor) record(e *cofferv1.AuditEntry) {
	r.mu.Lock()
	ok := r.enqueueLocked(e)
	r.mu.Unlock()
	if !ok {
		r.n.logger.Error("audit entry of a membership change dropped: too many waiting", "member", e.GetClient(), "change", e.GetReason())
	}
	r.signal()
}

// enqueueLocked queues e unless the queue is full (counted as unaudited).
func (r *sideAuditor) enqueueLocked(e *cofferv1.AuditEntry) bool {
	if len(r.q) >= maxPendingRefusals {
		metricRefusalsUnaudited.Inc()
		return false
	}
	r.q = append(r.q, e)
	return true
}

// closeWindows queues, for every kind whose window has closed, one entry
// counting its repeats, and forgets it.
func (r *sideAuditor) closeWindows(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, c := range r.seen {
		if now.Sub(c.since) < refusalWindow {
			continue
		}
		delete(r.seen, k)
		if c.repeated == 0 {
			continue
		}
		e := proto.CloneOf(c.first)
		e.TimeUnixNano = now.UnixNano()
		e.Reason = clip(fmt.Sprintf("refused %d more times like this since %s: %s", c.repeated, c.since.UTC().Format(time.RFC3339), c.first.GetReason()), audit.MaxFieldLen)
		r.enqueueLocked(e)
	}
}

// run commits queued entries until the node stops; entries it cannot commit
// go back to the front of the queue and are tried again a little later.
// Every refusalWindow/4 it closes the counting windows.
func (r *sideAuditor) run() {
	defer r.n.wg.Done()
	tick := time.NewTicker(refusalWindow / 4)
	defer tick.Stop()
	retry := false
	for {
		var after <-chan time.Time
		if retry {
			after = time.After(refusalRetry)
		}
		select {
		case <-r.n.stopCh:
			return
		case <-r.wake:
		case <-after:
		case now := <-tick.C:
			r.closeWindows(now)
		}
		retry = !r.flush()
	}
}

// refusalRetry is how long the worker waits after a failed commit.
const refusalRetry = time.Second

func (r *sideAuditor) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// flush commits everything queued; false if a commit failed (what was not
// committed is back in the queue).
func (r *sideAuditor) flush() bool {
	r.mu.Lock()
	batch := r.q
	r.q = nil
	r.mu.Unlock()
	for len(batch) > 0 {
		take := batch[:min(len(batch), maxAuditBatch)]
		ctx, stop := r.n.stopContext(context.Background())
		err := r.n.svc.commitBatch(ctx, auditBatch{entries: take})
		stop()
		if err != nil {
			r.n.logger.Warn("audit entries of refused node identities not committed yet; will retry", "entries", len(batch), "err", err)
			r.mu.Lock()
			r.q = append(batch, r.q...)
			if over := len(r.q) - maxPendingRefusals; over > 0 {
				metricRefusalsUnaudited.Add(float64(over))
				r.q = r.q[:maxPendingRefusals]
			}
			r.mu.Unlock()
			return false
		}
		batch = batch[len(take):]
	}
	return true
}
