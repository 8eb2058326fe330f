package fsm

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
)

// handler applies one decoded command payload to the batch. It returns
// business failures in Result.Err and panics only on conditions that mean the
// replica can no longer be trusted (undecodable payload, storage failure).
type handler func(a *applyCtx, payload []byte, index uint64) Result

// applyCtx is the state of one ApplyBatch call.
type applyCtx struct {
	f *FSM
	b *pebble.Batch
	// policiesChanged is set once a command in this batch wrote a policy;
	// from then on the batch reads policies from itself, not the cache.
	policiesChanged bool
	// accessChanged is set once a command wrote a client, rule or
	// revocation: the authorisation snapshot is rebuilt after the commit.
	accessChanged bool
	// membersChanged is set once a command wrote a node pin: the members
	// view is rebuilt after the commit.
	membersChanged bool
	// batchDecisions is the decision snapshot as of this point of the
	// batch, once an access change made the FSM's own one stale.
	batchDecisions *authz.Snapshot
	// keysChanged holds the key records this batch replaced (a state
	// change): later commands of the batch read them from here, and the
	// key cache takes them after the commit.
	keysChanged map[string]*cofferv1.KeyRecord
	// counts holds the encryption counts this batch wrote: later commands
	// of the batch read them from here, and the cache takes them after the
	// commit.
	counts map[encKey]uint64
	// removedAt is the newest index in this batch whose command removed
	// key material (materialRemoved, shred.go).
	removedAt uint64

	// diverged is set when a checkpoint disagreed with this replica.
	diverged bool
	// cmdAudit is the audit entry of the command being applied, and
	// version its payload version.
	cmdAudit *cofferv1.AuditEntry
	version  uint32
	// auditHead is the chain head as of this point of the batch, and
	// timeIdx the time index state (both loaded on first use, by
	// loadAudit); timeIdxDirty is set once timeIdx changed.
	auditHead    *auditHead
	timeIdx      *timeIndex
	timeIdxDirty bool
}

// noteAccessChange records that a client, rule or revocation changed.
func (a *applyCtx) noteAccessChange() {
	a.accessChanged = true
	a.batchDecisions = nil
}

// policy reads a policy as of this point of the batch.
func (a *applyCtx) policy(name string) (*cofferv1.PolicyRecord, error) {
	if !a.policiesChanged {
		return a.f.Policy(name)
	}
	var p cofferv1.PolicyRecord
	if err := getProto(a.b, policyKey(name), &p); err != nil {
		if err == ErrNotFound {
			return nil, fmt.Errorf("%w: %q", ErrPolicyNotFound, name)
		}
		return nil, err
	}
	return &p, nil
}

func (a *applyCtx) setPolicy(p *cofferv1.PolicyRecord) {
	mustSet(a.b, policyKey(p.GetName()), p)
	a.policiesChanged = true
}

// handlers is the one dispatch table for command types.
var handlers = map[cofferv1.CommandType]handler{
	cofferv1.CommandType_COMMAND_TYPE_INIT_CLUSTER:       applyInitCluster,
	cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY:         applyCreateKey,
	cofferv1.CommandType_COMMAND_TYPE_SET_KEY_STATE:      applySetKeyState,
	cofferv1.CommandType_COMMAND_TYPE_CHANGE_KEY:         applyChangeKey,
	cofferv1.CommandType_COMMAND_TYPE_CREATE_POLICY:      applyCreatePolicy,
	cofferv1.CommandType_COMMAND_TYPE_UPDATE_POLICY:      applyUpdatePolicy,
	cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT:         applyPutClient,
	cofferv1.CommandType_COMMAND_TYPE_PUT_ACL_RULE:       applyPutAclRule,
	cofferv1.CommandType_COMMAND_TYPE_DELETE_ACL_RULE:    applyDeleteAclRule,
	cofferv1.CommandType_COMMAND_TYPE_REVOKE_CERTIFICATE: applyRevokeCertificate,
	cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH:        applyAuditBatch,
	cofferv1.CommandType_COMMAND_TYPE_AUDIT_CHECKPOINT:   applyAuditCheckpoint,
	cofferv1.CommandType_COMMAND_TYPE_AUDIT_PRUNE:        applyAuditPrune,
	cofferv1.CommandType_COMMAND_TYPE_PIN_NODE:           applyPinNode,
	cofferv1.CommandType_COMMAND_TYPE_SET_CACHE_POLICY:   applySetCachePolicy,
	cofferv1.CommandType_COMMAND_TYPE_FLUSH_CACHES:       applyFlushCaches,
}

// Encode builds the Raft entry for a command. The payload is marshalled
// deterministically so that equal commands give equal bytes.
func Encode(t cofferv1.CommandType, payload proto.Message) ([]byte, error) {
	if _, ok := handlers[t]; !ok {
		return nil, fmt.Errorf("%w: unknown command type %v", ErrInvalidCommand, t)
	}
	det := proto.MarshalOptions{Deterministic: true}
	p, err := det.Marshal(payload)
	if err != nil {
		return nil, fmt.Errorf("fsm: marshal %v payload: %w", t, err)
	}
	return det.Marshal(&cofferv1.Command{Type: t, Version: commandVersion(payload), Payload: p})
}

// commandVersion is the oldest schema version that can apply payload (see
// CommandVersion).
func commandVersion(payload proto.Message) uint32 {
	if _, ok := payload.(*cofferv1.PinNodeCommand); ok {
		return NodePinVersion
	}
	switch payload.(type) {
	case *cofferv1.SetKeyStateCommand, *cofferv1.ChangeKeyCommand:
		return CryptoVersion
	case *cofferv1.SetCachePolicyCommand, *cofferv1.FlushCachesCommand:
		return CacheVersion
	case *cofferv1.PutClientCommand:
		if payload.(*cofferv1.PutClientCommand).GetClient().GetCachePolicy() != nil {
			// Apply checks the policy from version 7 on: an older replica
			// would store one that a newer one refuses.
			return CacheVersion
		}
	}
	if c, ok := payload.(*cofferv1.AuditBatchCommand); ok {
		v := batchVersion(c.GetEntries(), c.GetDecide())
		if len(c.GetDecide()) > 0 || len(c.GetFallback()) > 0 {
			v = max(v, 2)
		}
		if v > 0 {
			return v
		}
	}
	if ae, ok := payload.(interface{ GetAudit() *cofferv1.AuditEntry }); ok && ae.GetAudit() != nil {
		return 3
	}
	if c, ok := payload.(*cofferv1.AuditCheckpointCommand); ok && c.GetStartTimeIndex() {
		return TimeIndexVersion
	}
	return 1
}

// decode unmarshals a payload (a committed payload that does not decode
// stops the node) and remembers the audit entry it carries, which
// applyCommand links into the chain once the handler has decided.
//
// From payload version 3 on, it returns ErrAbandoned, before the handler
// changes anything, when the request already has its entry: a fallback
// recorded by the node that gave up on it (or the same command applied
// before) was linked first. The
// change is then not applied and no second entry is linked, so the one
// entry, which says the request failed, stays true.
func (a *applyCtx) decode(payload []byte, m proto.Message, index uint64) error {
	if err := proto.Unmarshal(payload, m); err != nil {
		panic(fmt.Sprintf("fsm: undecodable %T payload at index %d: %v", m, index, err))
	}
	ae, ok := m.(interface{ GetAudit() *cofferv1.AuditEntry })
	if !ok || ae.GetAudit() == nil {
		return nil
	}
	e := ae.GetAudit()
	if a.version >= 3 && namesRequest(e) && mustHas(a.b, changeKey(e)) {
		return fmt.Errorf("%w (request %q of %s on %s)", ErrAbandoned, e.GetRequestId(), e.GetCaller(), e.GetNode())
	}
	a.cmdAudit = e
	return nil
}

// namesRequest reports whether e identifies one request: an entry a node
// started for a request always has its node and time. A command proposed
// outside an audited request carries an empty entry, which names none.
func namesRequest(e *cofferv1.AuditEntry) bool {
	return e.GetNode() != "" && e.GetTimeUnixNano() != 0
}

func mustSet(b *pebble.Batch, key []byte, m proto.Message) {
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("fsm: marshal %T: %v", m, err))
	}
	mustSetRaw(b, key, v)
}

func mustSetRaw(b *pebble.Batch, key, value []byte) {
	if err := b.Set(key, value, nil); err != nil {
		panic(fmt.Sprintf("fsm: batch set %q: %v", key, err))
	}
}

func mustHas(b *pebble.Batch, key []byte) bool {
	ok, err := has(b, key)
	if err != nil {
		panic(err.Error())
	}
	return ok
}

func applyInitCluster(a *applyCtx, payload []byte, index uint64) Result {
	b := a.b
	var c cofferv1.InitClusterCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	var existing cofferv1.ClusterInfo
	switch err := getProto(b, keyCluster, &existing); err {
	case nil:
		return Result{Err: ErrAlreadyInitialized, Cluster: &existing}
	case ErrNotFound:
	default:
		panic(err.Error())
	}
	if c.GetInfo().GetClusterId() == "" || c.GetDefaultPolicy().GetName() == "" {
		return Result{Err: fmt.Errorf("%w: init needs a cluster id and a default policy", ErrInvalidCommand)}
	}
	if err := checkPolicy(c.GetDefaultPolicy()); err != nil {
		return Result{Err: err}
	}
	for _, cl := range c.GetBootstrapClients() {
		if err := authz.ValidateClient(cl); err != nil {
			return Result{Err: fmt.Errorf("%w: bootstrap client: %v", ErrInvalidCommand, err)}
		}
	}
	for _, r := range c.GetBootstrapRules() {
		if err := authz.ValidateRule(r); err != nil {
			return Result{Err: fmt.Errorf("%w: bootstrap rule: %v", ErrInvalidCommand, err)}
		}
	}
	mustSet(b, keyCluster, c.GetInfo())
	if !mustHas(b, policyKey(c.GetDefaultPolicy().GetName())) {
		a.setPolicy(c.GetDefaultPolicy())
	}
	for _, cl := range c.GetBootstrapClients() {
		mustSet(b, clientKey(cl.GetName()), cl)
		a.noteAccessChange()
	}
	for _, r := range c.GetBootstrapRules() {
		mustSet(b, ruleKey(r.GetId()), r)
		a.noteAccessChange()
	}
	return Result{Cluster: c.GetInfo(), Policy: c.GetDefaultPolicy()}
}

func checkPolicy(p *cofferv1.PolicyRecord) error {
	if p.GetName() == "" {
		return fmt.Errorf("%w: policy name is empty", ErrInvalidCommand)
	}
	found := false
	for _, k := range p.GetKeks() {
		if k.GetVersion() == p.GetKekVersion() && len(k.GetWrapped()) > 0 {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("%w: policy %q has no wrapped kek for its current version %d", ErrInvalidCommand, p.GetName(), p.GetKekVersion())
	}
	return nil
}

func applyCreatePolicy(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.CreatePolicyCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	if err := checkPolicy(c.GetPolicy()); err != nil {
		return Result{Err: err}
	}
	if mustHas(a.b, policyKey(c.GetPolicy().GetName())) {
		return Result{Err: fmt.Errorf("%w: %q", ErrPolicyExists, c.GetPolicy().GetName())}
	}
	a.setPolicy(c.GetPolicy())
	return Result{Policy: c.GetPolicy()}
}

func applyCreateKey(a *applyCtx, payload []byte, index uint64) Result {
	b := a.b
	var c cofferv1.CreateKeyCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	k := c.GetKey()
	if k.GetGkid() == "" || k.GetPolicy() == "" || k.GetResource() == "" || len(k.GetWrappedMaterial()) == 0 {
		return Result{Err: fmt.Errorf("%w: key record needs gkid, policy, resource and material", ErrInvalidCommand)}
	}
	if c.GetRequestId() != "" {
		if gk, err := get(b, requestKey(k.GetOwner(), c.GetRequestId())); err == nil {
			var first cofferv1.KeyRecord
			if err := getProto(b, keyKey(string(gk)), &first); err != nil {
				panic(fmt.Sprintf("fsm: request %q maps to missing key %q: %v", c.GetRequestId(), gk, err))
			}
			return Result{Key: &first, Duplicate: true}
		} else if err != ErrNotFound {
			panic(err.Error())
		}
	}
	pol, err := a.policy(k.GetPolicy())
	if errors.Is(err, ErrPolicyNotFound) {
		return Result{Err: err}
	} else if err != nil {
		panic(err.Error())
	}
	if !hasKEKVersion(pol, k.GetKekVersion()) {
		return Result{Err: fmt.Errorf("%w: policy %q has no kek version %d", ErrKEKVersionUnknown, k.GetPolicy(), k.GetKekVersion())}
	}
	if mustHas(b, keyKey(k.GetGkid())) {
		return Result{Err: fmt.Errorf("%w: %s", ErrKeyExists, k.GetGkid())}
	}
	mustSet(b, keyKey(k.GetGkid()), k)
	mustSetRaw(b, concat(byPolicyPrefix(k.GetPolicy()), []byte(k.GetGkid())), nil)
	mustSetRaw(b, concat(byResourcePrefix(k.GetResource()), []byte(k.GetGkid())), nil)
	if c.GetRequestId() != "" {
		mustSetRaw(b, requestKey(k.GetOwner(), c.GetRequestId()), []byte(k.GetGkid()))
	}
	return Result{Key: k}
}

func hasKEKVersion(p *cofferv1.PolicyRecord, v uint32) bool {
	for _, k := range p.GetKeks() {
		if k.GetVersion() == v {
			return true
		}
	}
	return false
}

func applyPutClient(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.PutClientCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	cl := c.GetClient()
	if err := authz.ValidateClient(cl); err != nil {
		return Result{Err: fmt.Errorf("%w: %v", ErrInvalidCommand, err)}
	}
	if p := cl.GetCachePolicy(); p != nil && a.version >= CacheVersion {
		if err := CheckCachePolicy(p); err != nil {
			return Result{Err: fmt.Errorf("%w: client %q: %w", ErrInvalidCommand, cl.GetName(), err)}
		}
	}
	var cur cofferv1.ClientRecord
	switch err := getProto(a.b, clientKey(cl.GetName()), &cur); {
	case err == ErrNotFound:
		if c.GetExpectedRevision() != 0 {
			return Result{Err: fmt.Errorf("%w: client %q", ErrClientNotFound, cl.GetName())}
		}
	case err != nil:
		panic(err.Error())
	case c.GetExpectedRevision() == 0:
		return Result{Err: fmt.Errorf("%w: %q", ErrClientExists, cl.GetName())}
	case c.GetExpectedRevision() != cur.GetRevision():
		return Result{Err: fmt.Errorf("%w: client %q is at revision %d, not %d", ErrConflict, cl.GetName(), cur.GetRevision(), c.GetExpectedRevision())}
	}
	if cl.GetRevision() != c.GetExpectedRevision()+1 {
		return Result{Err: fmt.Errorf("%w: client revision must be %d", ErrInvalidCommand, c.GetExpectedRevision()+1)}
	}
	mustSet(a.b, clientKey(cl.GetName()), cl)
	a.noteAccessChange()
	return Result{Client: cl}
}

func applyPutAclRule(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.PutAclRuleCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	if err := authz.ValidateRule(c.GetRule()); err != nil {
		return Result{Err: fmt.Errorf("%w: %v", ErrInvalidCommand, err)}
	}
	if mustHas(a.b, ruleKey(c.GetRule().GetId())) {
		return Result{Err: fmt.Errorf("%w: %q", ErrRuleExists, c.GetRule().GetId())}
	}
	mustSet(a.b, ruleKey(c.GetRule().GetId()), c.GetRule())
	a.noteAccessChange()
	return Result{Rule: c.GetRule()}
}

func applyDeleteAclRule(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.DeleteAclRuleCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	if !mustHas(a.b, ruleKey(c.GetId())) {
		return Result{Err: fmt.Errorf("%w: %q", ErrRuleNotFound, c.GetId())}
	}
	if err := a.b.Delete(ruleKey(c.GetId()), nil); err != nil {
		panic(fmt.Sprintf("fsm: batch delete: %v", err))
	}
	a.noteAccessChange()
	return Result{}
}

func applyRevokeCertificate(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.RevokeCertificateCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	serial, err := authz.CanonicalSerial(c.GetCertificate().GetSerial())
	if err != nil || serial != c.GetCertificate().GetSerial() {
		return Result{Err: fmt.Errorf("%w: certificate serial must be canonical lowercase hex", ErrInvalidCommand)}
	}
	mustSet(a.b, revokedKey(serial), c.GetCertificate())
	a.noteAccessChange()
	return Result{}
}

func applyUpdatePolicy(a *applyCtx, payload []byte, index uint64) Result {
	var c cofferv1.UpdatePolicyCommand
	if err := a.decode(payload, &c, index); err != nil {
		return Result{Err: err}
	}
	p := c.GetPolicy()
	if err := checkPolicy(p); err != nil {
		return Result{Err: err}
	}
	cur, err := a.policy(p.GetName())
	if errors.Is(err, ErrPolicyNotFound) {
		return Result{Err: err}
	} else if err != nil {
		panic(err.Error())
	}
	if cur.GetRevision() != c.GetExpectedRevision() || p.GetRevision() != cur.GetRevision()+1 {
		return Result{Err: fmt.Errorf("%w: policy %q is at revision %d", ErrConflict, p.GetName(), cur.GetRevision())}
	}
	// Every KEK version the policy had must still be there: old keys need
	// them.
	for _, k := range cur.GetKeks() {
		if !hasKEKVersion(p, k.GetVersion()) {
			return Result{Err: fmt.Errorf("%w: update drops kek version %d of policy %q", ErrInvalidCommand, k.GetVersion(), p.GetName())}
		}
	}
	a.setPolicy(p)
	return Result{Policy: p}
}
