package node

import (
	"context"
	"crypto/x509"
	"fmt"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/transport"
)

// caller is an authenticated identity and the serial of the certificate it
// presented (checked against the replicated deny list).
type caller struct {
	id     transport.Identity
	serial string
	// cert is the verified leaf the caller presented to this node; nil for
	// a caller forwarded by another node.
	cert *x509.Certificate
}

func (c caller) String() string { return c.id.String() }

func (c caller) proto() *cofferv1.Caller {
	return &cofferv1.Caller{Identity: c.id.String(), CertSerial: c.serial}
}

// authenticate returns the caller from its verified certificate.
func authenticate(ctx context.Context) (caller, error) {
	cert, id, err := transport.PeerFromContext(ctx)
	if err != nil {
		return caller{}, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	return caller{id: id, serial: authz.FormatSerial(cert.SerialNumber), cert: cert}, nil
}

// callerFromProto rebuilds a caller forwarded by another node.
func callerFromProto(p *cofferv1.Caller) (caller, error) {
	id, err := transport.ParseIdentity(p.GetIdentity())
	if err != nil {
		return caller{}, fmt.Errorf("%w: forwarded caller: %v", ErrInvalidArgument, err)
	}
	serial, err := authz.CanonicalSerial(p.GetCertSerial())
	if err != nil {
		return caller{}, fmt.Errorf("%w: forwarded caller serial: %v", ErrInvalidArgument, err)
	}
	return caller{id: id, serial: serial}, nil
}

// authorize is where the request path asks for a decision: the caller, the
// operation and (for key operations) the key's resource, against this
// node's committed state. Nodes pass only for what a node legitimately asks
// of another (cluster status), and only while they are members
// (checkMember). (A linearizable key read
// is decided by Apply, with the same authz.Snapshot.Decide, at its place in
// the log: fsm/reads.go; the node then checks it here too.)
func (s *service) authorize(c caller, op authz.Op, resource string) error {
	if c.id.Kind == transport.KindNode {
		if op != authz.OpClusterRead {
			return fmt.Errorf("%w: node identities may not call %s", ErrPermission, op)
		}
		if err := s.replica.checkMember(c.id, c.cert, doorStatus); err != nil {
			metricDenied.WithLabelValues(string(op)).Inc()
			return err
		}
		return nil
	}
	d := s.decideClient(c, op, resource)
	if d.Allowed {
		return nil
	}
	metricDenied.WithLabelValues(string(op)).Inc()
	if d.Code == authz.Unauthenticated {
		return fmt.Errorf("%w: %s", ErrUnauthenticated, d.Reason)
	}
	return fmt.Errorf("%w: %s", ErrPermission, d.Reason)
}

// decideClient is this node's decision on a client's request.
func (s *service) decideClient(c caller, op authz.Op, resource string) authz.Decision {
	return s.fsm.Authz().Decide(authz.Request{Identity: c.id.String(), CertSerial: c.serial, Op: op, Resource: resource})
}

// authorizedRead checks an administrative read: the consistency asked for,
// the read linearized, then the caller's grant for op.
func (s *service) authorizedRead(ctx context.Context, c caller, op authz.Op, cons cofferv1.Consistency) error {
	if err := validConsistency(cons); err != nil {
		return err
	}
	if err := s.replica.linearize(ctx, cons); err != nil {
		return err
	}
	return s.authorize(c, op, "")
}
