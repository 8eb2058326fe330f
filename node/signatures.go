package node

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/msgsig"
)

// Signed requests (msgsig/FORMAT.md).
//
// A request that releases key material or changes state carries the
// caller's signature of a statement of it, made with the key of the
// certificate the caller authenticated with. The node that decides the
// request checks it: the accepting node for a read, the leader again for a
// forwarded write, against the certificate the accepting node forwards
// (which must chain to the cluster's CAs and name the forwarded caller), so
// a member cannot forward a write as a client it is not. The statement and
// the signature go into the request's audit entry, where an auditor checks
// them offline with the client's certificate (coffer audit verify
// --client-certs). A request without one is refused unless the node's
// configuration allows unsigned requests.

// checkRequestSignature verifies the signature of a request that reached
// this node's door, where the method needs one, and records it in the
// request (its entry, and what a forward carries to the leader).
func (s *service) checkRequestSignature(ctx context.Context, fullMethod string, r *request, req any) error {
	if r.authErr != nil {
		return nil // admit refused the request already
	}
	if !msgsig.RequestSigned(fullMethod) {
		return nil
	}
	sig, err := msgsig.RequestSignatureFrom(ctx)
	if err != nil {
		return s.badSignature(err)
	}
	if sig == nil {
		return s.unsigned(r, fullMethod)
	}
	leaf := r.caller.cert
	if leaf == nil {
		return fmt.Errorf("%w: no verified client certificate to check the request signature with", ErrUnauthenticated)
	}
	m, ok := req.(proto.Message)
	if !ok {
		return fmt.Errorf("%w: request %T is not a protobuf message", ErrInternal, req)
	}
	if _, err := msgsig.VerifyRequest(sig, leaf, fullMethod, msgsig.RequestID(ctx, req), m, time.Now()); err != nil {
		return s.badSignature(err)
	}
	r.signed(sig, leaf.Raw)
	metricRequestSignatures.WithLabelValues("verified").Inc()
	return nil
}

// checkForwardedSignature verifies, on the leader, the signature of a
// write another node accepted: msg is the request fw carries for caller c
// with request id reqID.
func (s *service) checkForwardedSignature(fw *cofferv1.ForwardRequest, r *request, msg proto.Message, reqID string) error {
	sig := fw.GetRequestSignature()
	if sig == nil {
		return s.unsigned(r, "forwarded "+r.entry.GetOperation())
	}
	if len(fw.GetClientCertificate()) == 0 || len(fw.GetClientCertificate()) > msgsig.MaxCertificateLen {
		return s.badSignature(fmt.Errorf("%w: the forward carries %d bytes of client certificate", msgsig.ErrMalformed, len(fw.GetClientCertificate())))
	}
	cert, err := x509.ParseCertificate(fw.GetClientCertificate())
	if err != nil {
		return s.badSignature(fmt.Errorf("%w: the forwarded client certificate does not parse: %v", msgsig.ErrMalformed, err))
	}
	id, err := s.callers.Verify(cert)
	if err != nil {
		return s.badSignature(err)
	}
	if id.String() != r.caller.String() {
		return s.badSignature(fmt.Errorf("%w: the forwarded certificate names %s, the forward %s", msgsig.ErrMismatch, id, r.caller))
	}
	if serial := authz.FormatSerial(cert.SerialNumber); serial != r.caller.serial {
		return s.badSignature(fmt.Errorf("%w: the forwarded certificate's serial is %s, the forward's %s", msgsig.ErrMismatch, serial, r.caller.serial))
	}
	if snap := s.fsm.Authz(); snap != nil && snap.Revoked(r.caller.serial) {
		return fmt.Errorf("%w: certificate revoked", ErrUnauthenticated)
	}
	var st cofferv1.RequestStatement
	if err := proto.Unmarshal(sig.GetStatement(), &st); err != nil {
		return s.badSignature(fmt.Errorf("%w: the request statement does not decode: %v", msgsig.ErrMalformed, err))
	}
	if !methodTakes(st.GetMethod(), msg) {
		return s.badSignature(fmt.Errorf("%w: signed for %s, which does not take a %s", msgsig.ErrMismatch, st.GetMethod(), msg.ProtoReflect().Descriptor().FullName()))
	}
	if _, err := msgsig.VerifyRequest(sig, cert, st.GetMethod(), reqID, msg, time.Now()); err != nil {
		return s.badSignature(err)
	}
	r.signed(sig, cert.Raw)
	metricRequestSignatures.WithLabelValues("verified").Inc()
	return nil
}

// methodTakes reports whether fullMethod is a signed method whose request
// message has msg's type.
func methodTakes(fullMethod string, msg proto.Message) bool {
	if !msgsig.RequestSigned(fullMethod) {
		return false
	}
	name := protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(fullMethod, "/"), "/", "."))
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	if err != nil {
		return false
	}
	md, ok := d.(protoreflect.MethodDescriptor)
	return ok && md.Input().FullName() == msg.ProtoReflect().Descriptor().FullName()
}

// signed records a verified signature in the request.
func (r *request) signed(sig *cofferv1.RequestSignature, cert []byte) {
	r.signature, r.cert = sig, cert
	r.entry.RequestStatement, r.entry.RequestSignature = sig.GetStatement(), sig.GetSignature()
}

func (s *service) unsigned(r *request, what string) error {
	if s.cfg.AllowUnsignedRequests {
		metricRequestSignatures.WithLabelValues("unsigned_allowed").Inc()
		return nil
	}
	metricRequestSignatures.WithLabelValues("unsigned_refused").Inc()
	return fmt.Errorf("%w: %s must be signed with the caller's certificate key (the %s header, msgsig/FORMAT.md); this cluster refuses unsigned requests that release key material or change state",
		ErrUnauthenticated, what, msgsig.RequestHeader)
}

func (s *service) badSignature(err error) error {
	metricRequestSignatures.WithLabelValues("refused").Inc()
	return fmt.Errorf("%w: request signature: %w", ErrUnauthenticated, err)
}
