package node

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/custody"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/gkid"
	"github.com/coffer-kms/coffer/transport"
)

// Request limits (documented in the API reference).
const (
	MaxRequestIDLen = 64
	MaxResourceLen  = authz.MaxResourceLen
	MaxPolicyLen    = 64
	MaxMaterialLen  = 64
	DefaultPageSize = 100
)

var (
	requestIDRE = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,64}$`)
	policyRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
)

// materialLen returns the key length for an algorithm (generation) and the
// accepted import range.
func materialLen(a cofferv1.Algorithm) (gen, minLen, maxLen int, err error) {
	switch a {
	case cofferv1.Algorithm_ALGORITHM_AES_128:
		return 16, 16, 16, nil
	case cofferv1.Algorithm_ALGORITHM_AES_192:
		return 24, 24, 24, nil
	case cofferv1.Algorithm_ALGORITHM_AES_256:
		return 32, 32, 32, nil
	case cofferv1.Algorithm_ALGORITHM_HMAC_SHA256:
		return 32, 32, MaxMaterialLen, nil
	}
	return 0, 0, 0, fmt.Errorf("%w: unsupported algorithm %v", ErrInvalidArgument, a)
}

func validateResource(r string) error {
	if err := authz.ValidateResource(r); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	return nil
}

func validatePolicyName(p string) error {
	if !policyRE.MatchString(p) {
		return fmt.Errorf("%w: policy name %q must be 1-%d of [a-z0-9._-]", ErrInvalidArgument, p, MaxPolicyLen)
	}
	return nil
}

func validateGKID(s string) error {
	if err := gkid.Validate(s); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return nil
}

// createSpec is a validated generate or put request.
type createSpec struct {
	requestID string
	policy    string
	resource  string
	algorithm cofferv1.Algorithm
	material  []byte // nil: generate
	// activateAt is when a key created pre-active becomes active (zero:
	// created active).
	activateAt time.Time
}

func newCreateSpec(requestID, policy, resource string, alg cofferv1.Algorithm, material []byte, put bool, activateAt *timestamppb.Timestamp) (*createSpec, error) {
	if requestID != "" && !requestIDRE.MatchString(requestID) {
		return nil, fmt.Errorf("%w: request_id must be 1-%d of [A-Za-z0-9._~-]", ErrInvalidArgument, MaxRequestIDLen)
	}
	if policy == "" {
		policy = DefaultPolicy
	}
	if err := validatePolicyName(policy); err != nil {
		return nil, err
	}
	if err := validateResource(resource); err != nil {
		return nil, err
	}
	if alg == cofferv1.Algorithm_ALGORITHM_UNSPECIFIED {
		alg = cofferv1.Algorithm_ALGORITHM_AES_256
	}
	_, minLen, maxLen, err := materialLen(alg)
	if err != nil {
		return nil, err
	}
	if put && (len(material) < minLen || len(material) > maxLen) {
		return nil, fmt.Errorf("%w: %v material must be %d..%d bytes, got %d", ErrInvalidArgument, alg, minLen, maxLen, len(material))
	}
	if !put && len(material) != 0 {
		return nil, fmt.Errorf("%w: generate takes no material", ErrInvalidArgument)
	}
	spec := &createSpec{requestID: requestID, policy: policy, resource: resource, algorithm: alg, material: material}
	if activateAt != nil {
		if err := activateAt.CheckValid(); err != nil || activateAt.AsTime().UnixNano() <= 0 {
			return nil, fmt.Errorf("%w: activate_at is not a valid time after 1970", ErrInvalidArgument)
		}
		spec.activateAt = activateAt.AsTime()
	}
	return spec, nil
}

func generateSpec(r *cofferv1.GenerateKeyRequest) (*createSpec, error) {
	return newCreateSpec(r.GetRequestId(), r.GetPolicy(), r.GetResource(), r.GetAlgorithm(), nil, false, r.GetActivateAt())
}

func putSpec(r *cofferv1.PutKeyRequest) (*createSpec, error) {
	return newCreateSpec(r.GetRequestId(), r.GetPolicy(), r.GetResource(), r.GetAlgorithm(), r.GetMaterial(), true, r.GetActivateAt())
}

// generateKey executes a generate on the leader.
func (s *service) generateKey(ctx context.Context, r *request, req *cofferv1.GenerateKeyRequest) (*cofferv1.GenerateKeyResponse, error) {
	spec, err := generateSpec(req)
	if err != nil {
		return nil, err
	}
	md, err := s.createKey(ctx, r, spec)
	if err != nil {
		return nil, err
	}
	return &cofferv1.GenerateKeyResponse{Key: md}, nil
}

// putKey executes a put on the leader.
func (s *service) putKey(ctx context.Context, r *request, req *cofferv1.PutKeyRequest) (*cofferv1.PutKeyResponse, error) {
	spec, err := putSpec(req)
	if err != nil {
		return nil, err
	}
	md, err := s.createKey(ctx, r, spec)
	if err != nil {
		return nil, err
	}
	return &cofferv1.PutKeyResponse{Key: md}, nil
}

// createKey runs on the leader: every non-deterministic step (material,
// GKID, time, wrapping) happens here, before the proposal.
func (s *service) createKey(ctx context.Context, r *request, spec *createSpec) (*cofferv1.KeyMetadata, error) {
	res, err := s.createKeyRecord(ctx, r, spec, nil)
	if err != nil {
		return nil, err
	}
	return keyMetadata(res.Key), nil
}

// createKeyRecord is createKey, returning Apply's result. use, if not nil,
// runs once the new record is sealed and before it is proposed, with the
// record and its material (which it must not keep): encrypt-and-custody
// encrypts with it there. An error from use stops the create.
func (s *service) createKeyRecord(ctx context.Context, r *request, spec *createSpec, use func(rec *cofferv1.KeyRecord, material []byte) error) (fsm.Result, error) {
	c := r.caller
	owner := c.String()
	if err := s.replica.ensureLeaderReady(); err != nil {
		return fsm.Result{}, err
	}
	op := authz.OpGenerate
	if spec.material != nil {
		op = authz.OpPut
	}
	if err := s.authorize(c, op, spec.resource); err != nil {
		return fsm.Result{}, err
	}
	// A repeated request id is resolved by Apply, which returns the first
	// key; checking here as well would cost every create a lookup to save
	// work only on retries.
	cluster, err := s.fsm.Cluster()
	if errors.Is(err, fsm.ErrNotInitialized) {
		return fsm.Result{}, fmt.Errorf("%w: %v", ErrNotReady, err)
	} else if err != nil {
		return fsm.Result{}, err
	}
	pol, err := s.barrier.VerifiedPolicy(spec.policy)
	if err != nil {
		return fsm.Result{}, err
	}
	if !algorithmAllowed(pol, spec.algorithm) {
		return fsm.Result{}, fmt.Errorf("%w: policy %q does not allow %v", ErrInvalidArgument, pol.GetName(), spec.algorithm)
	}
	// One draw from the keystore's RNG (one HSM round trip) gives the GKID's
	// random part and, for generate, the key material.
	genLen := 0
	if spec.material == nil {
		genLen, _, _, _ = materialLen(spec.algorithm)
	}
	random, err := s.barrier.Random(gkid.RandomBytes + genLen)
	if err != nil {
		return fsm.Result{}, fmt.Errorf("draw random bytes: %w", err)
	}
	defer clear(random)
	material := spec.material
	if material == nil {
		material = random[gkid.RandomBytes:]
	}
	id, err := gkid.New(cluster.GetClusterId(), random[:gkid.RandomBytes])
	if err != nil {
		return fsm.Result{}, err
	}
	now := time.Now()
	rec := &cofferv1.KeyRecord{
		Gkid:            id,
		Policy:          pol.GetName(),
		Resource:        spec.resource,
		Owner:           owner,
		Algorithm:       spec.algorithm,
		State:           cofferv1.KeyState_KEY_STATE_ACTIVE,
		CreatedUnixNano: now.UnixNano(),
		KekVersion:      pol.GetKekVersion(),
		Revision:        1,
		UsePolicy:       keyUsePolicy(pol, now),
		CachePolicy:     pol.GetCachePolicy(),
	}
	if spec.activateAt.After(now) {
		// Created pre-active: usable from activateAt, or once activated.
		rec.State, rec.ActivateAtUnixNano = cofferv1.KeyState_KEY_STATE_PRE_ACTIVE, spec.activateAt.UnixNano()
	}
	if rec.Escrow, err = escrowCopies(pol, id, material); err != nil {
		return fsm.Result{}, err
	}
	if err := s.barrier.SealKey(pol, rec, material); err != nil {
		return fsm.Result{}, err
	}
	e := r.entry
	e.Gkid, e.Resource, e.Policy = rec.GetGkid(), rec.GetResource(), rec.GetPolicy()
	if e.DetailHmac, err = s.barrier.MaterialDetail(material); err != nil {
		return fsm.Result{}, err
	}
	if use != nil {
		if err := use(rec, material); err != nil {
			return fsm.Result{}, err
		}
	}
	return proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{Key: rec, RequestId: spec.requestID, Audit: e})
}

func algorithmAllowed(p *cofferv1.PolicyRecord, a cofferv1.Algorithm) bool {
	if len(p.GetAllowedAlgorithms()) == 0 {
		return true
	}
	for _, x := range p.GetAllowedAlgorithms() {
		if x == a {
			return true
		}
	}
	return false
}

func (s *service) getKey(ctx context.Context, req *cofferv1.GetKeyRequest) (*cofferv1.GetKeyResponse, error) {
	pk, err := sealTarget(req.GetSealTo())
	if err != nil {
		return nil, err
	}
	r := requestFrom(ctx)
	k, err := s.authorizedKey(ctx, r, req.GetGkid(), req.GetVersion(), req.GetConsistency(), authz.OpGet)
	if err != nil {
		return nil, err
	}
	resp := &cofferv1.GetKeyResponse{Key: s.describe(k.rec), Version: k.version}
	if pk == nil {
		resp.Material = k.material
		return resp, nil
	}
	defer clear(k.material)
	if resp.SealedMaterial, err = seal(pk, r, authz.OpGet, k.rec.GetGkid(), k.version, k.material); err != nil {
		return nil, err
	}
	return resp, nil
}

func (s *service) describeKey(ctx context.Context, req *cofferv1.DescribeKeyRequest) (*cofferv1.DescribeKeyResponse, error) {
	k, err := s.authorizedKey(ctx, requestFrom(ctx), req.GetGkid(), 0, req.GetConsistency(), authz.OpDescribe)
	if err != nil {
		return nil, err
	}
	return &cofferv1.DescribeKeyResponse{Key: s.describe(k.rec)}, nil
}

// usableKey is a key record whose use was granted and, for an operation
// that uses the material, the material of the version granted, which the
// holder wipes.
type usableKey struct {
	rec      *cofferv1.KeyRecord
	version  uint32
	material []byte
}

// authorizedKey reads a key record for op: the caller is authenticated, the
// read linearized, the grant (and for an operation that uses the material,
// whether the key can do it, its use policy, the version want names (0: the
// newest) and the newest version's encryption count) checked against the
// stored record, and the record verified by the keystore. For an operation
// that uses the material it returns the unwrapped material of the version
// granted too, which the caller wipes.
//
// A linearizable read by a client is decided in Apply (decidedKey): one
// Raft round commits its audit entry, orders it after every acknowledged
// write and decides it. A stale read, or a node's, is decided here on this
// node's state, and its entry is committed afterwards by finishRequest.
func (s *service) authorizedKey(ctx context.Context, r *request, id string, want uint32, cons cofferv1.Consistency, op authz.Op) (usableKey, error) {
	c := r.caller
	if err := validConsistency(cons); err != nil {
		return usableKey{}, err
	}
	r.entry.KeyVersion = want
	if cons != cofferv1.Consistency_CONSISTENCY_STALE && c.id.Kind == transport.KindClient {
		return s.decidedKey(ctx, r, id, op)
	}
	if err := validateGKID(id); err != nil {
		return usableKey{}, err
	}
	r.entry.Gkid = id
	if err := s.replica.linearize(ctx, cons); err != nil {
		return usableKey{}, err
	}
	if c.id.Kind != transport.KindClient {
		// A node identity reads no keys: authorize refuses it.
		rec, err := s.storedKey(id)
		if err == nil {
			r.entry.Resource, r.entry.Policy = rec.GetResource(), rec.GetPolicy()
			err = s.authorize(c, op, rec.GetResource())
		}
		return usableKey{}, err
	}
	rec, err := s.decideHere(c, op, id, r.entry, time.Now())
	if err != nil {
		return usableKey{}, err
	}
	return s.checkedMaterial(rec, op, r.entry.GetKeyVersion())
}

// decideHere decides a use of key id on this node's state (a stale read or
// batch, a state or version change on the leader) with the one key-use
// decision, and records the key's resource and policy in e (and, for a
// compromised key, the reason a granted use keeps). The version the use
// names is e's key_version (0: the newest); a granted use of the material
// leaves there the version it is for. It returns the record it decided on,
// nil for a key that does not exist when the decision says so.
func (s *service) decideHere(c caller, op authz.Op, id string, e *cofferv1.AuditEntry, at time.Time) (*cofferv1.KeyRecord, error) {
	rec, err := s.storedKey(id)
	if errors.Is(err, ErrNotFound) {
		rec, err = nil, nil // DecideKeyRead says what the caller may learn of it
	}
	if err != nil {
		return nil, err
	}
	req := authz.Request{Identity: c.String(), CertSerial: c.serial, Op: op, KeyVersion: e.GetKeyVersion()}
	if rec != nil {
		e.Resource, e.Policy = rec.GetResource(), rec.GetPolicy()
		if rec.GetCompromised() {
			e.Reason = authz.CompromisedKey // replaced by the refusal, if refused
		}
		if req.Encryptions, err = s.encryptions(rec, op); err != nil {
			return nil, err
		}
	}
	refusal, detail := s.fsm.Authz().DecideKeyRead(req, id, rec, at)
	if err := s.readRefusal(op, id, fsm.ReadResult{Refusal: refusal, Detail: detail}); err != nil {
		return nil, err
	}
	if op.UsesMaterial() && e.GetKeyVersion() == 0 {
		e.KeyVersion = authz.NewestVersion(rec)
	}
	return rec, nil
}

// encryptions is the encryption count of rec's newest version as this node
// has applied it, for an operation that encrypts (0 for others).
func (s *service) encryptions(rec *cofferv1.KeyRecord, op authz.Op) (uint64, error) {
	if !op.Encrypts() {
		return 0, nil
	}
	return s.fsm.Encryptions(rec.GetGkid(), authz.NewestVersion(rec))
}

// checkedMaterial verifies rec through the barrier (custody.OpenKey): for an
// operation that uses the material (get, and the data encryption service's)
// it returns the unwrapped material of version v (0: the newest), for other
// operations it wipes it.
func (s *service) checkedMaterial(rec *cofferv1.KeyRecord, op authz.Op, v uint32) (usableKey, error) {
	k := usableKey{rec: rec}
	if rec.GetState() == cofferv1.KeyState_KEY_STATE_DESTROYED {
		// Nothing left to verify or release: the metadata is all there is.
		// (An operation that needs the material was granted before the
		// destroy, on an earlier revision of the record.)
		if !op.UsesMaterial() {
			return k, nil
		}
		return usableKey{}, fmt.Errorf("%w: key %s was destroyed after this request was decided; its material is gone", fsm.ErrKeyState, rec.GetGkid())
	}
	if !op.UsesMaterial() {
		return k, s.barrier.VerifyKey(rec)
	}
	if v == 0 {
		v = authz.NewestVersion(rec)
	}
	m, err := s.barrier.OpenKeyVersion(rec, v)
	if errors.Is(err, custody.ErrNoVersion) {
		return usableKey{}, fmt.Errorf("%w: version %d of key %s was retired after this request was decided; its material is gone", fsm.ErrKeyState, v, rec.GetGkid())
	}
	if err != nil {
		return usableKey{}, err
	}
	k.version, k.material = v, m
	return k, nil
}

// decidedKey commits the read's audit entry with its outcome left to Apply
// (see fsm/reads.go) and releases the read once Apply granted it: at once
// if this node verified the record beforehand and its own verified access
// records grant the caller, otherwise after it has applied the entry and
// checked again on its own state.
//
// A record this node already holds, for a caller this node's own state
// grants, is verified by the keystore before the entry is proposed, so a
// damaged record or a keystore outage is recorded as this request's failure
// rather than after a grant. The record is released at once only when Apply
// decided on the same revision (fsm.ReadResult.Revision) and the same
// version of the material; otherwise the node reads it again once it has
// applied the decision, and uses the version Apply granted.
func (s *service) decidedKey(ctx context.Context, r *request, id string, op authz.Op) (usableKey, error) {
	c := r.caller
	if err := validateGKID(id); err != nil {
		return usableKey{}, err
	}
	e := r.entry
	e.Gkid = id
	pre, err := s.storedKey(id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return usableKey{}, err // a damaged record: finishRequest records the failure
	}
	if pre != nil {
		req := authz.Request{Identity: c.String(), CertSerial: c.serial, Op: op, KeyVersion: e.GetKeyVersion()}
		req.Encryptions, err = s.encryptions(pre, op)
		if refusal, _ := s.fsm.Authz().DecideKeyRead(req, id, pre, time.Unix(0, e.GetTimeUnixNano())); err != nil || refusal != cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED {
			// Likely refused: do not unwrap for a caller this node refuses,
			// or a key whose state or use policy refuses the operation
			// (Apply decides; if it grants, the record is checked after).
			pre = nil
		}
	}
	var k usableKey
	if pre != nil {
		if k, err = s.checkedMaterial(pre, op, e.GetKeyVersion()); err != nil {
			return usableKey{}, err // not proposed: finishRequest records the failure
		}
	}
	released := false
	defer func() {
		if !released {
			clear(k.material)
		}
	}()
	// Apply replaces the outcome; this one stands only if it never decides.
	e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	start := time.Now()
	idx, reads, err := s.auditor.submit(actx, auditBatch{entries: []*cofferv1.AuditEntry{e}, decide: []*cofferv1.ReadDecision{{Entry: 0, CertSerial: c.serial}}})
	metricStage.WithLabelValues("audit_decide").Observe(time.Since(start).Seconds())
	if errors.Is(err, ErrOverloaded) || errors.Is(err, ErrInvalidArgument) || errors.Is(err, fsm.ErrInvalidCommand) {
		return usableKey{}, err // not queued: finishRequest records the refusal
	}
	r.carried = true
	if err != nil {
		metricAuditFailures.Inc()
		s.replica.raftLog().Error("read's audit entry not committed; response withheld", "op", op, "gkid", id, "err", err)
		return usableKey{}, errAuditNotCommitted(err)
	}
	granted := reads[0]
	if err := s.readRefusal(op, id, granted); err != nil {
		return usableKey{}, err
	}
	if pre != nil && pre.GetRevision() == granted.Revision && k.version == granted.KeyVersion && s.decideClient(c, op, pre.GetResource()).Allowed {
		// Apply granted at idx on the very record verified above (the same
		// revision: a key record changes only with its state and versions)
		// and the same version, and this node's integrity-verified access
		// records grant too, as of whatever index it has applied: changes
		// between the two were seen by Apply, so they cannot turn its grant
		// into a refusal. Nothing left needs this node to have applied idx,
		// so the read does not wait for it to learn the commit.
		released = true
		return k, nil
	}
	if err := s.fsm.WaitApplied(actx, idx); err != nil {
		return usableKey{}, fmt.Errorf("%w: waiting to apply index %d: %v", ErrNoLeader, idx, err)
	}
	rec := pre
	if rec == nil || rec.GetRevision() != granted.Revision || k.version != granted.KeyVersion {
		// Not held before, or an older revision than Apply's: read the
		// record as of idx or later.
		clear(k.material)
		k, pre = usableKey{}, nil
		if rec, err = s.storedKey(id); err != nil {
			return usableKey{}, err
		}
	}
	// Apply decided on the records as stored; release nothing unless this
	// node's integrity-checked view of the access records, as of idx,
	// agrees.
	if err := s.authorize(c, op, rec.GetResource()); err != nil {
		s.replica.raftLog().Warn("a read granted in Apply is refused by this node's verified access records", "op", op, "gkid", id, "seq", granted.Seq, "index", idx, "err", err)
		return usableKey{}, err
	}
	if pre == nil {
		if k, err = s.checkedMaterial(rec, op, granted.KeyVersion); err != nil {
			if !errors.Is(err, fsm.ErrKeyState) {
				s.replica.raftLog().Error("a read granted in Apply failed its keystore check", "op", op, "gkid", id, "seq", granted.Seq, "index", idx, "err", err)
			}
			return usableKey{}, err
		}
	}
	released = true
	return k, nil
}

// readRefusal is a refused decided read as the caller gets it: the code
// and message Apply recorded (fsm.ReadResult.Err), whether Apply or this
// node decided. It counts denials and logs a record Apply found corrupt.
func (s *service) readRefusal(op authz.Op, id string, r fsm.ReadResult) error {
	switch r.Refusal {
	case cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED:
		return nil
	case cofferv1.ReadRefusal_READ_REFUSAL_UNAUTHENTICATED, cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED:
		metricDenied.WithLabelValues(string(op)).Inc()
	case cofferv1.ReadRefusal_READ_REFUSAL_NOT_FOUND, cofferv1.ReadRefusal_READ_REFUSAL_NOT_YET_VALID, cofferv1.ReadRefusal_READ_REFUSAL_EXPIRED,
		cofferv1.ReadRefusal_READ_REFUSAL_KEY_STATE, cofferv1.ReadRefusal_READ_REFUSAL_UNSUITABLE,
		cofferv1.ReadRefusal_READ_REFUSAL_KEY_VERSION, cofferv1.ReadRefusal_READ_REFUSAL_USES_EXHAUSTED:
	default:
		custody.CountIntegrityFailure()
		s.logger.Error("stored key record refused by Apply; refusing to serve it", "gkid", id, "detail", r.Detail)
	}
	return r.Err()
}

// storedKey reads a key record from this node's state.
func (s *service) storedKey(id string) (*cofferv1.KeyRecord, error) {
	rec, err := s.fsm.Key(id)
	if errors.Is(err, fsm.ErrNotFound) {
		return nil, fmt.Errorf("%w: key %s", ErrNotFound, id)
	}
	if errors.Is(err, fsm.ErrCorrupt) {
		custody.CountIntegrityFailure()
		s.logger.Error("stored key record does not decode; refusing to serve it", "gkid", id)
	}
	if err != nil {
		return nil, err
	}
	if rec.GetGkid() != id {
		// The record stored under this id names another key: swapped.
		custody.CountIntegrityFailure()
		s.logger.Error("stored key record names another key; refusing to serve it", "gkid", id, "names", rec.GetGkid())
		return nil, fmt.Errorf("%w: record stored under %s names %s", fsm.ErrCorrupt, id, rec.GetGkid())
	}
	return rec, nil
}

func validConsistency(c cofferv1.Consistency) error {
	if _, ok := cofferv1.Consistency_name[int32(c)]; !ok {
		return fmt.Errorf("%w: unknown consistency %d", ErrInvalidArgument, c)
	}
	return nil
}

func (s *service) listKeys(ctx context.Context, req *cofferv1.ListKeysRequest) (*cofferv1.ListKeysResponse, error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetPolicy() != "" {
		if err := validatePolicyName(req.GetPolicy()); err != nil {
			return nil, err
		}
	}
	if req.GetResource() != "" {
		if err := validateResource(req.GetResource()); err != nil {
			return nil, err
		}
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = DefaultPageSize
	}
	if size > fsm.MaxPageSize {
		return nil, fmt.Errorf("%w: page_size must be at most %d", ErrInvalidArgument, fsm.MaxPageSize)
	}
	if err := validConsistency(req.GetConsistency()); err != nil {
		return nil, err
	}
	if err := s.replica.linearize(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	// With a resource filter the caller needs the list grant on it; without
	// one, the page holds only the keys whose resource the caller may list.
	if req.GetResource() != "" {
		if err := s.authorize(c, authz.OpList, req.GetResource()); err != nil {
			return nil, err
		}
	}
	recs, next, err := s.fsm.ListKeys(fsm.ListFilter{Policy: req.GetPolicy(), Resource: req.GetResource()}, req.GetPageToken(), size)
	if err != nil {
		return nil, err
	}
	out := &cofferv1.ListKeysResponse{NextPageToken: next}
	for _, r := range recs {
		if req.GetResource() == "" && s.authorize(c, authz.OpList, r.GetResource()) != nil {
			continue
		}
		if _, err := s.checkedMaterial(r, authz.OpList, 0); err != nil {
			return nil, err
		}
		out.Keys = append(out.Keys, keyMetadata(r))
	}
	return out, nil
}

// keyMetadata converts a stored record to API metadata, without material.
// apiKeyState is r's stored state as the API shows it: a record written
// before keys had a life cycle is ACTIVE.
func apiKeyState(r *cofferv1.KeyRecord) cofferv1.KeyState {
	if r.GetState() == cofferv1.KeyState_KEY_STATE_UNSPECIFIED {
		return cofferv1.KeyState_KEY_STATE_ACTIVE
	}
	return r.GetState()
}

func keyMetadata(r *cofferv1.KeyRecord) *cofferv1.KeyMetadata {
	md := &cofferv1.KeyMetadata{
		Gkid:        r.GetGkid(),
		Policy:      r.GetPolicy(),
		Resource:    r.GetResource(),
		Owner:       r.GetOwner(),
		Algorithm:   r.GetAlgorithm(),
		State:       apiKeyState(r),
		CreatedAt:   timestamppb.New(time.Unix(0, r.GetCreatedUnixNano())),
		KekVersion:  r.GetKekVersion(),
		Revision:    r.GetRevision(),
		UsePolicy:   r.GetUsePolicy(),
		CachePolicy: cachePolicy(r.GetCachePolicy()),
		Compromised: r.GetCompromised(),
	}
	if t := r.GetActivateAtUnixNano(); t != 0 {
		md.ActivateAt = timestamppb.New(time.Unix(0, t))
	}
	if t := r.GetStateChangedUnixNano(); t != 0 {
		md.StateChangedAt = timestamppb.New(time.Unix(0, t))
	}
	if t := r.GetEscrowPurgeUnixNano(); t != 0 {
		md.EscrowPurgeAt = timestamppb.New(time.Unix(0, t))
	}
	md.Version = authz.NewestVersion(r)
	for _, v := range r.GetVersions() {
		info := &cofferv1.KeyVersionInfo{Version: v.GetVersion(), CreatedAt: timestamppb.New(time.Unix(0, v.GetCreatedUnixNano()))}
		if t := v.GetRetiredUnixNano(); t != 0 {
			info.RetiredAt = timestamppb.New(time.Unix(0, t))
		}
		if t := v.GetEscrowPurgeUnixNano(); t != 0 {
			info.EscrowPurgeAt = timestamppb.New(time.Unix(0, t))
		}
		md.Versions = append(md.Versions, info)
	}
	md.Versions = append(md.Versions, &cofferv1.KeyVersionInfo{Version: md.Version, CreatedAt: timestamppb.New(authz.NewestVersionCreated(r))})
	return md
}

// describe is keyMetadata with each version's encryption count as this
// node has applied it (a count that cannot be read is left out).
func (s *service) describe(r *cofferv1.KeyRecord) *cofferv1.KeyMetadata {
	md := keyMetadata(r)
	for _, v := range md.GetVersions() {
		if n, err := s.fsm.Encryptions(r.GetGkid(), v.GetVersion()); err == nil {
			v.Encryptions = n
		}
	}
	return md
}

func cachePolicy(c *cofferv1.KeyCachePolicy) *cofferv1.KeyCachePolicy {
	if c == nil {
		return &cofferv1.KeyCachePolicy{Cacheable: false, Ttl: durationpb.New(0)}
	}
	return c
}
