package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// maxRevokeReason bounds a revocation reason.
const maxRevokeReason = 256

func validateRegister(req *cofferv1.RegisterClientRequest) error {
	rec := &cofferv1.ClientRecord{Name: req.GetName(), Active: true, Groups: req.GetGroups(), Roles: req.GetRoles(), Revision: 1}
	if err := authz.ValidateClient(rec); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return nil
}

// revocation is a validated RevokeCertificateRequest.
type revocation struct {
	// serial is the certificate's serial in canonical form.
	serial string
	// holder is whom the certificate the request carried was issued to;
	// the zero Identity when it carried none.
	holder transport.Identity
}

// validateRevoke checks a revocation: its serial, its reason, and the
// certificate if it carries one, which must hold that serial and a Coffer
// identity (its issuer is not checked: the deny list goes by serial, and
// the certificate only names its holder for the audit entry).
func validateRevoke(req *cofferv1.RevokeCertificateRequest) (revocation, error) {
	serial, err := authz.CanonicalSerial(strings.TrimPrefix(strings.ToLower(req.GetSerial()), "0x"))
	if err != nil {
		return revocation{}, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := validReason(req.GetReason(), maxRevokeReason); err != nil {
		return revocation{}, err
	}
	rv := revocation{serial: serial}
	if len(req.GetCertificatePem()) == 0 {
		return rv, nil
	}
	cert, err := parseCertificatePEM(req.GetCertificatePem())
	if err != nil {
		return revocation{}, err
	}
	if got := authz.FormatSerial(cert.SerialNumber); got != serial {
		return revocation{}, fmt.Errorf("%w: the certificate has serial %s, not %s", ErrInvalidArgument, got, serial)
	}
	if rv.holder, err = transport.IdentityFromCert(cert); err != nil {
		return revocation{}, fmt.Errorf("%w: certificate: %v (revoke it by serial alone)", ErrInvalidArgument, err)
	}
	return rv, nil
}

// maxCertificatePEM bounds the certificate a request carries.
const maxCertificatePEM = 64 << 10

// parseCertificatePEM parses a request's certificate_pem: exactly one PEM
// CERTIFICATE block.
func parseCertificatePEM(data []byte) (*x509.Certificate, error) {
	if len(data) == 0 || len(data) > maxCertificatePEM {
		return nil, fmt.Errorf("%w: certificate_pem must be 1..%d bytes of PEM", ErrInvalidArgument, maxCertificatePEM)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: certificate_pem must hold exactly one PEM CERTIFICATE block", ErrInvalidArgument)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate_pem: %v", ErrInvalidArgument, err)
	}
	return cert, nil
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
	cur, err := s.barrier.VerifiedClient(req.GetName())
	if err == nil {
		if !req.GetUpdate() {
			return nil, fmt.Errorf("%w: %q (use update to change its groups and roles)", fsm.ErrClientExists, req.GetName())
		}
		rec.Active, rec.CreatedUnixNano = cur.GetActive(), cur.GetCreatedUnixNano()
		rec.CachePolicy = cur.GetCachePolicy() // an update of roles and groups keeps it
		expected, rec.Revision = cur.GetRevision(), cur.GetRevision()+1
	}
	r.describe(rec.GetName(), clientRegistered(cur, rec))
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
	r.describe(rec.GetName(), clientActivity(rec.GetName(), cur.GetActive(), rec.GetActive()))
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
	rv, err := validateRevoke(req)
	if err != nil {
		return nil, err
	}
	r.describe(certificateRevoked(rv.serial, rv.holder, req.GetReason()))
	if _, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_REVOKE_CERTIFICATE, &cofferv1.RevokeCertificateCommand{
		Certificate: &cofferv1.RevokedCertificate{Serial: rv.serial, Reason: req.GetReason(), RevokedUnixNano: time.Now().UnixNano()}, Audit: r.entry}); err != nil {
		return nil, err
	}
	return &cofferv1.RevokeCertificateResponse{Serial: rv.serial}, nil
}

// grant adds an ACL rule.
func (s *service) grant(ctx context.Context, r *request, req *cofferv1.GrantRequest) (*cofferv1.AclRuleInfo, error) {
	rule, err := ruleFromGrant(req, r.caller.String(), time.Now().UnixNano())
	if err != nil {
		return nil, err
	}
	r.describe(rule.GetSubject(), ruleChanged("granted", rule))
	if err := s.barrier.Tag("a/"+rule.GetId(), rule, nil); err != nil {
		return nil, err
	}
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_PUT_ACL_RULE, &cofferv1.PutAclRuleCommand{Rule: rule, Audit: r.entry})
	if err != nil {
		return nil, err
	}
	return ruleInfo(res.Rule), nil
}

// revokeGrant deletes an ACL rule. Its entry names the rule as it was; a
// rule that does not exist is left to Apply to refuse, as before.
func (s *service) revokeGrant(ctx context.Context, r *request, req *cofferv1.RevokeGrantRequest) (*cofferv1.RevokeGrantResponse, error) {
	rule, err := s.fsm.Rule(req.GetId())
	switch {
	case err == nil:
		r.entry.Resource = clip(rule.GetResourcePattern(), audit.MaxFieldLen)
		r.describe(rule.GetSubject(), ruleChanged("revoked", rule))
	case errors.Is(err, fsm.ErrRuleNotFound):
		r.explain("revoked rule " + req.GetId())
	default:
		return nil, err
	}
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
