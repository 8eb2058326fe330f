package node

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/msgsig"
	"github.com/coffer-kms/coffer/transport"
)

// Audit on the request path.
//
// Every request that reaches the service layer gets exactly one audit entry.
// Its door (the gRPC interceptor for unary RPCs, Forward for a write another
// node accepted, auditedStream for streams) begins a request value
// (request.go) and hands it to the service code, which fills in what it
// learns (GKID, resource, policy). A write carries the entry inside its Raft
// command, so the change and its entry commit together (the request is
// marked carried). A linearizable key read commits its entry itself,
// undecided, and Apply decides it (decidedKey, fsm/reads.go). Everything
// else (stale and administrative reads, refusals, malformed requests,
// failures before a proposal) is committed by finishRequest through the
// batching auditor AFTER the handler has built its response and BEFORE the
// response leaves the node: if the entry cannot be committed, the caller
// gets Unavailable instead of the response (fail closed), so no key
// material is released without its entry. An entry recorded after a
// proposal or forward that may have committed anyway is a fallback
// (request.attempted).

const (
	// maxAuditBatch bounds the entries of one AUDIT_BATCH command.
	maxAuditBatch = 2048
	// auditTimeout bounds how long a request waits for its entry.
	auditTimeout = 5 * time.Second
)

// opNames maps RPC methods to the operation names audit entries use (the
// authorisation catalogue's names).
var opNames = map[string]string{
	"GenerateKey": "generate", "PutKey": "put", "GetKey": "get", "DescribeKey": "describe", "ListKeys": "list", "SetKeyState": "state",
	"RotateKey": "rotate", "RetireKeyVersion": "destroy", "AmendKeyUsePolicy": "policy.update",
	"Encrypt": "encrypt", "Decrypt": "decrypt", "GenerateDataKey": "datakey",
	"EncryptNew": "generate", "ReEncrypt": "reencrypt", "EncryptBatch": "encrypt", "DecryptBatch": "decrypt", "GenerateDataKeyBatch": "datakey",
	"CreatePolicy": "policy.create", "UpdatePolicy": "policy.update", "GetPolicy": "policy.read", "ListPolicies": "policy.read",
	"Status": "cluster.read", "LocalStatus": "cluster.read", "Snapshot": "snapshot.save", "Restore": "snapshot.restore",
	"RegisterClient": "client.manage", "SetClientActive": "client.manage", "RevokeCertificate": "client.manage",
	"GetClient": "client.read", "ListClients": "client.read",
	"Grant": "acl.manage", "RevokeGrant": "acl.manage", "ListGrants": "acl.read", "Check": "acl.read",
	"Query": "audit.read", "Export": "audit.export", "Match": "audit.read", "Head": "audit.read",
	"Prune": "audit.prune", "Follow": "audit.read",
	"PinNode": "cluster.manage", "RemoveNode": "cluster.manage", "TransferLeadership": "cluster.manage", "DrainNode": "cluster.manage",
	"GetCachePolicy": "cache.read", "SetCachePolicy": "cache.manage", "FlushCaches": "cache.flush", "Watch": "cache.read",
}

// RequestIDKey is the gRPC metadata header in which a caller may name any
// request (client.WithRequestID). The node records it as the request id of
// the request's audit entry when the message carries no request_id of its
// own; a message's own request_id wins. It is for correlation only: unlike
// GenerateKeyRequest.request_id it deduplicates nothing.
const RequestIDKey = msgsig.RequestIDHeader

// headerRequestID returns the request id the caller sent in the
// RequestIDKey header (its first value), fit for an audit entry: control
// characters dropped, invalid UTF-8 replaced, at most audit.MaxFieldLen
// bytes. It returns "" when there is none.
func headerRequestID(ctx context.Context) string {
	vals := metadata.ValueFromIncomingContext(ctx, RequestIDKey)
	if len(vals) == 0 {
		return ""
	}
	v := strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, strings.ToValidUTF8(vals[0], "\uFFFD"))
	return clip(v, audit.MaxFieldLen)
}

// requestTarget records the target a request names (key, resource, policy,
// client) before its handler runs, so that the entry of a request refused or
// failed early still says what was asked for. Handlers overwrite it with
// what they find: a key's stored resource and policy, for example.
func requestTarget(e *cofferv1.AuditEntry, req any) {
	set := func(field *string, v string) {
		if v != "" {
			*field = clip(v, audit.MaxFieldLen)
		}
	}
	if r, ok := req.(interface{ GetGkid() string }); ok {
		set(&e.Gkid, r.GetGkid())
	}
	if r, ok := req.(interface{ GetResource() string }); ok {
		set(&e.Resource, r.GetResource())
	}
	if r, ok := req.(interface{ GetResourcePattern() string }); ok {
		set(&e.Resource, r.GetResourcePattern())
	}
	if r, ok := req.(interface{ GetPolicy() string }); ok {
		set(&e.Policy, r.GetPolicy())
	}
	if r, ok := req.(interface{ GetClient() string }); ok {
		set(&e.Client, r.GetClient())
	}
	if r, ok := req.(interface{ GetSubject() string }); ok {
		set(&e.Client, r.GetSubject())
	}
	if r, ok := req.(interface{ GetName() string }); ok {
		switch e.GetOperation() {
		case string(authz.OpPolicyCreate), string(authz.OpPolicyUpdate), string(authz.OpPolicyRead):
			set(&e.Policy, r.GetName())
		case string(authz.OpClientManage), string(authz.OpClientRead):
			set(&e.Client, r.GetName())
		}
	}
}

// errInstallingSnapshot refuses a request on a node whose store holds part
// of the old state and part of the new one (fsm.Restoring).
func errInstallingSnapshot() error {
	return fmt.Errorf("%w: this node is installing a snapshot from the leader; retry, or send the request to another node", fsm.ErrRestoring)
}

// errAuditNotCommitted withholds a response whose audit entry could not
// be committed (fail closed).
func errAuditNotCommitted(cause error) error {
	return fmt.Errorf("%w: the request's audit entry could not be committed: %v", ErrNoLeader, cause)
}

// errReplicaDiverged is the refusal of a replica whose chain disagreed with
// a signed checkpoint.
func errReplicaDiverged() error {
	return fmt.Errorf("%w: this replica's audit chain disagrees with a signed checkpoint; it stopped serving (see the logs)", ErrDiverged)
}

// auditInterceptor is the gRPC door's audit step for unary RPCs: it
// begins the request, runs the handler with it, and finishes it.
func (s *service) auditInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	malformed := s.codec.takeMalformed(req)
	if isInternal(info.FullMethod) {
		if malformed != nil {
			return nil, malformed
		}
		return handler(ctx, req)
	}
	method := path.Base(info.FullMethod)
	if method == "LocalStatus" && malformed == nil {
		// Members asking each other for status are part of another
		// request (Status), which is audited; the handler audits a node
		// identity it refuses (requireMember).
		if id, err := transport.IdentityFromContext(ctx); err == nil && id.Kind == transport.KindNode {
			return handler(ctx, req)
		}
	}
	if s.fsm.Diverged() {
		return nil, errReplicaDiverged()
	}
	r := s.beginRequest(ctx, method, req)
	var resp any
	err := s.admit(r)
	if err == nil {
		err = malformed
	}
	if err == nil {
		err = s.checkRequestSignature(ctx, info.FullMethod, r, req)
	}
	if err == nil && s.fsm.Restoring() && path.Dir(info.FullMethod) != "/"+cofferv1.ClusterService_ServiceDesc.ServiceName {
		// The store holds part of the old state and part of the new one:
		// nothing read from it may be served (cluster status may).
		err = errInstallingSnapshot()
	}
	if err == nil {
		resp, err = handler(context.WithValue(ctx, requestKey{}, r), req)
	}
	if ferr := s.finishRequest(ctx, r, method == "Status", err); ferr != nil {
		return nil, ferr
	}
	return resp, err
}

// beginRequest starts a request that reached this node's service layer:
// its caller and its audit entry, with what the message asks for (the
// operation of method, the target it names, its consistency and request
// id: the message's own, else the caller's RequestIDKey header).
func (s *service) beginRequest(ctx context.Context, method string, req any) *request {
	c, authErr := authenticate(ctx)
	e := &cofferv1.AuditEntry{TimeUnixNano: time.Now().UnixNano(), Node: s.cfg.ID, Operation: opNames[method],
		RequestId: headerRequestID(ctx), Caller: "unauthenticated"}
	if e.Operation == "" {
		e.Operation = method
	}
	if authErr == nil {
		e.Caller = c.String()
	}
	r := &request{caller: c, authErr: authErr, entry: e}
	if m, ok := req.(interface{ GetConsistency() cofferv1.Consistency }); ok && validConsistency(m.GetConsistency()) == nil {
		// An unknown value is refused by the handler, and recorded in the
		// reason; the entry keeps only values it can hold.
		r.entry.Consistency = m.GetConsistency()
	}
	if m, ok := req.(interface{ GetRequestId() string }); ok && m.GetRequestId() != "" {
		// The message's own id (a create's idempotency id) wins over the
		// header's.
		r.entry.RequestId = clip(m.GetRequestId(), audit.MaxFieldLen)
	}
	requestTarget(r.entry, req)
	return r
}

// admit checks who is calling before anything they ask is looked at: a
// caller without a verified certificate, or with a revoked one, is refused
// here (Unauthenticated), whatever the request holds. Only these refusals
// come first: the deny list only grows, so a node that has not yet applied
// the latest changes can still trust it, whereas whether a client is
// registered, active or granted is decided by the operation's own
// authorisation, linearized where the operation asks for it.
func (s *service) admit(r *request) error {
	if r.authErr != nil {
		return r.authErr
	}
	if snap := s.fsm.Authz(); snap != nil && snap.Revoked(r.caller.serial) {
		metricDenied.WithLabelValues(r.entry.GetOperation()).Inc()
		return fmt.Errorf("%w: certificate revoked", ErrUnauthenticated)
	}
	return nil
}

// finishRequest is the one place that guarantees a request its audit entry:
// unless a command or the leader carried it, it commits the entry with the
// request's outcome (err) through the batching auditor, after the response
// was built and before it leaves the node. If that fails the caller gets
// Unavailable instead of the response (fail closed): the error returned
// replaces the response. A cluster status (deferrable) that finds no leader
// defers its entry instead, so that an operator can see a cluster that lost
// its quorum.
func (s *service) finishRequest(ctx context.Context, r *request, deferrable bool, err error) error {
	if r.carried {
		return nil
	}
	setOutcome(r.entry, err)
	if deferrable && err == nil && !s.replica.hasLeader() {
		s.sideAudit.record(r.entry)
		return nil
	}
	cerr := s.commitRequestAudit(ctx, r)
	if cerr == nil {
		return nil
	}
	if deferrable && err == nil {
		s.replica.raftLog().Warn("audit entry of a cluster status deferred until a leader is back", "err", cerr)
		s.sideAudit.record(r.entry)
		return nil
	}
	s.replica.raftLog().Error("audit entry not committed; response withheld", "op", r.entry.GetOperation(), "err", cerr)
	metricAuditFailures.Inc()
	if err == nil {
		return errAuditNotCommitted(cerr)
	}
	return nil
}

func isInternal(fullMethod string) bool {
	return path.Dir(fullMethod) == "/"+cofferv1.InternalService_ServiceDesc.ServiceName
}

// setOutcome records how a request ended.
func setOutcome(e *cofferv1.AuditEntry, err error) {
	if err == nil {
		e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED
		return
	}
	st := status.Convert(toStatus(err))
	switch st.Code() {
	case codes.Unauthenticated, codes.PermissionDenied:
		e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED
	default:
		e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED
	}
	e.Reason = clip(st.Code().String()+": "+st.Message(), audit.MaxFieldLen)
}

func clip(s string, n int) string { return audit.Clip(s, n) }

// auditedStream gives a streaming RPC its one audit entry, as the
// unary door does. It authenticates the caller, linearizes
// and checks the op grant, then runs body, which checks the request and
// calls grant before it sends anything: grant commits the entry as granted,
// and an error from it means nothing may be sent (fail closed). If the
// stream fails before grant succeeded, the entry records that refusal or
// failure; a stream that fails or is abandoned later keeps its granted entry
// as its only one.
func (s *service) auditedStream(ctx context.Context, method string, op authz.Op, body func(grant func() error) error) error {
	if s.fsm.Diverged() {
		return errReplicaDiverged()
	}
	r := s.beginRequest(ctx, method, nil)
	grant := func() error {
		setOutcome(r.entry, nil)
		if err := s.commitRequestAudit(ctx, r); err != nil {
			metricAuditFailures.Inc()
			return errAuditNotCommitted(err)
		}
		r.carried = true // committed: the stream's one entry, whatever follows
		return nil
	}
	err := s.admit(r)
	if err == nil && s.fsm.Restoring() {
		// As for unary requests: nothing read from a store that holds part
		// of the old state and part of the new one is served.
		err = errInstallingSnapshot()
	}
	if err == nil {
		err = s.replica.linearize(ctx, cofferv1.Consistency_CONSISTENCY_LINEARIZABLE)
	}
	if err == nil {
		err = s.authorize(r.caller, op, "")
	}
	if err == nil {
		err = body(grant)
	}
	if ferr := s.finishRequest(ctx, r, false, err); ferr != nil && err == nil {
		return ferr
	}
	return err
}

// commitAudit commits one entry through the batching auditor and waits
// until it is committed.
func (s *service) commitAudit(ctx context.Context, e *cofferv1.AuditEntry) error {
	return s.commitBatch(ctx, auditBatch{entries: []*cofferv1.AuditEntry{e}})
}

// commitRequestAudit commits a request's entry, as a fallback if the
// request's change may have committed with its own entry.
func (s *service) commitRequestAudit(ctx context.Context, r *request) error {
	b := auditBatch{entries: []*cofferv1.AuditEntry{r.entry}}
	if r.attempted {
		b.fallback = []uint32{0}
	}
	return s.commitBatch(ctx, b)
}

func (s *service) commitBatch(ctx context.Context, b auditBatch) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	start := time.Now()
	_, _, err := s.auditor.submit(ctx, b)
	metricStage.WithLabelValues("audit_commit").Observe(time.Since(start).Seconds())
	return err
}

// auditBatch is what the auditor commits for one request, or for one round
// of many: entries, the reads among them Apply decides, and the fallbacks
// among them (see cofferv1.AuditBatchCommand).
type auditBatch struct {
	entries  []*cofferv1.AuditEntry
	decide   []*cofferv1.ReadDecision
	fallback []uint32
}

// add appends o to b, renumbering o's lists.
func (b *auditBatch) add(o auditBatch) {
	base := uint32(len(b.entries))
	for _, d := range o.decide {
		b.decide = append(b.decide, &cofferv1.ReadDecision{Entry: base + d.GetEntry(), CertSerial: d.GetCertSerial()})
	}
	for _, i := range o.fallback {
		b.fallback = append(b.fallback, base+i)
	}
	b.entries = append(b.entries, o.entries...)
}

// auditor batches entries from concurrent requests into one Raft entry per
// round. Up to maxAuditRounds rounds are in flight at once; entries that
// arrive meanwhile collect into the next round. On the leader, the batches
// followers send (AppendAudit) queue here too.
type auditor struct {
	replica  replica
	mu       sync.Mutex
	pending  []*auditWaiter
	queued   int
	running  bool
	inflight chan struct{}
}

// maxAuditRounds bounds audit rounds in flight per node. The leader merges
// the batches followers send it into its own rounds (AppendAudit), so the
// whole cluster has at most this many AUDIT_BATCH proposals in flight. Few
// rounds make big batches, and every Raft entry costs each replica a log
// write, an fsync and a chain of goroutine wake-ups (NOTES.md, "Figures
// behind constants", has the measurements that chose one).
const maxAuditRounds = 1

type auditWaiter struct {
	batch auditBatch
	done  chan auditResult
}

type auditResult struct {
	index uint64
	reads []fsm.ReadResult
	err   error
}

// maxAuditQueue bounds entries waiting for a round.
const maxAuditQueue = 65536

// submit commits b and returns the log index that holds it and Apply's
// decisions on its decided reads, in the order of b.decide.
func (a *auditor) submit(ctx context.Context, b auditBatch) (uint64, []fsm.ReadResult, error) {
	for _, e := range b.entries {
		if err := audit.Validate(e); err != nil {
			return 0, nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
		}
	}
	if err := fsm.ValidateBatch(b.entries, b.decide, b.fallback); err != nil {
		return 0, nil, err
	}
	w := &auditWaiter{batch: b, done: make(chan auditResult, 1)}
	a.mu.Lock()
	if a.queued+len(b.entries) > maxAuditQueue {
		a.mu.Unlock()
		return 0, nil, fmt.Errorf("%w: audit queue full", ErrOverloaded)
	}
	a.pending = append(a.pending, w)
	a.queued += len(b.entries)
	if !a.running {
		a.running = true
		go a.loop()
	}
	a.mu.Unlock()
	select {
	case r := <-w.done:
		return r.index, r.reads, r.err
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	}
}

func (a *auditor) loop() {
	for {
		a.inflight <- struct{}{} // a round slot; released when the round ends
		a.mu.Lock()
		var round []*auditWaiter
		var b auditBatch
		for len(a.pending) > 0 && (len(b.entries) == 0 || len(b.entries)+len(a.pending[0].batch.entries) <= maxAuditBatch) {
			w := a.pending[0]
			a.pending = a.pending[1:]
			round = append(round, w)
			b.add(w.batch)
		}
		a.queued -= len(b.entries)
		if len(b.entries) > 0 {
			metricRoundEntries.Observe(float64(len(b.entries)))
		}
		if len(round) == 0 {
			a.running = false
			a.mu.Unlock()
			<-a.inflight
			return
		}
		a.mu.Unlock()
		go func() {
			defer func() { <-a.inflight }()
			ctx, cancel := context.WithTimeout(context.Background(), auditTimeout)
			start := time.Now()
			idx, reads, err := a.append(ctx, b)
			metricStage.WithLabelValues("audit_round").Observe(time.Since(start).Seconds())
			cancel()
			if err == nil && len(reads) != len(b.decide) {
				err = fmt.Errorf("audit round: %d decisions for %d reads", len(reads), len(b.decide))
			}
			for _, w := range round {
				r := auditResult{index: idx, err: err}
				if err == nil {
					n := len(w.batch.decide)
					r.reads, reads = reads[:n], reads[n:]
				}
				w.done <- r
			}
		}()
	}
}

// internalAppendAudit commits entries that a follower collected.
func (s *service) internalAppendAudit(ctx context.Context, req *cofferv1.AppendAuditRequest) (*cofferv1.AppendAuditResponse, error) {
	if _, err := s.replica.requireMember(ctx, doorAppendAudit, fmt.Sprintf("%d entries", len(req.GetEntries()))); err != nil {
		return nil, err
	}
	if len(req.GetEntries()) == 0 || len(req.GetEntries()) > maxAuditBatch {
		return nil, fmt.Errorf("%w: 1..%d entries per call", ErrInvalidArgument, maxAuditBatch)
	}
	if !s.replica.IsLeader() {
		return nil, s.replica.notLeader(fmt.Errorf("audit entries reached a follower"))
	}
	// The follower's batch joins this node's next round (submit validates
	// it), so followers' rounds add no Raft entries of their own.
	idx, reads, err := s.auditor.submit(ctx, auditBatch{entries: req.GetEntries(), decide: req.GetDecide(), fallback: req.GetFallback()})
	if err != nil {
		return nil, err
	}
	resp := &cofferv1.AppendAuditResponse{Index: idx, Reads: make([]*cofferv1.ReadOutcome, len(reads))}
	for i, r := range reads {
		resp.Reads[i] = &cofferv1.ReadOutcome{Refusal: r.Refusal, Detail: r.Detail, Seq: r.Seq, KeyRevision: r.Revision, KeyVersion: r.KeyVersion}
	}
	return resp, nil
}

// appendAudit commits b: as an AUDIT_BATCH command on the leader, or
// through the leader's AppendAudit from a follower.
func (a *auditor) append(ctx context.Context, b auditBatch) (uint64, []fsm.ReadResult, error) {
	if a.replica.IsLeader() {
		data, err := fsm.Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, &cofferv1.AuditBatchCommand{Entries: b.entries, Decide: b.decide, Fallback: b.fallback})
		if err != nil {
			return 0, nil, err
		}
		res, idx, err := a.replica.proposeIndexed(ctx, data)
		if err != nil {
			return 0, nil, err
		}
		if res.Err != nil {
			return 0, nil, res.Err
		}
		return idx, res.Reads, nil
	}
	cl, _, err := a.replica.leaderClient()
	if errors.Is(err, errSelfLeader) {
		return a.append(ctx, b)
	}
	if err != nil {
		return 0, nil, err
	}
	resp, err := cl.AppendAudit(ctx, &cofferv1.AppendAuditRequest{Entries: b.entries, Decide: b.decide, Fallback: b.fallback})
	if err != nil {
		return 0, nil, err
	}
	reads := make([]fsm.ReadResult, len(resp.GetReads()))
	for i, r := range resp.GetReads() {
		reads[i] = fsm.ReadResult{Refusal: r.GetRefusal(), Detail: r.GetDetail(), Seq: r.GetSeq(), Revision: r.GetKeyRevision(), KeyVersion: r.GetKeyVersion()}
	}
	return resp.GetIndex(), reads, nil
}
