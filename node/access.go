package node

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// MaxReasonLen bounds a revocation reason.
const maxRevokeReason = 256

func validateRegister(req *cofferv1.RegisterClientRequest) error {
	rec := &cofferv1.ClientRecord{Name: req.GetName(), Active: true, Groups: req.GetGroups(), Roles: req.GetRoles(), Revision: 1}
	if err := authz.ValidateClient(rec); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return nil
}

func validateRevoke(req *cofferv1.RevokeCertificateRequest) (string, error) {
	serial, err := authz.CanonicalSerial(strings.TrimPrefix(strings.ToLower(req.GetSerial()), "0x"))
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if len(req.GetReason()) > maxRevokeReason {
		return "", fmt.Errorf("%w: reason longer than %d bytes", ErrInvalidArgument, maxRevokeReason)
	}
	return serial, nil
}

var ruleIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

func ruleFromGrant(req *cofferv1.GrantRequest, createdBy string, now int64) (*cofferv1.AclRule, error) {
	id := req.GetId()
	if id == "" {
		b := make([]byte, 10)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		id = "rule-" + ruleIDEncoding.EncodeToString(b)
	}
	rule := &cofferv1.AclRule{Id: id, Subject: req.GetSubject(), Operations: req.GetOperations(),
		ResourcePattern: req.GetResourcePattern(), CreatedUnixNano: now, CreatedBy: createdBy}
	if err := authz.ValidateRule(rule); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return rule, nil
}

// registerClient registers a client, or changes its groups and roles.
func (s *service) registerClient(ctx context.Context, r *request, req *cofferv1.RegisterClientRequest) (*cofferv1.ClientInfo, error) {
	rec := &cofferv1.ClientRecord{Name: req.GetName(), Active: true, Groups: req.GetGroups(), Roles: req.GetRoles(),
		CreatedUnixNano: time.Now().UnixNano(), Revision: 1}
	var expected uint64
	if cur, err := s.barrier.VerifiedClient(req.GetName()); err == nil {
		if !req.GetUpdate() {
			return nil, fmt.Errorf("%w: %q (use update to change its groups and roles)", fsm.ErrClientExists, req.GetName())
		}
		rec.Active, rec.CreatedUnixNano = cur.GetActive(), cur.GetCreatedUnixNano()
		expected, rec.Revision = cur.GetRevision(), cur.GetRevision()+1
	}
	if err := s.barrier.Tag("c/"+rec.GetName(), rec, nil); err != nil {
		return nil, err
	}
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT, &cofferv1.PutClientCommand{Client: rec, ExpectedRevision: expected, Audit: r.entry})
	if err != nil {
		return nil, err
	}
	return clientInfo(res.Client), nil
}

// setClientActive activates or deactivates a client.
func (s *service) setClientActive(ctx context.Context, r *request, req *cofferv1.SetClientActiveRequest) (*cofferv1.ClientInfo, error) {
	cur, err := s.barrier.VerifiedClient(req.GetName())
	if err != nil {
		return nil, err
	}
	rec := proto.CloneOf(cur)
	rec.Active, rec.Revision = req.GetActive(), cur.GetRevision()+1
	if err := s.barrier.Tag("c/"+rec.GetName(), rec, nil); err != nil {
		return nil, err
	}
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT, &cofferv1.PutClientCommand{Client: rec, ExpectedRevision: cur.GetRevision(), Audit: r.entry})
	if err != nil {
		return nil, err
	}
	return clientInfo(res.Client), nil
}

// revokeCertificate puts a certificate serial on the deny list.
func (s *service) revokeCertificate(ctx context.Context, r *request, req *cofferv1.RevokeCertificateRequest) (*cofferv1.RevokeCertificateResponse, error) {
	serial, err := validateRevoke(req)
	if err != nil {
		return nil, err
	}
	if _, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_REVOKE_CERTIFICATE, &cofferv1.RevokeCertificateCommand{
		Certificate: &cofferv1.RevokedCertificate{Serial: serial, Reason: req.GetReason(), RevokedUnixNano: time.Now().UnixNano()}, Audit: r.entry}); err != nil {
		return nil, err
	}
	return &cofferv1.RevokeCertificateResponse{Serial: serial}, nil
}

// grant adds an ACL rule.
func (s *service) grant(ctx context.Context, r *request, req *cofferv1.GrantRequest) (*cofferv1.AclRuleInfo, error) {
	rule, err := ruleFromGrant(req, r.caller.String(), time.Now().UnixNano())
	if err != nil {
		return nil, err
	}
	if err := s.barrier.Tag("a/"+rule.GetId(), rule, nil); err != nil {
		return nil, err
	}
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_PUT_ACL_RULE, &cofferv1.PutAclRuleCommand{Rule: rule, Audit: r.entry})
	if err != nil {
		return nil, err
	}
	return ruleInfo(res.Rule), nil
}

// revokeGrant deletes an ACL rule.
func (s *service) revokeGrant(ctx context.Context, r *request, req *cofferv1.RevokeGrantRequest) (*cofferv1.RevokeGrantResponse, error) {
	if _, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_DELETE_ACL_RULE, &cofferv1.DeleteAclRuleCommand{Id: req.GetId(), Audit: r.entry}); err != nil {
		return nil, err
	}
	return &cofferv1.RevokeGrantResponse{Id: req.GetId()}, nil
}

func (s *service) accessRead(ctx context.Context, op authz.Op, cons cofferv1.Consistency) error {
	c, err := callerOf(ctx)
	if err != nil {
		return err
	}
	return s.authorizedRead(ctx, c, op, cons)
}

func (s *service) getClient(ctx context.Context, req *cofferv1.GetClientRequest) (*cofferv1.ClientInfo, error) {
	if err := authz.ValidateClientName(req.GetName()); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := s.accessRead(ctx, authz.OpClientRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	cl, err := s.fsm.Client(req.GetName())
	if err != nil {
		return nil, err
	}
	return clientInfo(cl), nil
}

func (s *service) listClients(ctx context.Context, req *cofferv1.ListClientsRequest) (*cofferv1.ListClientsResponse, error) {
	if err := s.accessRead(ctx, authz.OpClientRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	cls, err := s.fsm.Clients()
	if err != nil {
		return nil, err
	}
	out := &cofferv1.ListClientsResponse{}
	for _, c := range cls {
		out.Clients = append(out.Clients, clientInfo(c))
	}
	return out, nil
}

func (s *service) listGrants(ctx context.Context, req *cofferv1.ListGrantsRequest) (*cofferv1.ListGrantsResponse, error) {
	if req.GetSubject() != "" {
		if _, _, err := authz.ParseSubject(req.GetSubject()); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
		}
	}
	if err := s.accessRead(ctx, authz.OpACLRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	rules, err := s.fsm.Rules()
	if err != nil {
		return nil, err
	}
	out := &cofferv1.ListGrantsResponse{}
	for _, r := range rules {
		if req.GetSubject() == "" || r.GetSubject() == req.GetSubject() {
			out.Rules = append(out.Rules, ruleInfo(r))
		}
	}
	return out, nil
}

// checkSerial stands for "a certificate that is not revoked" when a check
// names no serial: serial 0 is never issued (RFC 5280 serials are positive).
const checkSerial = "0"

func (s *service) check(ctx context.Context, req *cofferv1.CheckRequest) (*cofferv1.CheckResponse, error) {
	if err := authz.ValidateClientName(req.GetClient()); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	op, err := authz.ParseOp(req.GetOperation())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	serial := checkSerial
	if req.GetCertSerial() != "" {
		if serial, err = authz.CanonicalSerial(req.GetCertSerial()); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
		}
	}
	if err := s.accessRead(ctx, authz.OpACLRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	e := s.fsm.Authz().Explain(authz.Request{Identity: authz.ClientSubject(req.GetClient()), CertSerial: serial, Op: op, Resource: req.GetResource()})
	if req.GetCertSerial() == "" && len(e.Steps) > 0 && e.Steps[0].Name == "certificate" && e.Steps[0].Passed {
		e.Steps[0].Detail = "no certificate named: taken as not revoked (name one with its serial to check it)"
	}
	return &cofferv1.CheckResponse{Allowed: e.Decision.Allowed, Reason: e.Decision.Reason, Rule: e.Decision.Rule, Explanation: e.String()}, nil
}

func clientInfo(c *cofferv1.ClientRecord) *cofferv1.ClientInfo {
	return &cofferv1.ClientInfo{Name: c.GetName(), Active: c.GetActive(), Groups: c.GetGroups(), Roles: c.GetRoles(),
		CreatedAt: timestamppb.New(time.Unix(0, c.GetCreatedUnixNano())), Revision: c.GetRevision()}
}

func ruleInfo(r *cofferv1.AclRule) *cofferv1.AclRuleInfo {
	return &cofferv1.AclRuleInfo{Id: r.GetId(), Subject: r.GetSubject(), Operations: r.GetOperations(),
		ResourcePattern: r.GetResourcePattern(), CreatedAt: timestamppb.New(time.Unix(0, r.GetCreatedUnixNano())), CreatedBy: r.GetCreatedBy()}
}
