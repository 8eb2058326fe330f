package fsm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
)

// CommandVersion is the newest payload schema version this build reads.
// Version 2 is an AUDIT_BATCH with a decide or fallback list: a replica
// that predates it would link those entries undecided or twice and diverge,
// so it stops instead. Version 3 is a change carrying its request's audit
// entry, which Apply refuses once that request already has an entry
// (ErrAbandoned); version 1 and 2 changes are applied without that rule, as
// the builds that wrote them did. Version 4 is an AUDIT_CHECKPOINT that
// starts the audit time index (timeindex.go). Version 5 is PIN_NODE
// (nodes.go). Version 6 is an AUDIT_BATCH deciding a use of a key by the
// data encryption service (CryptoVersion, reads.go). Version 7 is
// SET_CACHE_POLICY and FLUSH_CACHES (CacheVersion, cachepolicy.go). Other
// commands are still written as version 1, so older replicas keep applying
// them during a rolling upgrade.
const CommandVersion = CacheVersion

// Config configures the state machine.
type Config struct {
	// Dir is the Pebble directory (created if missing).
	Dir string
	// Logger receives state machine events; nil discards them.
	Logger *slog.Logger
	// CacheBytes sizes Pebble's block cache.
	CacheBytes int64
	// VerifyRecord, when set, checks the integrity of a client or rule
	// record before it enters the authorisation snapshot; records it
	// refuses grant nothing. It is never used by Apply, whose results must
	// not depend on anything but committed state.
	VerifyRecord func(path []byte, m proto.Message, cluster *cofferv1.ClusterInfo) error
	// OnAccessChange, when set, is called after a batch that changed
	// clients, rules, revocations or member pins is applied and the views
	// (Authz, NodePins) are swapped, on Raft's apply goroutine and before
	// the change is acknowledged: the node closes connections the change
	// no longer allows. It must not block.
	OnAccessChange func()
}

// DefaultConfig returns a Config with every optional field set.
func DefaultConfig(dir string) Config {
	return Config{Dir: dir, CacheBytes: 64 << 20}
}

// Validate reports a Config that cannot work.
func (c Config) Validate() error {
	if c.Dir == "" {
		return fmt.Errorf("%w: Dir is required", ErrInvalidConfig)
	}
	if c.CacheBytes < 0 {
		return fmt.Errorf("%w: CacheBytes must not be negative", ErrInvalidConfig)
	}
	return nil
}

// Result is what Apply returns for every command entry. Business failures are
// in Err; the state machine itself never fails on them.
type Result struct {
	Err error
	// Key is the created key, or for an idempotent retry the key created by
	// the first request with the same id.
	Key *cofferv1.KeyRecord
	// Duplicate is true when the command repeated an earlier request id and
	// nothing was written.
	Duplicate bool
	Policy    *cofferv1.PolicyRecord
	Cluster   *cofferv1.ClusterInfo
	Marker    *cofferv1.AuditPruneMarker
	// Node is the pin a PIN_NODE command left in force.
	Node *cofferv1.NodeRecord
	// Pruned counts the entries an audit prune deleted (0 when the log
	// already started after its checkpoint).
	Pruned uint64
	Client *cofferv1.ClientRecord
	Rule   *cofferv1.AclRule
	// CachePolicy is the default cache policy in force after a
	// SET_CACHE_POLICY (PolicyInForce); CacheGeneration the generation a
	// FLUSH_CACHES raised the cluster's to.
	CachePolicy     *cofferv1.ClientCachePolicy
	CacheGeneration uint64
	// Reads are the decisions on an audit batch's decided reads, in the
	// order of its decide list.
	Reads []ReadResult
	// Skipped counts an audit batch's fallback entries that were not
	// linked because the change they stand in for was.
	Skipped int
}

// FSM is Coffer's replicated state machine over Pebble. It implements
// raft.BatchingFSM.
//
// Contract:
//   - Apply and ApplyBatch are called by Raft from one goroutine, in log
//     order. Each call commits one Pebble batch that holds the data and the
//     applied index, so a restart resumes where it stopped and an index at or
//     below the applied index is skipped (returns ErrStaleIndex).
//   - Apply is deterministic: it reads only the command and committed state.
//     No clock, no randomness, no keystore.
//   - A committed entry that cannot be decoded, or that names an unknown
//     command type or a newer payload version, stops the node (panic) rather
//     than let replicas diverge.
//   - Read methods may be called concurrently with Apply; each sees a
//     consistent committed state.
type FSM struct {
	db     *pebble.DB
	logger *slog.Logger

	applied atomic.Uint64
	term    atomic.Uint64

	waitMu sync.Mutex
	waitCh chan struct{} // closed and replaced after every applied batch

	closed atomic.Bool
	// restoring is set while Restore replaces the store: reads would see
	// a mix of the old state and the new.
	restoring atomic.Bool

	// snapStore, when set, makes snapshots Pebble checkpoints.
	snapStore *SnapshotStore

	// cache holds decoded records that change rarely (policies, cluster
	// info), reset whenever an applied batch or a restore changes them.
	cache *recordCache

	// authz is the authorisation snapshot of the committed clients, rules
	// and revocations, rebuilt and swapped before Apply returns for any
	// batch that changed them.
	authz atomic.Pointer[authz.Snapshot]
	// decisions is the snapshot Apply decides reads with: built from the
	// records as stored, without the keystore, so that every replica
	// decides alike (see reads.go).
	decisions atomic.Pointer[authz.Snapshot]
	// members is the verified view of the member pins (nodes.go).
	members atomic.Pointer[Members]
	// onAccessChange is Config.OnAccessChange.
	onAccessChange func()

	// auditSeq is the sequence number of the newest audit entry.
	auditSeq atomic.Uint64
	// diverged is set once a checkpoint disagreed with this replica.
	diverged atomic.Bool

	verify func(path []byte, m proto.Message, cluster *cofferv1.ClusterInfo) error

	// removedAt is the newest index that removed key material, removedSeq
	// the Pebble sequence number from which snapshots see that removal,
	// and removedCh signals it (shred.go).
	removedAt  atomic.Uint64
	removedSeq atomic.Uint64
	removedCh  chan struct{}
}

var _ raft.BatchingFSM = (*FSM)(nil)

// Open opens (or creates) the state machine in cfg.Dir.
func Open(cfg Config) (*FSM, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	// No WAL is recycled: a destroyed key's old record must not outlive
	// its WAL (shred.go).
	opts := &pebble.Options{Logger: quietLogger{logger}, Cleaner: shredCleaner{}}
	// Apply looks up keys that mostly do not exist yet (new GKIDs, new
	// request ids); bloom filters answer those without reading data blocks.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	if cfg.CacheBytes > 0 {
		cache := pebble.NewCache(cfg.CacheBytes)
		defer cache.Unref()
		opts.Cache = cache
	}
	db, err := pebble.Open(cfg.Dir, opts)
	if err != nil {
		return nil, fmt.Errorf("fsm: open pebble at %s: %w", cfg.Dir, err)
	}
	f := &FSM{db: db, logger: logger, waitCh: make(chan struct{}), verify: cfg.VerifyRecord, onAccessChange: cfg.OnAccessChange, cache: newRecordCache(),
		removedCh: make(chan struct{}, 1)}
	if _, err := get(db, keyRestoring); err == nil {
		// A restore was interrupted: the state is a mix of old and new.
		// Forget it; Raft restores the latest snapshot and replays the log.
		logger.Warn("fsm: interrupted restore found, discarding local state")
		if err := f.wipe(); err != nil {
			_ = db.Close()
			return nil, err
		}
	}
	if v, err := get(db, keyApplied); err == nil {
		idx, term, ok := decodeApplied(v)
		if !ok {
			_ = db.Close()
			return nil, fmt.Errorf("%w: applied index record has %d bytes", ErrCorrupt, len(v))
		}
		f.applied.Store(idx)
		f.term.Store(term)
	}
	f.rebuildAuthz()
	f.rebuildMembers()
	f.loadAuditSeq()
	f.loadDiverged()
	return f, nil
}

// Close closes the store. Pending WaitApplied calls return ErrClosed.
func (f *FSM) Close() error {
	if !f.closed.CompareAndSwap(false, true) {
		return nil
	}
	f.notify()
	return f.db.Close()
}

// AppliedIndex returns the index of the last applied log entry.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// AppliedTerm returns the term of the last applied log entry.
func (f *FSM) AppliedTerm() uint64 { return f.term.Load() }

// WaitApplied blocks until the applied index reaches index, ctx ends, or the
// FSM closes.
func (f *FSM) WaitApplied(ctx context.Context, index uint64) error {
	return f.waitFor(ctx, func() bool { return f.applied.Load() >= index })
}

// WaitAudit blocks until the newest audit entry is past seq, ctx ends, or
// the FSM closes.
func (f *FSM) WaitAudit(ctx context.Context, seq uint64) error {
	return f.waitFor(ctx, func() bool { return f.auditSeq.Load() > seq })
}

// waitFor blocks until done holds after a batch was applied, ctx ends, or
// the FSM closes.
func (f *FSM) waitFor(ctx context.Context, done func() bool) error {
	for {
		f.waitMu.Lock()
		ch := f.waitCh
		f.waitMu.Unlock()
		if done() {
			return nil
		}
		if f.closed.Load() {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (f *FSM) notify() {
	f.waitMu.Lock()
	close(f.waitCh)
	f.waitCh = make(chan struct{})
	f.waitMu.Unlock()
}

// Apply applies one committed log entry.
func (f *FSM) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies committed entries in one Pebble batch.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	out := make([]interface{}, len(logs))
	if len(logs) == 0 {
		return out
	}
	start := time.Now()
	b := f.db.NewIndexedBatch()
	defer b.Close()
	a := &applyCtx{f: f, b: b}
	applied := f.applied.Load()
	var lastIdx, lastTerm uint64
	for i, l := range logs {
		if l.Index <= applied {
			out[i] = Result{Err: ErrStaleIndex}
			continue
		}
		lastIdx, lastTerm = l.Index, l.Term
		if l.Type != raft.LogCommand {
			out[i] = Result{}
			continue
		}
		out[i] = f.applyCommand(a, l)
	}
	if lastIdx == 0 {
		return out
	}
	if err := b.Set(keyApplied, encodeApplied(lastIdx, lastTerm), nil); err != nil {
		panic(fmt.Sprintf("fsm: set applied index: %v", err))
	}
	if a.auditHead != nil {
		mustSetRaw(b, keyAuditHead, a.auditHead.encode())
	}
	if a.timeIdxDirty {
		mustSetRaw(b, keyAuditTime, a.timeIdx.encode())
	}
	a.writeCounts()
	// The Raft log is the durable record; Pebble is synced at snapshot time.
	if err := b.Commit(pebble.NoSync); err != nil {
		panic(fmt.Sprintf("fsm: commit batch at index %d: %v", lastIdx, err))
	}
	if a.policiesChanged {
		f.cache.reset()
	}
	for id, k := range a.keysChanged {
		f.cache.replaceKey(id, k)
	}
	for k, n := range a.counts {
		f.cache.setCount(k, n)
	}
	if a.accessChanged {
		f.rebuildAuthz()
	}
	if a.membersChanged {
		f.rebuildMembers()
	}
	if (a.accessChanged || a.membersChanged) && f.onAccessChange != nil {
		f.onAccessChange()
	}
	if a.auditHead != nil {
		f.auditSeq.Store(a.auditHead.seq)
	}
	if a.removedAt != 0 {
		f.noteMaterialRemoved(a.removedAt, batchEnd(b))
	}
	if a.diverged {
		f.diverged.Store(true)
		f.logger.Error("fsm: an audit checkpoint disagrees with this replica's chain: the replica has diverged and stops serving")
	}
	f.applied.Store(lastIdx)
	f.term.Store(lastTerm)
	f.notify()
	observeBatch(len(logs), time.Since(start))
	return out
}

func (f *FSM) applyCommand(a *applyCtx, l *raft.Log) Result {
	var cmd cofferv1.Command
	if err := proto.Unmarshal(l.Data, &cmd); err != nil {
		panic(fmt.Sprintf("fsm: undecodable command at index %d: %v", l.Index, err))
	}
	h, ok := handlers[cmd.GetType()]
	if !ok {
		panic(fmt.Sprintf("fsm: unknown command type %v at index %d", cmd.GetType(), l.Index))
	}
	if cmd.GetVersion() == 0 || cmd.GetVersion() > CommandVersion {
		panic(fmt.Sprintf("fsm: command %v version %d at index %d is not supported by this build (max %d)",
			cmd.GetType(), cmd.GetVersion(), l.Index, CommandVersion))
	}
	a.cmdAudit, a.version = nil, cmd.GetVersion()
	res := h(a, cmd.GetPayload(), l.Index)
	if a.cmdAudit != nil {
		a.appendAudit(a.cmdAudit, res)
		a.cmdAudit = nil
	}
	observeCommand(cmd.GetType(), res.Err)
	return res
}

// stateDigestDomain is hashed in front of the records by StateDigest, so
// that a state digest never equals a hash computed for another purpose.
const stateDigestDomain = "coffer-state-digest-v1\x00"

// digestCheckEvery is how many records StateDigest hashes between looks at
// its context.
const digestCheckEvery = 4096

// StateDigest returns the applied index and a SHA-256 digest of the
// replicated state at exactly that index. Both come from one Pebble
// snapshot, so no batch is applied between reading the index and the
// records.
//
// The digest covers every key Apply writes, in key order: key records and
// their indexes, request ids, policies, clients, ACL rules, revocations,
// member pins, audit entries, checkpoints, the chain head, the prune
// marker, the time index, the w/ request keys and the diverged marker.
// It leaves out the two keys that are not replicated state: m/applied
// (Apply's position in the log, returned as the index instead; its term is
// that entry's term, so it adds nothing) and m/restoring (a marker of this
// node's restore in progress). A snapshot that holds the marker is a store
// half restored, and is refused with ErrRestoring.
//
// The digest is SHA-256 over stateDigestDomain followed by, for every
// record, uvarint(len(key)) key uvarint(len(value)) value. Replicas at the
// same index, whether they applied the log or restored a snapshot, return
// the same digest; any change to a replicated record changes it.
//
// It reads the whole store, so it costs about as much as a snapshot
// stream: callers ask for it explicitly. It stops with ctx's error when ctx
// ends.
func (f *FSM) StateDigest(ctx context.Context) (uint64, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	if f.closed.Load() {
		return 0, sum, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return 0, sum, err
	}
	snap := f.db.NewSnapshot()
	defer snap.Close()
	idx := uint64(0)
	if v, err := get(snap, keyApplied); err == nil {
		i, _, ok := decodeApplied(v)
		if !ok {
			return 0, sum, fmt.Errorf("%w: applied index record has %d bytes", ErrCorrupt, len(v))
		}
		idx = i
	} else if err != ErrNotFound {
		return 0, sum, err
	}
	it, err := snap.NewIter(nil)
	if err != nil {
		return 0, sum, fmt.Errorf("fsm: iterate: %w", err)
	}
	defer it.Close()
	h := sha256.New()
	h.Write([]byte(stateDigestDomain))
	var lenBuf [binary.MaxVarintLen64]byte
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if bytes.Equal(k, keyRestoring) {
			return 0, sum, ErrRestoring
		}
		if bytes.Equal(k, keyApplied) {
			continue
		}
		if n++; n%digestCheckEvery == 0 {
			if err := ctx.Err(); err != nil {
				return 0, sum, err
			}
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return 0, sum, fmt.Errorf("fsm: read %q: %w", k, err)
		}
		for _, part := range [][]byte{k, v} {
			m := binary.PutUvarint(lenBuf[:], uint64(len(part)))
			h.Write(lenBuf[:m])
			h.Write(part)
		}
	}
	if err := it.Error(); err != nil {
		return 0, sum, fmt.Errorf("fsm: iterate: %w", err)
	}
	h.Sum(sum[:0])
	return idx, sum, nil
}

// wipe deletes every key.
func (f *FSM) wipe() error {
	if err := f.db.DeleteRange([]byte{0}, bytes.Repeat([]byte{0xff}, 16), pebble.Sync); err != nil {
		return fmt.Errorf("fsm: wipe: %w", err)
	}
	f.applied.Store(0)
	f.term.Store(0)
	return nil
}

// reader is what Pebble's DB, Snapshot and indexed Batch have in common.
type reader interface {
	Get(key []byte) ([]byte, io.Closer, error)
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

// get returns a copy of the value at key, or ErrNotFound.
func get(r reader, key []byte) ([]byte, error) {
	v, closer, err := r.Get(key)
	if err == pebble.ErrNotFound {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("fsm: get %q: %w", key, err)
	}
	out := append([]byte(nil), v...)
	_ = closer.Close()
	return out, nil
}

func getProto(r reader, key []byte, m proto.Message) error {
	v, err := get(r, key)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(v, m); err != nil {
		return fmt.Errorf("%w: record %q: %v", ErrCorrupt, key, err)
	}
	return nil
}

func has(r reader, key []byte) (bool, error) {
	_, closer, err := r.Get(key)
	if err == pebble.ErrNotFound {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("fsm: get %q: %w", key, err)
	}
	_ = closer.Close()
	return true, nil
}

// quietLogger routes Pebble's own messages to slog at debug level, except
// errors and fatal ones.
type quietLogger struct{ l *slog.Logger }

func (q quietLogger) Infof(format string, args ...interface{}) {
	q.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (q quietLogger) Errorf(format string, args ...interface{}) {
	q.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (q quietLogger) Fatalf(format string, args ...interface{}) {
	q.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf(format, args...))
}
