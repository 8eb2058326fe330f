package msgsig

import (
	"bytes"
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// Names and bounds of the format (FORMAT.md).
const (
	// RequestHeader is the gRPC header that carries a RequestSignature.
	RequestHeader = "coffer-request-signature-bin"
	// ResponseTrailer is the gRPC trailer that carries a
	// ResponseSignature.
	ResponseTrailer = "coffer-response-signature-bin"
	// RequestIDHeader is the gRPC header in which a caller names a request
	// whose message has no request_id field of its own.
	RequestIDHeader = "coffer-request-id"
	// RequestContext and ResponseContext are the statements' context
	// strings: a signature made for one kind never verifies as the other.
	RequestContext  = "coffer-request-v1"
	ResponseContext = "coffer-response-v1"
	// MaxSkew is how far a request statement's time may be from the
	// verifying node's clock.
	MaxSkew = 5 * time.Minute
	// MaxStatementLen, MaxSignatureLen and MaxCertificateLen bound what a
	// verifier accepts (and what an audit entry keeps).
	MaxStatementLen   = 4096
	MaxSignatureLen   = 1024
	MaxCertificateLen = 16384
)

// Signer holds a party's signing key and certificate.
type Signer struct {
	key      crypto.Signer
	cert     []byte // leaf, DER
	certHash [sha256.Size]byte
}

// NewSigner returns a signer for the certificate's key, which must be a
// crypto.Signer of a supported type (ECDSA, Ed25519, RSA).
func NewSigner(cert tls.Certificate) (*Signer, error) {
	if len(cert.Certificate) == 0 {
		return nil, fmt.Errorf("%w: no certificate", ErrKey)
	}
	key, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: the certificate's private key (%T) cannot sign", ErrKey, cert.PrivateKey)
	}
	if _, err := sign(key, []byte("probe")); err != nil {
		return nil, err
	}
	return &Signer{key: key, cert: cert.Certificate[0], certHash: sha256.Sum256(cert.Certificate[0])}, nil
}

// BodyDigest is the SHA-256 of m's deterministic protobuf encoding: fields
// in field-number order, map entries sorted by key.
func BodyDigest(m proto.Message) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding the message: %v", ErrMalformed, err)
	}
	d := sha256.Sum256(b)
	return d[:], nil
}

// RequestID is the request id a request names: the message's own
// request_id field when it has one, else the RequestIDHeader of ctx's
// incoming metadata.
func RequestID(ctx context.Context, req any) string {
	if m, ok := req.(interface{ GetRequestId() string }); ok && m.GetRequestId() != "" {
		return m.GetRequestId()
	}
	if v := metadata.ValueFromIncomingContext(ctx, RequestIDHeader); len(v) > 0 {
		return v[0]
	}
	return ""
}

// BodyNonceLen is the length of a request signature's body_nonce.
const BodyNonceLen = 32

// bodyCommitment is HMAC-SHA256(nonce, deterministic encoding of m).
func bodyCommitment(nonce []byte, m proto.Message) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding the message: %v", ErrMalformed, err)
	}
	mac := hmac.New(sha256.New, nonce)
	mac.Write(b)
	return mac.Sum(nil), nil
}

// SignRequest signs a request of method (its full gRPC name) named
// requestID, at time at.
func (s *Signer) SignRequest(method, requestID string, at time.Time, req proto.Message) (*cofferv1.RequestSignature, error) {
	nonce := make([]byte, BodyNonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("msgsig: %w", err)
	}
	body, err := bodyCommitment(nonce, req)
	if err != nil {
		return nil, err
	}
	st := &cofferv1.RequestStatement{Context: RequestContext, Method: method, RequestId: requestID,
		TimeUnixNano: at.UnixNano(), BodyHmac: body, CertificateSha256: s.certHash[:]}
	subject(st, req)
	enc, err := proto.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding the statement: %v", ErrMalformed, err)
	}
	sig, err := sign(s.key, enc)
	if err != nil {
		return nil, err
	}
	return &cofferv1.RequestSignature{Statement: enc, Signature: sig, BodyNonce: nonce}, nil
}

// subject copies what the request names into the statement.
func subject(st *cofferv1.RequestStatement, req any) {
	if m, ok := req.(interface{ GetGkid() string }); ok {
		st.Gkid = m.GetGkid()
	}
	if m, ok := req.(interface{ GetResource() string }); ok {
		st.Resource = m.GetResource()
	}
	if m, ok := req.(interface{ GetSealTo() *cofferv1.SealTo }); ok && len(m.GetSealTo().GetPublicKey()) > 0 {
		d := sha256.Sum256(m.GetSealTo().GetPublicKey())
		st.SealToSha256 = d[:]
	}
}

// VerifyStatement checks that signature is cert's signature of statement,
// an encoded RequestStatement naming cert, and returns the statement. It
// needs nothing but what an audit entry keeps and the client's
// certificate: it is the offline check.
func VerifyStatement(statement, signature []byte, cert *x509.Certificate) (*cofferv1.RequestStatement, error) {
	if len(statement) == 0 || len(signature) == 0 {
		return nil, ErrUnsigned
	}
	if len(statement) > MaxStatementLen || len(signature) > MaxSignatureLen {
		return nil, fmt.Errorf("%w: statement of %d bytes or signature of %d bytes (at most %d and %d)", ErrMalformed, len(statement), len(signature), MaxStatementLen, MaxSignatureLen)
	}
	var st cofferv1.RequestStatement
	if err := proto.Unmarshal(statement, &st); err != nil {
		return nil, fmt.Errorf("%w: the request statement does not decode: %v", ErrMalformed, err)
	}
	if st.GetContext() != RequestContext {
		return nil, fmt.Errorf("%w: statement context %q, want %q", ErrMalformed, st.GetContext(), RequestContext)
	}
	h := sha256.Sum256(cert.Raw)
	if !bytes.Equal(st.GetCertificateSha256(), h[:]) {
		return nil, fmt.Errorf("%w: the statement names another certificate", ErrMismatch)
	}
	if err := verify(cert.PublicKey, statement, signature); err != nil {
		return nil, err
	}
	return &st, nil
}

// VerifyRequest checks a request's signature as the node that decides it
// does: the statement verifies under cert (the certificate the caller
// authenticated with), names method and requestID, was made within MaxSkew
// of now, and describes req (body digest, gkid, resource, HPKE key).
func VerifyRequest(sig *cofferv1.RequestSignature, cert *x509.Certificate, method, requestID string, req proto.Message, now time.Time) (*cofferv1.RequestStatement, error) {
	st, err := VerifyStatement(sig.GetStatement(), sig.GetSignature(), cert)
	if err != nil {
		return nil, err
	}
	if st.GetMethod() != method {
		return nil, fmt.Errorf("%w: signed for %s, sent to %s", ErrMismatch, st.GetMethod(), method)
	}
	if st.GetRequestId() != requestID {
		return nil, fmt.Errorf("%w: signed for request id %q, the request names %q", ErrMismatch, st.GetRequestId(), requestID)
	}
	if d := now.Sub(time.Unix(0, st.GetTimeUnixNano())); d > MaxSkew || d < -MaxSkew {
		return nil, fmt.Errorf("%w: signed at %s, %s from this node's clock (at most %s)", ErrMismatch,
			time.Unix(0, st.GetTimeUnixNano()).UTC().Format(time.RFC3339), d.Round(time.Second), MaxSkew)
	}
	if len(sig.GetBodyNonce()) != BodyNonceLen {
		return nil, fmt.Errorf("%w: body_nonce of %d bytes, want %d", ErrMalformed, len(sig.GetBodyNonce()), BodyNonceLen)
	}
	body, err := bodyCommitment(sig.GetBodyNonce(), req)
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(body, st.GetBodyHmac()) {
		return nil, fmt.Errorf("%w: the request's arguments differ from those signed", ErrMismatch)
	}
	want := &cofferv1.RequestStatement{}
	subject(want, req)
	if want.GetGkid() != st.GetGkid() || want.GetResource() != st.GetResource() || !bytes.Equal(want.GetSealToSha256(), st.GetSealToSha256()) {
		return nil, fmt.Errorf("%w: the statement's gkid, resource or HPKE key differ from the request's", ErrMismatch)
	}
	return st, nil
}

// SignResponse signs the response to a request of method named requestID,
// whose encoded statement was reqStatement (nil for an unsigned request),
// as node.
func (s *Signer) SignResponse(node, method, requestID string, reqStatement []byte, at time.Time, resp proto.Message) (*cofferv1.ResponseSignature, error) {
	body, err := BodyDigest(resp)
	if err != nil {
		return nil, err
	}
	st := &cofferv1.ResponseStatement{Context: ResponseContext, Method: method, RequestId: requestID,
		TimeUnixNano: at.UnixNano(), BodySha256: body, Node: node}
	if len(reqStatement) > 0 {
		h := sha256.Sum256(reqStatement)
		st.RequestStatementSha256 = h[:]
	}
	enc, err := proto.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding the statement: %v", ErrMalformed, err)
	}
	sig, err := sign(s.key, enc)
	if err != nil {
		return nil, err
	}
	return &cofferv1.ResponseSignature{Statement: enc, Signature: sig, Certificate: s.cert}, nil
}

// CertVerifier checks a node certificate (DER: chain and identity) and
// returns its public key and the node identity it names.
type CertVerifier func(der []byte) (crypto.PublicKey, string, error)

// VerifyResponse checks a response's signature as a client does: the
// certificate passes verifyCert, the statement verifies under it, names the
// node the certificate names, method, requestID and the request's own
// statement (reqStatement), and describes resp.
func VerifyResponse(sig *cofferv1.ResponseSignature, verifyCert CertVerifier, method, requestID string, reqStatement []byte, resp proto.Message) (*cofferv1.ResponseStatement, error) {
	if sig == nil || len(sig.GetStatement()) == 0 || len(sig.GetSignature()) == 0 || len(sig.GetCertificate()) == 0 {
		return nil, ErrUnsigned
	}
	if len(sig.GetStatement()) > MaxStatementLen || len(sig.GetSignature()) > MaxSignatureLen || len(sig.GetCertificate()) > MaxCertificateLen {
		return nil, fmt.Errorf("%w: response signature fields too long", ErrMalformed)
	}
	pub, node, err := verifyCert(sig.GetCertificate())
	if err != nil {
		return nil, fmt.Errorf("%w: the node certificate: %w", ErrBadSignature, err)
	}
	var st cofferv1.ResponseStatement
	if err := proto.Unmarshal(sig.GetStatement(), &st); err != nil {
		return nil, fmt.Errorf("%w: the response statement does not decode: %v", ErrMalformed, err)
	}
	if st.GetContext() != ResponseContext {
		return nil, fmt.Errorf("%w: statement context %q, want %q", ErrMalformed, st.GetContext(), ResponseContext)
	}
	if err := verify(pub, sig.GetStatement(), sig.GetSignature()); err != nil {
		return nil, err
	}
	if st.GetNode() != node {
		return nil, fmt.Errorf("%w: signed as %q by the certificate of %q", ErrMismatch, st.GetNode(), node)
	}
	if st.GetMethod() != method || st.GetRequestId() != requestID {
		return nil, fmt.Errorf("%w: signed for %s request %q, asked %s request %q", ErrMismatch, st.GetMethod(), st.GetRequestId(), method, requestID)
	}
	var want []byte
	if len(reqStatement) > 0 {
		h := sha256.Sum256(reqStatement)
		want = h[:]
	}
	if !bytes.Equal(want, st.GetRequestStatementSha256()) {
		return nil, fmt.Errorf("%w: the response answers another request statement", ErrMismatch)
	}
	body, err := BodyDigest(resp)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(body, st.GetBodySha256()) {
		return nil, fmt.Errorf("%w: the response differs from what the node signed", ErrMismatch)
	}
	return &st, nil
}
