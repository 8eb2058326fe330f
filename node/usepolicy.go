package node

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
)

// Bounds of use and cache policies.
const (
	minLifetime      = time.Minute
	maxCacheTTL      = 30 * 24 * time.Hour
	maxCacheKeys     = 1_000_000
	maxUseOperations = 16
	// minRotationPeriod bounds a use policy's rotation period from below:
	// each rotation is a write and adds a version to the key's record.
	minRotationPeriod = time.Hour
)

func validateUsePolicy(u *cofferv1.KeyUsePolicy) error {
	if u == nil {
		return nil
	}
	if len(u.GetOperations()) > maxUseOperations {
		return fmt.Errorf("%w: at most %d operations in a use policy", ErrInvalidArgument, maxUseOperations)
	}
	for _, op := range u.GetOperations() {
		o, err := authz.ParseOp(op)
		if err != nil || !o.IsKey() {
			return fmt.Errorf("%w: use policy operation %q is not a key operation", ErrInvalidArgument, op)
		}
	}
	if u.GetNotBefore() != nil && u.GetNotAfter() != nil && !u.GetNotBefore().AsTime().Before(u.GetNotAfter().AsTime()) {
		return fmt.Errorf("%w: use policy not_before must be before not_after", ErrInvalidArgument)
	}
	for _, n := range []struct {
		name string
		v    uint64
	}{{"max_encryptions", u.GetMaxEncryptions()}, {"rotate_after_encryptions", u.GetRotateAfterEncryptions()}} {
		if n.v > authz.NonceBound {
			return fmt.Errorf("%w: use policy %s is %d, at most 2^32 (AES-GCM's bound on random nonces under one key)", ErrInvalidArgument, n.name, n.v)
		}
	}
	if p := u.GetRotationPeriod(); p != nil && (p.AsDuration() < minRotationPeriod || !p.IsValid()) {
		return fmt.Errorf("%w: use policy rotation_period must be at least %v, not %v", ErrInvalidArgument, minRotationPeriod, p.AsDuration())
	}
	return nil
}

func validateCachePolicy(c *cofferv1.KeyCachePolicy) error {
	if c == nil {
		return nil
	}
	if c.GetTtl().AsDuration() < 0 || c.GetTtl().AsDuration() > maxCacheTTL {
		return fmt.Errorf("%w: cache ttl must be 0..%v", ErrInvalidArgument, maxCacheTTL)
	}
	if c.GetMaxKeys() > maxCacheKeys {
		return fmt.Errorf("%w: cache max_keys must be at most %d", ErrInvalidArgument, maxCacheKeys)
	}
	return nil
}

// maxEscrowRetention bounds a policy's escrow retention.
const maxEscrowRetention = 10 * 365 * 24 * time.Hour

func validateEscrowRetention(d *durationpb.Duration) error {
	if d != nil && (!d.IsValid() || d.AsDuration() < 0 || d.AsDuration() > maxEscrowRetention) {
		return fmt.Errorf("%w: escrow retention must be 0 to %v, not %v", ErrInvalidArgument, maxEscrowRetention, d.AsDuration())
	}
	return nil
}

func validateLifetime(d *durationpb.Duration) error {
	if d != nil && d.AsDuration() < minLifetime {
		return fmt.Errorf("%w: max lifetime must be at least %v", ErrInvalidArgument, minLifetime)
	}
	return nil
}

// keyUsePolicy is the use policy a key created now under pol gets: the
// policy's default, with not_after brought forward to the end of the
// policy's maximum lifetime.
func keyUsePolicy(pol *cofferv1.PolicyRecord, created time.Time) *cofferv1.KeyUsePolicy {
	u := proto.CloneOf(pol.GetDefaultUsePolicy())
	if lt := time.Duration(pol.GetMaxLifetimeNanos()); lt > 0 {
		if u == nil {
			u = &cofferv1.KeyUsePolicy{}
		}
		end := created.Add(lt)
		if u.GetNotAfter() == nil || end.Before(u.GetNotAfter().AsTime()) {
			u.NotAfter = timestamppb.New(end)
		}
	}
	return u
}

func validateUpdate(req *cofferv1.UpdatePolicyRequest) error {
	if err := validatePolicyName(req.GetName()); err != nil {
		return err
	}
	for _, a := range req.GetAllowedAlgorithms() {
		if _, _, _, err := materialLen(a); err != nil {
			return err
		}
	}
	if err := validateUsePolicy(req.GetDefaultUsePolicy()); err != nil {
		return err
	}
	if err := validateCachePolicy(req.GetCachePolicy()); err != nil {
		return err
	}
	if err := validateLifetime(req.GetMaxLifetime()); err != nil {
		return err
	}
	if err := validateEscrowRetention(req.GetEscrowRetention()); err != nil {
		return err
	}
	_, err := validatePolicyRequest(&cofferv1.CreatePolicyRequest{Name: req.GetName(), EscrowKeys: req.GetAddEscrowKeys()})
	return err
}

// updatePolicy runs on the leader.
func (s *service) updatePolicy(ctx context.Context, r *request, req *cofferv1.UpdatePolicyRequest) (*cofferv1.UpdatePolicyResponse, error) {
	cur, err := s.barrier.VerifiedPolicy(req.GetName())
	if err != nil {
		return nil, err
	}
	r.entry.Policy = cur.GetName()
	p := proto.CloneOf(cur)
	p.Revision = cur.GetRevision() + 1
	if len(req.GetAllowedAlgorithms()) > 0 || req.GetReplaceAlgorithms() {
		p.AllowedAlgorithms = req.GetAllowedAlgorithms()
	}
	if req.GetDefaultUsePolicy() != nil {
		p.DefaultUsePolicy = req.GetDefaultUsePolicy()
	}
	if req.GetMaxLifetime() != nil {
		p.MaxLifetimeNanos = int64(req.GetMaxLifetime().AsDuration())
	}
	if req.GetEscrowRetention() != nil {
		p.EscrowRetentionNanos = int64(req.GetEscrowRetention().AsDuration())
	}
	if req.GetCachePolicy() != nil {
		p.CachePolicy = req.GetCachePolicy()
	}
	keys, _ := validatePolicyRequest(&cofferv1.CreatePolicyRequest{Name: req.GetName(), EscrowKeys: req.GetAddEscrowKeys()})
	for _, k := range keys {
		dup := false
		for _, e := range p.GetEscrowKeys() {
			dup = dup || e.GetId() == k.GetId()
		}
		if !dup {
			p.EscrowKeys = append(p.EscrowKeys, k)
		}
	}
	if len(p.GetEscrowKeys()) > MaxEscrowKeys {
		return nil, fmt.Errorf("%w: at most %d escrow keys", ErrInvalidArgument, MaxEscrowKeys)
	}
	if req.GetRotateKek() {
		v := cur.GetKekVersion() + 1
		wrapped, err := s.barrier.NewPolicyKEK(p.GetName(), v)
		if err != nil {
			return nil, err
		}
		p.Keks = append(p.Keks, &cofferv1.WrappedKEK{Version: v, Wrapped: wrapped, CreatedUnixNano: time.Now().UnixNano()})
		p.KekVersion = v
	}
	r.explain(policyUpdated(cur, p))
	if err := s.barrier.Tag("p/"+p.GetName(), p, nil); err != nil {
		return nil, err
	}
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_UPDATE_POLICY, &cofferv1.UpdatePolicyCommand{Policy: p, ExpectedRevision: cur.GetRevision(), Audit: r.entry})
	if err != nil {
		return nil, err
	}
	return &cofferv1.UpdatePolicyResponse{Policy: policyInfo(res.Policy)}, nil
}

func validateAmendKeyUsePolicy(req *cofferv1.AmendKeyUsePolicyRequest) error {
	if err := validateGKID(req.GetGkid()); err != nil {
		return err
	}
	if req.GetUsePolicy() == nil {
		return fmt.Errorf("%w: use_policy is required (an empty one restricts nothing)", ErrInvalidArgument)
	}
	if err := validateUsePolicy(req.GetUsePolicy()); err != nil {
		return err
	}
	return validReason(req.GetReason(), maxStateReason)
}

// amendKeyUsePolicy executes AmendKeyUsePolicy on the leader (the write
// table has authorised policy.update): the key's record with the new use
// policy, its material re-sealed (the associated data covers the use
// policy), proposed with an entry listing what changed.
func (s *service) amendKeyUsePolicy(ctx context.Context, r *request, req *cofferv1.AmendKeyUsePolicyRequest) (*cofferv1.AmendKeyUsePolicyResponse, error) {
	id := req.GetGkid()
	cur, err := s.storedKey(id)
	if err != nil {
		return nil, err
	}
	e := r.entry
	e.Gkid, e.Resource, e.Policy = id, cur.GetResource(), cur.GetPolicy()
	if cur.GetState() == cofferv1.KeyState_KEY_STATE_DESTROYED {
		return nil, fmt.Errorf("%w: key %s is destroyed; no use is left to govern", ErrPrecondition, id)
	}
	what := keyUseAmended(id, cur.GetUsePolicy(), req.GetUsePolicy())
	if len(changes(useSettings("", cur.GetUsePolicy()), useSettings("", req.GetUsePolicy()))) == 0 {
		// Nothing changes (a retry of an acknowledged amendment).
		r.explain(what + reasonSuffix(req.GetReason()))
		return &cofferv1.AmendKeyUsePolicyResponse{Key: s.describe(cur)}, nil
	}
	next := proto.CloneOf(cur)
	next.UsePolicy, next.Revision = proto.CloneOf(req.GetUsePolicy()), cur.GetRevision()+1
	if err := s.reseal(cur, next); err != nil {
		return nil, err
	}
	r.explain(what + reasonSuffix(req.GetReason()))
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_CHANGE_KEY,
		&cofferv1.ChangeKeyCommand{Key: next, ExpectedRevision: cur.GetRevision(), Audit: e, Change: cofferv1.ChangeKeyCommand_CHANGE_USE_POLICY})
	if err != nil {
		return nil, err
	}
	return &cofferv1.AmendKeyUsePolicyResponse{Key: s.describe(res.Key)}, nil
}
