package node

import (
	"context"
	"fmt"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// Watch: a calling client's cache invalidations, derived from the committed
// audit log (node/DESIGN.md, "Client key caches").
//
// Every change that can make a cached key unusable commits with its audit
// entry in the same Raft entry, so the log is the one ordered record of
// them, the same on every node. A watch scans the entries after the
// caller's position and turns the granted ones that concern the caller into
// events, each carrying its entry's seq, so that a client that reconnects,
// to this node or another, resumes after the last seq it saw without
// missing or reordering anything.

// cacheWatchPace is the shortest time between two scans of a Watch once it
// has caught up, as for Follow: on a busy log one scan covers many rounds.
const cacheWatchPace = 100 * time.Millisecond

// Kinds of CacheEvent, as the metric labels them.
const (
	cacheEventDropKey = "drop_key"
	cacheEventDropAll = "drop_all"
	cacheEventPolicy  = "policy"
)

// watchCache is the door of Watch: one audit entry for the stream
// (cache.read, which every active client holds), then events until the
// caller goes away (a quiet end) or the node stops (Unavailable).
func (s *service) watchCache(req *cofferv1.WatchCacheRequest, stream cofferv1.CacheService_WatchServer) error {
	ctx := stream.Context()
	err := s.auditedStream(ctx, "Watch", authz.OpCacheRead, func(grant func() error) error {
		return s.cacheWatch(ctx, req, stream, grant)
	})
	if err != nil && ctx.Err() != nil {
		return nil // the caller went away: a normal end
	}
	return toStatus(err)
}

// cacheWatcher turns committed audit entries into one client's events.
type cacheWatcher struct {
	s *service
	c caller
	// last is the kind of the last event sent.
	last string
	send func(*cofferv1.CacheEvent) error
}

func (s *service) cacheWatch(ctx context.Context, req *cofferv1.WatchCacheRequest, stream cofferv1.CacheService_WatchServer, grant func() error) error {
	c, err := callerOf(ctx)
	if err != nil {
		return err
	}
	head := s.fsm.AuditHeadSeq()
	after := req.GetAfterSeq()
	if after > head {
		// The stream linearized first, so every entry the caller saw
		// anywhere is here: a position past the head is not this cluster's.
		return fmt.Errorf("%w: after_seq %d is past the head of this cluster's audit log (%d); watch from 0", ErrInvalidArgument, after, head)
	}
	resumed := after != 0
	if !resumed {
		after = head // from now on: the events before the stream's own entry are not wanted
	}
	if err := grant(); err != nil {
		return err
	}
	metricCacheWatchStreams.Inc()
	defer metricCacheWatchStreams.Dec()
	ctx, cancel := s.stopContext(ctx)
	defer cancel()
	w := &cacheWatcher{s: s, c: c, send: stream.Send}
	if resumed {
		// Entries the caller has not seen were pruned: what they said is
		// gone, so the caller drops everything.
		m, err := s.fsm.AuditPruneMarker()
		if err != nil {
			return err
		}
		if m.GetFirstSeq() > after+1 {
			if err := w.emit(dropAll(m.GetFirstSeq() - 1)); err != nil {
				return err
			}
		}
	}
	for {
		entries, last, err := s.fsm.AuditEntries(after, MaxAuditPage, fsm.AuditFilter{})
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := w.entry(e); err != nil {
				return err
			}
		}
		if err := w.stillAdmitted(last); err != nil {
			return err
		}
		if last > after {
			after = last
			continue // there may be more pages
		}
		if err := s.awaitAudit(ctx, after, cacheWatchPace); err != nil {
			return err
		}
	}
}

func (w *cacheWatcher) emit(ev *cofferv1.CacheEvent) error {
	kind := cacheEventPolicy
	switch ev.GetEvent().(type) {
	case *cofferv1.CacheEvent_DropKey:
		kind = cacheEventDropKey
	case *cofferv1.CacheEvent_DropAll:
		kind = cacheEventDropAll
	}
	if err := w.send(ev); err != nil {
		return err
	}
	metricCacheEvents.WithLabelValues(kind).Inc()
	w.last = kind
	return nil
}

func dropAll(seq uint64) *cofferv1.CacheEvent {
	return &cofferv1.CacheEvent{Seq: seq, Event: &cofferv1.CacheEvent_DropAll{DropAll: true}}
}

// entry sends the event a committed entry means for the caller, if any.
// Only granted entries changed anything.
//
//   - drop_key: a key's state changed (state, destroy: deactivate,
//     compromise, destroy, retire a version, …), it was rotated, or its use
//     policy amended (policy.update naming a key), and the caller may get
//     that key now (a key it may not read is not named to it);
//   - drop_all: FlushCaches (cache.flush); a change of the caller itself
//     (client.manage naming it: deactivation, roles or groups, a revoked
//     certificate); a grant or revocation of a rule for the caller or one
//     of its groups (acl.manage): what it may read may have shrunk;
//   - policy: the caller's own policy changed, or the default while the
//     caller has none of its own (cache.manage); the event carries the
//     policy in force now.
func (w *cacheWatcher) entry(e *cofferv1.AuditEntry) error {
	if e.GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
		return nil
	}
	name := w.c.id.Name
	switch authz.Op(e.GetOperation()) {
	case authz.OpState, authz.OpDestroy, authz.OpRotate, authz.OpPolicyUpdate:
		if e.GetGkid() == "" {
			return nil // a custody policy's update: no key of its own
		}
		if !w.mayGet(e) {
			return nil
		}
		return w.emit(&cofferv1.CacheEvent{Seq: e.GetSeq(), Event: &cofferv1.CacheEvent_DropKey{DropKey: e.GetGkid()}})
	case authz.OpCacheFlush:
		return w.emit(dropAll(e.GetSeq()))
	case authz.OpClientManage:
		if e.GetClient() == name {
			return w.emit(dropAll(e.GetSeq()))
		}
	case authz.OpACLManage:
		if w.concernsCaller(e.GetClient()) {
			return w.emit(dropAll(e.GetSeq()))
		}
	case authz.OpCacheManage:
		if e.GetClient() != name && e.GetClient() != "" {
			return nil
		}
		p, err := w.s.cachePolicyOf(name)
		if err != nil {
			return err
		}
		if e.GetClient() == "" && p.GetSource() == fsm.CacheSourceClient {
			return nil // the default changed, but the caller has its own
		}
		return w.emit(&cofferv1.CacheEvent{Seq: e.GetSeq(), Event: &cofferv1.CacheEvent_Policy{Policy: p}})
	}
	return nil
}

// mayGet reports whether the caller may get the key an entry names now,
// by the key's resource the entry recorded (else its stored one).
func (w *cacheWatcher) mayGet(e *cofferv1.AuditEntry) bool {
	res := e.GetResource()
	if res == "" {
		rec, err := w.s.fsm.Key(e.GetGkid())
		if err != nil {
			return false
		}
		res = rec.GetResource()
	}
	return w.s.decideClient(w.c, authz.OpGet, res).Allowed
}

// concernsCaller reports whether a rule subject is the caller or one of
// its groups.
func (w *cacheWatcher) concernsCaller(subject string) bool {
	name := w.c.id.Name
	if subject == authz.ClientSubject(name) {
		return true
	}
	rec, err := w.s.fsm.Client(name)
	if err != nil {
		return true // no longer registered: stillAdmitted ends the stream
	}
	for _, g := range rec.GetGroups() {
		if subject == "group:"+g {
			return true
		}
	}
	return false
}

// stillAdmitted ends the stream of a caller that may no longer watch
// (deactivated, unregistered, its certificate revoked), after telling it to
// drop everything.
func (w *cacheWatcher) stillAdmitted(seq uint64) error {
	d := w.s.decideClient(w.c, authz.OpCacheRead, "")
	if d.Allowed {
		return nil
	}
	if w.last != cacheEventDropAll { // else the change that ended it said so already
		if err := w.emit(dropAll(seq)); err != nil {
			return err
		}
	}
	if d.Code == authz.Unauthenticated {
		return fmt.Errorf("%w: %s", ErrUnauthenticated, d.Reason)
	}
	return fmt.Errorf("%w: %s", ErrPermission, d.Reason)
}
