package node

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/escrow"
	"github.com/coffer-kms/coffer/fsm"
)

// MaxEscrowKeys bounds the escrow keys of one policy.
const MaxEscrowKeys = 8

// validatePolicyRequest checks a create request and fills in escrow key ids.
func validatePolicyRequest(req *cofferv1.CreatePolicyRequest) ([]*cofferv1.EscrowKey, error) {
	if err := validatePolicyName(req.GetName()); err != nil {
		return nil, err
	}
	for _, a := range req.GetAllowedAlgorithms() {
		if _, _, _, err := materialLen(a); err != nil {
			return nil, err
		}
	}
	if err := validateUsePolicy(req.GetDefaultUsePolicy()); err != nil {
		return nil, err
	}
	if err := validateCachePolicy(req.GetCachePolicy()); err != nil {
		return nil, err
	}
	if err := validateLifetime(req.GetMaxLifetime()); err != nil {
		return nil, err
	}
	if err := validateEscrowRetention(req.GetEscrowRetention()); err != nil {
		return nil, err
	}
	if len(req.GetEscrowKeys()) > MaxEscrowKeys {
		return nil, fmt.Errorf("%w: at most %d escrow keys", ErrInvalidArgument, MaxEscrowKeys)
	}
	var keys []*cofferv1.EscrowKey
	seen := map[string]bool{}
	for _, k := range req.GetEscrowKeys() {
		if _, err := escrow.ParsePublicKey(k.GetPublicKey()); err != nil {
			return nil, fmt.Errorf("%w: escrow key %q: %v", ErrInvalidArgument, k.GetLabel(), err)
		}
		if len(k.GetLabel()) > 128 {
			return nil, fmt.Errorf("%w: escrow key label longer than 128 bytes", ErrInvalidArgument)
		}
		id := escrow.KeyID(k.GetPublicKey())
		if seen[id] {
			return nil, fmt.Errorf("%w: escrow key %s given twice", ErrInvalidArgument, id[:16])
		}
		seen[id] = true
		keys = append(keys, &cofferv1.EscrowKey{Id: id, PublicKey: k.GetPublicKey(), Label: k.GetLabel()})
	}
	return keys, nil
}

// createPolicy runs on the leader: it generates the policy's KEK in the
// keystore and proposes the record.
func (s *service) createPolicy(ctx context.Context, r *request, req *cofferv1.CreatePolicyRequest) (*cofferv1.CreatePolicyResponse, error) {
	keys, err := validatePolicyRequest(req)
	if err != nil {
		return nil, err
	}
	if _, err := s.fsm.Policy(req.GetName()); err == nil {
		return nil, fmt.Errorf("%w: %q", fsm.ErrPolicyExists, req.GetName())
	}
	pol, err := newPolicy(s.barrier, req.GetName(), time.Now().UnixNano())
	if err != nil {
		return nil, err
	}
	if len(req.GetAllowedAlgorithms()) > 0 {
		pol.AllowedAlgorithms = req.GetAllowedAlgorithms()
	}
	pol.EscrowKeys = keys
	pol.DefaultUsePolicy = req.GetDefaultUsePolicy()
	if req.GetCachePolicy() != nil {
		pol.CachePolicy = req.GetCachePolicy()
	}
	if req.GetMaxLifetime() != nil {
		pol.MaxLifetimeNanos = int64(req.GetMaxLifetime().AsDuration())
	}
	pol.EscrowRetentionNanos = int64(req.GetEscrowRetention().AsDuration())
	r.entry.Policy = pol.GetName()
	r.explain(policyCreated(pol))
	if err := s.barrier.Tag("p/"+pol.GetName(), pol, nil); err != nil {
		return nil, err
	}
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_CREATE_POLICY, &cofferv1.CreatePolicyCommand{Policy: pol, Audit: r.entry})
	if err != nil {
		return nil, err
	}
	return &cofferv1.CreatePolicyResponse{Policy: policyInfo(res.Policy)}, nil
}

func (s *service) getPolicy(ctx context.Context, req *cofferv1.GetPolicyRequest) (*cofferv1.GetPolicyResponse, error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := validatePolicyName(req.GetName()); err != nil {
		return nil, err
	}
	if err := s.authorizedRead(ctx, c, authz.OpPolicyRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	p, err := s.barrier.VerifiedPolicy(req.GetName())
	if err != nil {
		return nil, err
	}
	return &cofferv1.GetPolicyResponse{Policy: policyInfo(p)}, nil
}

func (s *service) listPolicies(ctx context.Context, req *cofferv1.ListPoliciesRequest) (*cofferv1.ListPoliciesResponse, error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.authorizedRead(ctx, c, authz.OpPolicyRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	ps, err := s.fsm.Policies()
	if err != nil {
		return nil, err
	}
	for _, p := range ps {
		if err := s.barrier.VerifyPolicy(p); err != nil {
			return nil, err
		}
	}
	out := &cofferv1.ListPoliciesResponse{}
	for _, p := range ps {
		out.Policies = append(out.Policies, policyInfo(p))
	}
	return out, nil
}

// policyInfo converts a stored policy to its API form: never a wrapped KEK.
func policyInfo(p *cofferv1.PolicyRecord) *cofferv1.Policy {
	out := &cofferv1.Policy{
		Name:              p.GetName(),
		KekVersion:        p.GetKekVersion(),
		AllowedAlgorithms: p.GetAllowedAlgorithms(),
		DefaultUsePolicy:  p.GetDefaultUsePolicy(),
		CachePolicy:       p.GetCachePolicy(),
		CreatedAt:         timestamppb.New(time.Unix(0, p.GetCreatedUnixNano())),
		Revision:          p.GetRevision(),
	}
	if p.GetMaxLifetimeNanos() > 0 {
		out.MaxLifetime = durationpb.New(time.Duration(p.GetMaxLifetimeNanos()))
	}
	if p.GetEscrowRetentionNanos() > 0 {
		out.EscrowRetention = durationpb.New(time.Duration(p.GetEscrowRetentionNanos()))
	}
	for _, k := range p.GetEscrowKeys() {
		out.EscrowKeys = append(out.EscrowKeys, &cofferv1.EscrowKeyInfo{Id: k.GetId(), PublicKey: k.GetPublicKey(), Label: k.GetLabel()})
	}
	return out
}

// escrowCopies encrypts material to every escrow key of the policy.
func escrowCopies(pol *cofferv1.PolicyRecord, gk string, material []byte) ([]*cofferv1.EscrowCopy, error) {
	var out []*cofferv1.EscrowCopy
	for _, k := range pol.GetEscrowKeys() {
		pub, err := escrow.ParsePublicKey(k.GetPublicKey())
		if err != nil {
			return nil, fmt.Errorf("%w: policy %q escrow key %s: %v", fsm.ErrCorrupt, pol.GetName(), k.GetId(), err)
		}
		ct, err := escrow.Encrypt(pub, gk, material)
		if err != nil {
			return nil, err
		}
		out = append(out, &cofferv1.EscrowCopy{KeyId: k.GetId(), Scheme: escrow.Scheme, Ciphertext: ct})
	}
	return out, nil
}
