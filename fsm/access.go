package fsm

import (
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
)

// Authz returns the authorisation snapshot of the committed state. It is
// never nil after Open; a snapshot that could not be built denies every
// request (fail closed).
func (f *FSM) Authz() *authz.Snapshot { return f.authz.Load() }

// rebuildAuthz builds the authorisation snapshots from every client, rule
// and revocation and swaps them in: the request path's, from the records
// whose integrity tag verifies, and Apply's (FSM.decisions), from the
// records as stored, so that a decision made in Apply depends on nothing
// but the log.
func (f *FSM) rebuildAuthz() {
	f.authz.Store(f.buildSnapshot(f.db, true))
	f.decisions.Store(f.buildSnapshot(f.db, false))
}

// buildSnapshot builds a snapshot from r; if verified, only from the
// clients and rules whose tag verifies. On failure it returns an empty
// snapshot, which denies everything, rather than one that may miss a change.
func (f *FSM) buildSnapshot(r reader, verified bool) *authz.Snapshot {
	clients, err := scanAll[cofferv1.ClientRecord](r, prefixClient)
	var rules []*cofferv1.AclRule
	var revoked []*cofferv1.RevokedCertificate
	if err == nil {
		rules, err = scanAll[cofferv1.AclRule](r, prefixRule)
	}
	if err == nil {
		revoked, err = scanAll[cofferv1.RevokedCertificate](r, prefixRevoked)
	}
	if err == nil && verified && f.verify != nil {
		clients, rules = f.verifiedAccess(clients, rules)
	}
	var snap *authz.Snapshot
	if err == nil {
		snap, err = authz.NewSnapshot(clients, rules, revoked)
	}
	if err != nil {
		f.logger.Error("fsm: cannot build the authorisation snapshot; denying every request", "err", err)
		snap, _ = authz.NewSnapshot(nil, nil, nil)
	}
	return snap
}

// Client returns a registered client, or ErrClientNotFound.
func (f *FSM) Client(name string) (*cofferv1.ClientRecord, error) {
	var c cofferv1.ClientRecord
	if err := getProto(f.db, clientKey(name), &c); err != nil {
		if err == ErrNotFound {
			return nil, fmt.Errorf("%w: %q", ErrClientNotFound, name)
		}
		return nil, err
	}
	return &c, nil
}

// Clients returns every registered client in name order.
func (f *FSM) Clients() ([]*cofferv1.ClientRecord, error) {
	return scanAll[cofferv1.ClientRecord](f.db, prefixClient)
}

// Rules returns every ACL rule in id order.
func (f *FSM) Rules() ([]*cofferv1.AclRule, error) {
	return scanAll[cofferv1.AclRule](f.db, prefixRule)
}

// Rule returns one ACL rule, or ErrRuleNotFound.
func (f *FSM) Rule(id string) (*cofferv1.AclRule, error) {
	var r cofferv1.AclRule
	if err := getProto(f.db, ruleKey(id), &r); err != nil {
		if err == ErrNotFound {
			return nil, fmt.Errorf("%w: %q", ErrRuleNotFound, id)
		}
		return nil, err
	}
	return &r, nil
}

// scanAll decodes every record under prefix.
func scanAll[T any, P interface {
	*T
	proto.Message
}](r reader, prefix []byte) ([]*T, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	var out []*T
	for ok := it.First(); ok; ok = it.Next() {
		m := P(new(T))
		if err := getProtoBytes(it.Value(), m, it.Key()); err != nil {
			return nil, err
		}
		out = append(out, (*T)(m))
	}
	return out, it.Error()
}

// verifiedAccess keeps the clients and rules whose integrity tag verifies.
func (f *FSM) verifiedAccess(clients []*cofferv1.ClientRecord, rules []*cofferv1.AclRule) ([]*cofferv1.ClientRecord, []*cofferv1.AclRule) {
	cluster, err := f.readCluster()
	if err != nil {
		if len(clients) > 0 || len(rules) > 0 {
			f.logger.Error("fsm: cluster info unreadable; access records cannot be verified", "err", err)
		}
		return nil, nil
	}
	okClients := clients[:0:0]
	for _, c := range clients {
		if f.verify(clientKey(c.GetName()), c, cluster) == nil {
			okClients = append(okClients, c)
		}
	}
	okRules := rules[:0:0]
	for _, r := range rules {
		if f.verify(ruleKey(r.GetId()), r, cluster) == nil {
			okRules = append(okRules, r)
		}
	}
	return okClients, okRules
}
