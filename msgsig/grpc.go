package msgsig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/transport"
)

// RequestSignatureFrom returns the request signature in ctx's incoming
// metadata: nil without error when there is none, ErrMalformed when there
// are several or it does not decode.
func RequestSignatureFrom(ctx context.Context) (*cofferv1.RequestSignature, error) {
	vals := metadata.ValueFromIncomingContext(ctx, RequestHeader)
	switch {
	case len(vals) == 0:
		return nil, nil
	case len(vals) > 1:
		return nil, fmt.Errorf("%w: %d %s headers", ErrMalformed, len(vals), RequestHeader)
	case len(vals[0]) > MaxStatementLen+MaxSignatureLen+16:
		return nil, fmt.Errorf("%w: %s header of %d bytes", ErrMalformed, RequestHeader, len(vals[0]))
	}
	var sig cofferv1.RequestSignature
	if err := proto.Unmarshal([]byte(vals[0]), &sig); err != nil {
		return nil, fmt.Errorf("%w: %s header does not decode: %v", ErrMalformed, RequestHeader, err)
	}
	return &sig, nil
}

// WithRequestSignature returns ctx with sig in its outgoing metadata,
// replacing any signature set before.
func WithRequestSignature(ctx context.Context, sig *cofferv1.RequestSignature) (context.Context, error) {
	b, err := proto.Marshal(sig)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding the signature: %v", ErrMalformed, err)
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	md = md.Copy()
	md.Set(RequestHeader, string(b))
	return metadata.NewOutgoingContext(ctx, md), nil
}

// ResponseSignatureFrom decodes the response signature of a call's
// trailer: nil without error when there is none.
func ResponseSignatureFrom(trailer metadata.MD) (*cofferv1.ResponseSignature, error) {
	vals := trailer.Get(ResponseTrailer)
	switch {
	case len(vals) == 0:
		return nil, nil
	case len(vals) > 1:
		return nil, fmt.Errorf("%w: %d %s trailers", ErrMalformed, len(vals), ResponseTrailer)
	}
	var sig cofferv1.ResponseSignature
	if err := proto.Unmarshal([]byte(vals[0]), &sig); err != nil {
		return nil, fmt.Errorf("%w: %s trailer does not decode: %v", ErrMalformed, ResponseTrailer, err)
	}
	return &sig, nil
}

// SignResponses returns a unary server interceptor that signs, as node,
// the successful responses of the methods ResponseSigned names, and sends
// the signature in the ResponseTrailer. A response it cannot sign is not
// sent: the caller gets the error instead.
func (s *Signer) SignResponses(node string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err != nil || !ResponseSigned(info.FullMethod) {
			return resp, err
		}
		m, ok := resp.(proto.Message)
		if !ok {
			return nil, fmt.Errorf("%w: response %T is not a protobuf message", ErrMalformed, resp)
		}
		var stmt []byte
		if rs, err := RequestSignatureFrom(ctx); err == nil && rs != nil {
			stmt = rs.GetStatement()
		}
		sig, err := s.SignResponse(node, info.FullMethod, RequestID(ctx, req), stmt, time.Now(), m)
		if err != nil {
			return nil, err
		}
		b, err := proto.Marshal(sig)
		if err != nil {
			return nil, fmt.Errorf("%w: encoding the response signature: %v", ErrMalformed, err)
		}
		if err := grpc.SetTrailer(ctx, metadata.Pairs(ResponseTrailer, string(b))); err != nil {
			return nil, fmt.Errorf("msgsig: attaching the response signature: %w", err)
		}
		return resp, nil
	}
}

// ResponseSigner returns the interceptor with which a node signs its
// responses (SignResponses): with the key of its certificate, which must
// chain to the node CA, as the node identity the certificate names.
func ResponseSigner(cert tls.Certificate) (grpc.UnaryServerInterceptor, error) {
	if len(cert.Certificate) == 0 {
		return nil, fmt.Errorf("%w: no node certificate", ErrKey)
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("%w: the node certificate does not parse: %v", ErrKey, err)
		}
	}
	id, err := transport.IdentityFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKey, err)
	}
	s, err := NewSigner(cert)
	if err != nil {
		return nil, err
	}
	return s.SignResponses(id.String()), nil
}
