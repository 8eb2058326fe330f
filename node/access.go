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

// accessService manages clients, rules and the certificate deny list. Writes
// run on the leader (followers forward them) and are authorised there
// against committed state; every change is applied and the authorisation
// snapshot swapped before the call returns, so it binds every node for every
// request that arrives afterwards (reads on followers wait for the leader's
// applied index first).
type accessService struct {
	cofferv1.UnimplementedAccessServiceServer
	n *Node
}

// MaxReasonLen bounds a revocation reason.
const maxRevokeReason = 256

func (s *accessService) write(ctx context.Context, op *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error) {
	c, err := authenticate(ctx)
	if err != nil {
		return nil, err
	}
	return s.n.write(ctx, c, op)
}

func (s *accessService) RegisterClient(ctx context.Context, req *cofferv1.RegisterClientRequest) (*cofferv1.ClientInfo, error) {
	if err := validateRegister(req); err != nil {
		return nil, err
	}
	resp, err := s.write(ctx, &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_RegisterClient{RegisterClient: req}})
	return resp.GetClient(), err
}

func (s *accessService) SetClientActive(ctx context.Context, req *cofferv1.SetClientActiveRequest) (*cofferv1.ClientInfo, error) {
	if err := authz.ValidateClientName(req.GetName()); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	resp, err := s.write(ctx, &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_SetClientActive{SetClientActive: req}})
	return resp.GetClient(), err
}

func (s *accessService) RevokeCertificate(ctx context.Context, req *cofferv1.RevokeCertificateRequest) (*cofferv1.RevokeCertificateResponse, error) {
	if _, err := validateRevoke(req); err != nil {
		return nil, err
	}
	resp, err := s.write(ctx, &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_RevokeCertificate{RevokeCertificate: req}})
	return resp.GetRevokeCertificate(), err
}

func (s *accessService) Grant(ctx context.Context, req *cofferv1.GrantRequest) (*cofferv1.AclRuleInfo, error) {
	if _, err := ruleFromGrant(req, "", 0); err != nil {
		return nil, err
	}
	resp, err := s.write(ctx, &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_Grant{Grant: req}})
	return resp.GetRule(), err
}

func (s *accessService) RevokeGrant(ctx context.Context, req *cofferv1.RevokeGrantRequest) (*cofferv1.RevokeGrantResponse, error) {
	if err := authz.ValidateRuleID(req.GetId()); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	resp, err := s.write(ctx, &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_RevokeGrant{RevokeGrant: req}})
	return resp.GetRevokeGrant(), err
}

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

// executeAccess runs an access-control write on the leader.
func (n *Node) executeAccess(ctx context.Context, c caller, op *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error) {
	if err := n.ensureLeaderReady(); err != nil {
		return nil, err
	}
	now := time.Now().UnixNano()
	switch o := op.GetOp().(type) {
	case *cofferv1.ForwardRequest_RegisterClient:
		if err := n.authorize(c, authz.OpClientManage, ""); err != nil {
			return nil, err
		}
		req := o.RegisterClient
		if err := validateRegister(req); err != nil {
			return nil, err
		}
		rec := &cofferv1.ClientRecord{Name: req.GetName(), Active: true, Groups: req.GetGroups(), Roles: req.GetRoles(),
			CreatedUnixNano: now, Revision: 1}
		var expected uint64
		if cur, err := n.barrier.VerifiedClient(req.GetName()); err == nil {
			if !req.GetUpdate() {
				return nil, fmt.Errorf("%w: %q (use update to change its groups and roles)", fsm.ErrClientExists, req.GetName())
			}
			rec.Active, rec.CreatedUnixNano = cur.GetActive(), cur.GetCreatedUnixNano()
			expected, rec.Revision = cur.GetRevision(), cur.GetRevision()+1
		}
		if err := n.barrier.Tag("c/"+rec.GetName(), rec, nil); err != nil {
			return nil, err
		}
		res, err := n.proposeCommand(ctx, cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT, &cofferv1.PutClientCommand{Client: rec, ExpectedRevision: expected})
		if err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_Client{Client: clientInfo(res.Client)}}, nil
	case *cofferv1.ForwardRequest_SetClientActive:
		if err := n.authorize(c, authz.OpClientManage, ""); err != nil {
			return nil, err
		}
		cur, err := n.barrier.VerifiedClient(o.SetClientActive.GetName())
		if err != nil {
			return nil, err
		}
		rec := proto.CloneOf(cur)
		rec.Active, rec.Revision = o.SetClientActive.GetActive(), cur.GetRevision()+1
		if err := n.barrier.Tag("c/"+rec.GetName(), rec, nil); err != nil {
			return nil, err
		}
		res, err := n.proposeCommand(ctx, cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT, &cofferv1.PutClientCommand{Client: rec, ExpectedRevision: cur.GetRevision()})
		if err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_Client{Client: clientInfo(res.Client)}}, nil
	case *cofferv1.ForwardRequest_RevokeCertificate:
		if err := n.authorize(c, authz.OpClientManage, ""); err != nil {
			return nil, err
		}
		serial, err := validateRevoke(o.RevokeCertificate)
		if err != nil {
			return nil, err
		}
		if _, err := n.proposeCommand(ctx, cofferv1.CommandType_COMMAND_TYPE_REVOKE_CERTIFICATE, &cofferv1.RevokeCertificateCommand{
			Certificate: &cofferv1.RevokedCertificate{Serial: serial, Reason: o.RevokeCertificate.GetReason(), RevokedUnixNano: now}}); err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_RevokeCertificate{RevokeCertificate: &cofferv1.RevokeCertificateResponse{Serial: serial}}}, nil
	case *cofferv1.ForwardRequest_Grant:
		if err := n.authorize(c, authz.OpACLManage, ""); err != nil {
			return nil, err
		}
		rule, err := ruleFromGrant(o.Grant, c.String(), now)
		if err != nil {
			return nil, err
		}
		if err := n.barrier.Tag("a/"+rule.GetId(), rule, nil); err != nil {
			return nil, err
		}
		res, err := n.proposeCommand(ctx, cofferv1.CommandType_COMMAND_TYPE_PUT_ACL_RULE, &cofferv1.PutAclRuleCommand{Rule: rule})
		if err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_Rule{Rule: ruleInfo(res.Rule)}}, nil
	case *cofferv1.ForwardRequest_RevokeGrant:
		if err := n.authorize(c, authz.OpACLManage, ""); err != nil {
			return nil, err
		}
		if _, err := n.proposeCommand(ctx, cofferv1.CommandType_COMMAND_TYPE_DELETE_ACL_RULE, &cofferv1.DeleteAclRuleCommand{Id: o.RevokeGrant.GetId()}); err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_RevokeGrant{RevokeGrant: &cofferv1.RevokeGrantResponse{Id: o.RevokeGrant.GetId()}}}, nil
	}
	return nil, fmt.Errorf("%w: not an access-control operation", ErrInvalidArgument)
}

func (s *accessService) read(ctx context.Context, op authz.Op, cons cofferv1.Consistency) error {
	c, err := authenticate(ctx)
	if err != nil {
		return err
	}
	return s.n.authorizedRead(ctx, c, op, cons)
}

func (s *accessService) GetClient(ctx context.Context, req *cofferv1.GetClientRequest) (*cofferv1.ClientInfo, error) {
	if err := authz.ValidateClientName(req.GetName()); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := s.read(ctx, authz.OpClientRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	cl, err := s.n.fsm.Client(req.GetName())
	if err != nil {
		return nil, err
	}
	return clientInfo(cl), nil
}

func (s *accessService) ListClients(ctx context.Context, req *cofferv1.ListClientsRequest) (*cofferv1.ListClientsResponse, error) {
	if err := s.read(ctx, authz.OpClientRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	cls, err := s.n.fsm.Clients()
	if err != nil {
		return nil, err
	}
	out := &cofferv1.ListClientsResponse{}
	for _, c := range cls {
		out.Clients = append(out.Clients, clientInfo(c))
	}
	return out, nil
}

func (s *accessService) ListGrants(ctx context.Context, req *cofferv1.ListGrantsRequest) (*cofferv1.ListGrantsResponse, error) {
	if req.GetSubject() != "" {
		if _, _, err := authz.ParseSubject(req.GetSubject()); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
		}
	}
	if err := s.read(ctx, authz.OpACLRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	rules, err := s.n.fsm.Rules()
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

func (s *accessService) Check(ctx context.Context, req *cofferv1.CheckRequest) (*cofferv1.CheckResponse, error) {
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
	if err := s.read(ctx, authz.OpACLRead, req.GetConsistency()); err != nil {
		return nil, err
	}
	e := s.n.fsm.Authz().Explain(authz.Request{Identity: authz.ClientSubject(req.GetClient()), CertSerial: serial, Op: op, Resource: req.GetResource()})
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
