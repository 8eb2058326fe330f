package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// Client key caches (fsm/DESIGN.md, "Client key caches").
//
// What a client library may keep in its key cache is governed by the
// server: a policy set for one client (ClientRecord.cache_policy, written
// with PUT_CLIENT by the leader, which re-tags the record), else the cluster
// default (m/cache_policy, SET_CACHE_POLICY), else the built-in default
// below. FLUSH_CACHES raises the cluster's cache generation
// (m/cache_generation): a client drops every key it cached under an older
// one.

// Limits of a client cache policy, checked by the node and again by Apply.
const (
	// MaxCacheTTL bounds ClientCachePolicy.ttl.
	MaxCacheTTL = 24 * time.Hour
	// MaxCacheEntries bounds ClientCachePolicy.max_entries.
	MaxCacheEntries = 100000
)

// ErrBadCachePolicy refuses a client cache policy whose settings are out of
// bounds (CheckCachePolicy). Apply wraps it in ErrInvalidCommand.
var ErrBadCachePolicy = errors.New("invalid client cache policy")

// Cache operations a client cache policy may allow.
const (
	CacheOpGet     = "get"
	CacheOpEncrypt = "encrypt"
	CacheOpDecrypt = "decrypt"
)

// Sources of the policy in force (ClientCachePolicy.source).
const (
	CacheSourceClient  = "client"
	CacheSourceDefault = "default"
)

// BuiltinCachePolicy is the policy in force when no default was set: keys
// may be cached for GetKey only, five minutes at most, a thousand at a
// time, used without a count limit within that time, never written to
// disk. Its revision is 0.
func BuiltinCachePolicy() *cofferv1.ClientCachePolicy {
	return &cofferv1.ClientCachePolicy{
		Ttl:               durationpb.New(5 * time.Minute),
		MaxEntries:        1000,
		MaxUses:           0,
		AllowedOperations: []string{CacheOpGet},
		Persist:           false,
	}
}

// CheckCachePolicy checks the settings of a client cache policy: a TTL in
// [0, MaxCacheTTL] (absent means 0: nothing may be cached), at most
// MaxCacheEntries entries, allowed operations among get, encrypt and
// decrypt without repeats. It does not look at the server-set fields.
func CheckCachePolicy(p *cofferv1.ClientCachePolicy) error {
	if p == nil {
		return fmt.Errorf("%w: policy is required", ErrBadCachePolicy)
	}
	if d := p.GetTtl(); d != nil {
		if err := d.CheckValid(); err != nil {
			return fmt.Errorf("%w: policy.ttl: %v", ErrBadCachePolicy, err)
		}
		if t := d.AsDuration(); t < 0 || t > MaxCacheTTL {
			return fmt.Errorf("%w: policy.ttl is %s, must be between 0 and %s", ErrBadCachePolicy, t, MaxCacheTTL)
		}
	}
	if p.GetMaxEntries() > MaxCacheEntries {
		return fmt.Errorf("%w: policy.max_entries is %d, at most %d", ErrBadCachePolicy, p.GetMaxEntries(), MaxCacheEntries)
	}
	ops := p.GetAllowedOperations()
	for i, op := range ops {
		switch op {
		case CacheOpGet, CacheOpEncrypt, CacheOpDecrypt:
		default:
			return fmt.Errorf("%w: policy.allowed_operations: %q is not one of get, encrypt, decrypt", ErrBadCachePolicy, clipDisplay(op))
		}
		for _, o := range ops[:i] {
			if o == op {
				return fmt.Errorf("%w: policy.allowed_operations lists %q twice", ErrBadCachePolicy, op)
			}
		}
	}
	return nil
}

func clipDisplay(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// PolicyInForce is the cache policy in force for client record cl (which
// may be nil: then the default applies) given the stored cluster default
// def (nil: none set) and the cache generation gen, with the server-set
// fields filled in: source, generation, and revision (the client record's
// revision for a client's own policy, the default record's for the
// default, 0 for the built-in default).
func PolicyInForce(cl *cofferv1.ClientRecord, def *cofferv1.ClientCachePolicy, gen uint64) *cofferv1.ClientCachePolicy {
	var p *cofferv1.ClientCachePolicy
	switch {
	case cl.GetCachePolicy() != nil:
		p = proto.CloneOf(cl.GetCachePolicy())
		p.Source, p.Revision = CacheSourceClient, cl.GetRevision()
	case def != nil:
		p = proto.CloneOf(def)
		p.Source = CacheSourceDefault
	default:
		p = BuiltinCachePolicy()
		p.Source = CacheSourceDefault
	}
	p.Generation = gen
	return p
}

// DefaultCachePolicy returns the cluster default as stored (its revision
// set, source and generation not), or nil when none was set (the built-in
// default applies).
func (f *FSM) DefaultCachePolicy() (*cofferv1.ClientCachePolicy, error) {
	return readDefaultCachePolicy(f.db)
}

func readDefaultCachePolicy(r reader) (*cofferv1.ClientCachePolicy, error) {
	var p cofferv1.ClientCachePolicy
	switch err := getProto(r, keyCachePolicy, &p); err {
	case nil:
		return &p, nil
	case ErrNotFound:
		return nil, nil
	default:
		return nil, err
	}
}

// CacheGeneration returns the cluster's cache generation: 0 until the
// first FLUSH_CACHES, then raised by one by each.
func (f *FSM) CacheGeneration() (uint64, error) {
	return readCacheGeneration(f.db)
}

func readCacheGeneration(r reader) (uint64, error) {
	v, err := get(r, keyCacheGeneration)
	switch {
	case err == ErrNotFound:
		return 0, nil
	case err != nil:
		return 0, err
	case len(v) != 8:
		return 0, fmt.Errorf("%w: cache generation record has %d bytes", ErrCorrupt, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// CachePolicy returns the cache policy in force for a registered client
// (PolicyInForce), read from one consistent view of the state; an unknown
// client is ErrClientNotFound. The node uses CachePolicyWith instead when
// it has the client's record with its integrity tag verified.
func (f *FSM) CachePolicy(client string) (*cofferv1.ClientCachePolicy, error) {
	snap := f.db.NewSnapshot()
	defer snap.Close()
	var cl cofferv1.ClientRecord
	if err := getProto(snap, clientKey(client), &cl); err != nil {
		if err == ErrNotFound {
			return nil, fmt.Errorf("%w: %q", ErrClientNotFound, client)
		}
		return nil, err
	}
	return cachePolicyWith(snap, &cl)
}

// CachePolicyWith returns the cache policy in force for the client record
// cl (nil: the default's), with this replica's default and generation.
func (f *FSM) CachePolicyWith(cl *cofferv1.ClientRecord) (*cofferv1.ClientCachePolicy, error) {
	snap := f.db.NewSnapshot()
	defer snap.Close()
	return cachePolicyWith(snap, cl)
}

func cachePolicyWith(r reader, cl *cofferv1.ClientRecord) (*cofferv1.ClientCachePolicy, error) {
	def, err := readDefaultCachePolicy(r)
	if err != nil {
		return nil, err
	}
	gen, err := readCacheGeneration(r)
	if err != nil {
		return nil, err
	}
	return PolicyInForce(cl, def, gen), nil
}

// applySetCachePolicy sets or clears the cluster default cache policy at
// the expected revision (0: none set). The policy's revision must be the
// expected one plus one, its source and generation empty. A client's own
// policy lives in its ClientRecord, which the leader re-tags and writes
// with PUT_CLIENT (the record's integrity tag covers it).
func applySetCachePolicy(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.SetCachePolicyCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	cur, err := readDefaultCachePolicy(a.b)
	if err != nil {
		panic(err.Error())
	}
	if cur.GetRevision() != c.GetExpectedRevision() {
		return Result{Err: fmt.Errorf("%w: the default cache policy is at revision %d, not %d", ErrConflict, cur.GetRevision(), c.GetExpectedRevision())}
	}
	gen, err := readCacheGeneration(a.b)
	if err != nil {
		panic(err.Error())
	}
	if c.GetClear() {
		if c.GetPolicy() != nil {
			return Result{Err: fmt.Errorf("%w: clear and a policy are exclusive", ErrInvalidCommand)}
		}
		if cur != nil {
			if err := a.b.Delete(keyCachePolicy, nil); err != nil {
				panic(fmt.Sprintf("fsm: batch delete: %v", err))
			}
		}
		return Result{CachePolicy: PolicyInForce(nil, nil, gen)}
	}
	p := c.GetPolicy()
	if err := CheckCachePolicy(p); err != nil {
		return Result{Err: fmt.Errorf("%w: %w", ErrInvalidCommand, err)}
	}
	if p.GetSource() != "" || p.GetGeneration() != 0 {
		return Result{Err: fmt.Errorf("%w: a stored cache policy has no source or generation", ErrInvalidCommand)}
	}
	if p.GetRevision() != c.GetExpectedRevision()+1 {
		return Result{Err: fmt.Errorf("%w: default cache policy revision must be %d", ErrInvalidCommand, c.GetExpectedRevision()+1)}
	}
	mustSet(a.b, keyCachePolicy, p)
	return Result{CachePolicy: PolicyInForce(nil, p, gen)}
}

// applyFlushCaches raises the cluster's cache generation by one.
func applyFlushCaches(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.FlushCachesCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	gen, err := readCacheGeneration(a.b)
	if err != nil {
		panic(err.Error())
	}
	gen++
	mustSetRaw(a.b, keyCacheGeneration, binary.BigEndian.AppendUint64(nil, gen))
	return Result{CacheGeneration: gen}
}

// CacheVersion is the payload version of SET_CACHE_POLICY and
// FLUSH_CACHES, types older replicas do not know.
const CacheVersion = 7
