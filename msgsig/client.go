package msgsig

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/coffer-kms/coffer/transport"
)

// NewRequestID returns a random request id: 24 bytes from crypto/rand,
// URL-safe base64 without padding (32 characters).
func NewRequestID() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

// OutgoingRequestID is the request id a call names: the message's own
// request_id when it has one, else the RequestIDHeader of ctx's outgoing
// metadata (its last value).
func OutgoingRequestID(ctx context.Context, req any) string {
	if m, ok := req.(interface{ GetRequestId() string }); ok && m.GetRequestId() != "" {
		return m.GetRequestId()
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		if v := md.Get(RequestIDHeader); len(v) > 0 {
			return v[len(v)-1]
		}
	}
	return ""
}

// ClientInterceptor returns a unary client interceptor that signs the
// requests of RequestSigned methods with s (none if s is nil) and, if
// verifyCert is not nil, refuses the response of a ResponseSigned method
// unless a node whose certificate verifyCert accepts signed it for the
// request as sent. A signed call without a request id gets a random one in
// the RequestIDHeader.
func ClientInterceptor(s *Signer, verifyCert CertVerifier) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		var stmt []byte
		reqID := OutgoingRequestID(ctx, req)
		if m, ok := req.(proto.Message); ok && s != nil && RequestSigned(method) {
			if reqID == "" {
				reqID = NewRequestID()
				ctx = metadata.AppendToOutgoingContext(ctx, RequestIDHeader, reqID)
			}
			sig, err := s.SignRequest(method, reqID, time.Now(), m)
			if err != nil {
				return err
			}
			if ctx, err = WithRequestSignature(ctx, sig); err != nil {
				return err
			}
			stmt = sig.GetStatement()
		}
		_, isMsg := reply.(proto.Message)
		verifying := isMsg && verifyCert != nil && ResponseSigned(method)
		var trailer metadata.MD
		if verifying {
			opts = append(opts, grpc.Trailer(&trailer))
		}
		if err := invoker(ctx, method, req, reply, cc, opts...); err != nil || !verifying {
			return err
		}
		m := reply.(proto.Message)
		sig, err := ResponseSignatureFrom(trailer)
		if err == nil && sig == nil {
			err = ErrUnsigned
		}
		if err == nil {
			_, err = VerifyResponse(sig, verifyCert, method, reqID, stmt, m)
		}
		if err != nil {
			proto.Reset(m) // nothing unverified reaches the caller
			return fmt.Errorf("msgsig: response of %s refused: %w", method, err)
		}
		return nil
	}
}

// NodeCertVerifier returns a CertVerifier that accepts node certificates
// chaining to roots (the cluster's node CA) for server authentication,
// and returns the node identity they name. It remembers up to 64
// certificates it verified, until they expire, so that a response from a
// node it knows costs no parsing and no chain verification.
func NodeCertVerifier(roots *x509.CertPool) CertVerifier {
	type verified struct {
		pub      crypto.PublicKey
		node     string
		notAfter time.Time
	}
	var (
		mu   sync.Mutex
		seen = map[[sha256.Size]byte]verified{}
	)
	return func(der []byte) (crypto.PublicKey, string, error) {
		h := sha256.Sum256(der)
		now := time.Now()
		mu.Lock()
		v, ok := seen[h]
		mu.Unlock()
		if ok && now.Before(v.notAfter) {
			return v.pub, v.node, nil
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, "", fmt.Errorf("%w: the node certificate does not parse: %v", ErrMalformed, err)
		}
		id, err := transport.VerifyNodeCert(cert, roots)
		if err != nil {
			return nil, "", err
		}
		mu.Lock()
		defer mu.Unlock()
		if len(seen) >= 64 {
			clear(seen)
		}
		seen[h] = verified{pub: cert.PublicKey, node: id.String(), notAfter: cert.NotAfter}
		return cert.PublicKey, id.String(), nil
	}
}
