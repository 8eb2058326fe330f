package fsm

import (
	"bytes"
	"encoding/base64"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// MaxPageSize bounds ListKeys.
const MaxPageSize = 1000

// Key returns the key record for gkid, or ErrNotFound. The record may be
// shared with other readers: callers must not modify it.
func (f *FSM) Key(gkid string) (*cofferv1.KeyRecord, error) {
	return f.cachedKey(f.db, gkid)
}

// cachedKey reads a key record from r through the key cache. A cached
// record is the committed one (replaceKey); a batch reads the records it
// replaced itself from its own overlay first (applyCtx.key).
func (f *FSM) cachedKey(r reader, gkid string) (*cofferv1.KeyRecord, error) {
	if k, ok := f.cache.key(gkid); ok {
		return k, nil
	}
	gen := f.cache.keyGeneration()
	var k cofferv1.KeyRecord
	if err := getProto(r, keyKey(gkid), &k); err != nil {
		return nil, err
	}
	f.cache.putKey(gen, gkid, &k)
	return &k, nil
}

// Policy returns the custody policy record, or ErrPolicyNotFound. The record
// is shared: callers must not modify it.
func (f *FSM) Policy(name string) (*cofferv1.PolicyRecord, error) {
	if p, ok := f.cache.policy(name); ok {
		return p, nil
	}
	gen := f.cache.generation()
	p, err := f.readPolicy(name)
	if err == nil {
		f.cache.putPolicy(gen, name, p)
	}
	return p, err
}

func (f *FSM) readPolicy(name string) (*cofferv1.PolicyRecord, error) {
	var p cofferv1.PolicyRecord
	if err := getProto(f.db, policyKey(name), &p); err != nil {
		if err == ErrNotFound {
			return nil, fmt.Errorf("%w: %q", ErrPolicyNotFound, name)
		}
		return nil, err
	}
	return &p, nil
}

// Cluster returns the cluster identity, or ErrNotInitialized. The record is
// shared: callers must not modify it. It never changes once set.
func (f *FSM) Cluster() (*cofferv1.ClusterInfo, error) {
	if c := f.cache.cluster.Load(); c != nil {
		return c, nil
	}
	c, err := f.readCluster()
	if err == nil {
		f.cache.cluster.Store(c)
	}
	return c, err
}

func (f *FSM) readCluster() (*cofferv1.ClusterInfo, error) {
	var c cofferv1.ClusterInfo
	if err := getProto(f.db, keyCluster, &c); err != nil {
		if err == ErrNotFound {
			return nil, ErrNotInitialized
		}
		return nil, err
	}
	return &c, nil
}

// RequestKey returns the gkid created earlier by owner's request id.
func (f *FSM) RequestKey(owner, requestID string) (string, bool, error) {
	v, err := get(f.db, requestKey(owner, requestID))
	if err == ErrNotFound {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return string(v), true, nil
}

// ListFilter selects keys for ListKeys.
type ListFilter struct {
	Policy   string
	Resource string
}

// pageTokenPrefix begins every key list page token (see ListKeys).
const pageTokenPrefix = "keys/v1:"

// ListKeys returns up to limit keys matching filter in gkid order after the
// position encoded in pageToken, and the token of the next page ("" at the
// end).
func (f *FSM) ListKeys(filter ListFilter, pageToken string, limit int) ([]*cofferv1.KeyRecord, string, error) {
	if limit <= 0 || limit > MaxPageSize {
		return nil, "", fmt.Errorf("%w: page size must be 1..%d", ErrInvalidCommand, MaxPageSize)
	}
	// A token is pageTokenPrefix and the last GKID of the page before, so
	// one that does not decode to that was not issued here: refused, rather
	// than read as the end of the list.
	raw, err := base64.RawURLEncoding.DecodeString(pageToken)
	after, ok := bytes.CutPrefix(raw, []byte(pageTokenPrefix))
	if err != nil || (pageToken != "" && (!ok || len(after) == 0)) {
		return nil, "", fmt.Errorf("%w: the page token was not issued by a key list; start again without one", ErrInvalidCommand)
	}
	snap := f.db.NewSnapshot()
	defer snap.Close()

	var prefix []byte
	indexed := true
	switch {
	case filter.Policy != "":
		prefix = byPolicyPrefix(filter.Policy)
	case filter.Resource != "":
		prefix = byResourcePrefix(filter.Resource)
	default:
		prefix, indexed = prefixKey, false
	}
	lower := prefix
	if len(after) > 0 {
		lower = append(concat(prefix, after), 0)
	}
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, "", fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	var out []*cofferv1.KeyRecord
	var last []byte
	for ok := it.First(); ok; ok = it.Next() {
		gk := bytes.Clone(it.Key()[len(prefix):])
		var rec cofferv1.KeyRecord
		if indexed {
			if err := getProto(snap, keyKey(string(gk)), &rec); err != nil {
				return nil, "", fmt.Errorf("%w: index entry for %s: %v", ErrCorrupt, gk, err)
			}
		} else if err := getProtoBytes(it.Value(), &rec, it.Key()); err != nil {
			return nil, "", err
		}
		if filter.Resource != "" && rec.GetResource() != filter.Resource {
			continue
		}
		if len(out) == limit {
			return out, base64.RawURLEncoding.EncodeToString(append([]byte(pageTokenPrefix), last...)), nil
		}
		out = append(out, &rec)
		last = gk
	}
	if err := it.Error(); err != nil {
		return nil, "", fmt.Errorf("fsm: iterate: %w", err)
	}
	return out, "", nil
}

func getProtoBytes(v []byte, m proto.Message, key []byte) error {
	if err := proto.Unmarshal(v, m); err != nil {
		return fmt.Errorf("%w: record %q: %v", ErrCorrupt, key, err)
	}
	return nil
}

// Policies returns every custody policy in name order.
func (f *FSM) Policies() ([]*cofferv1.PolicyRecord, error) {
	it, err := f.db.NewIter(&pebble.IterOptions{LowerBound: prefixPolicy, UpperBound: prefixEnd(prefixPolicy)})
	if err != nil {
		return nil, fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	var out []*cofferv1.PolicyRecord
	for ok := it.First(); ok; ok = it.Next() {
		var p cofferv1.PolicyRecord
		if err := getProtoBytes(it.Value(), &p, it.Key()); err != nil {
			return nil, err
		}
		out = append(out, &p)
	}
	return out, it.Error()
}
