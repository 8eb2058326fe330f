package transport

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"
)

// TLSConfig names the PEM files a node or client uses for mutual TLS.
type TLSConfig struct {
	// CAFile holds the CA certificate(s) peers must chain to.
	CAFile string
	// CertFile and KeyFile are this party's certificate and private key.
	CertFile string
	KeyFile  string
}

// Validate checks that every path is set. File contents are checked by
// ServerTLS and ClientTLS.
func (c TLSConfig) Validate() error {
	switch {
	case c.CAFile == "":
		return fmt.Errorf("%w: tls: CA file not set", ErrInvalidConfig)
	case c.CertFile == "":
		return fmt.Errorf("%w: tls: certificate file not set", ErrInvalidConfig)
	case c.KeyFile == "":
		return fmt.Errorf("%w: tls: key file not set", ErrInvalidConfig)
	}
	return nil
}

// ServerTLS returns a server configuration: TLS 1.3 only, presenting this
// node's certificate and requiring a client certificate that chains to the
// CA and carries a valid Coffer identity (node or client).
//
// The certificate must be a node certificate: it must chain to the CA with
// the ServerAuth usage and carry a node identity.
func (c TLSConfig) ServerTLS() (*tls.Config, error) {
	pool, pair, id, err := c.load(x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	if id.Kind != KindNode {
		return nil, fmt.Errorf("%w: %s: serving requires a node certificate, got %s", ErrNotNode, c.CertFile, id)
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{pair},
		ClientCAs:        pool,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		VerifyConnection: verifyPeerIdentity(false),
	}, nil
}

// ClientTLS returns a client configuration: TLS 1.3 only, trusting only the
// CA and presenting this party's certificate. The server must present a node
// identity. ServerName is left empty: gRPC fills it from the dialled target
// and the Raft stream layer from the dialled host; other callers must set it.
func (c TLSConfig) ClientTLS() (*tls.Config, error) {
	pool, pair, _, err := c.load(x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{pair},
		RootCAs:          pool,
		VerifyConnection: verifyPeerIdentity(true),
	}, nil
}

// load reads the CA pool and the key pair and checks that the certificate
// chains to the CA for usage and carries a valid identity.
func (c TLSConfig) load(usage x509.ExtKeyUsage) (*x509.CertPool, tls.Certificate, Identity, error) {
	if err := c.Validate(); err != nil {
		return nil, tls.Certificate{}, Identity{}, err
	}
	caPEM, err := readPEMFile(c.CAFile)
	if err != nil {
		return nil, tls.Certificate{}, Identity{}, err
	}
	cas, err := parseCertsPEM(caPEM)
	if err != nil {
		return nil, tls.Certificate{}, Identity{}, fmt.Errorf("%s: %w", c.CAFile, err)
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	certPEM, err := readPEMFile(c.CertFile)
	if err != nil {
		return nil, tls.Certificate{}, Identity{}, err
	}
	keyPEM, err := readPEMFile(c.KeyFile)
	if err != nil {
		return nil, tls.Certificate{}, Identity{}, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, tls.Certificate{}, Identity{}, fmt.Errorf("%w: %s, %s: %w", ErrBadPEM, c.CertFile, c.KeyFile, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, tls.Certificate{}, Identity{}, fmt.Errorf("%w: %s: %w", ErrBadPEM, c.CertFile, err)
		}
		pair.Leaf = leaf
	}
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, tls.Certificate{}, Identity{}, fmt.Errorf("%w: %s: %w", ErrBadPEM, c.CertFile, err)
		}
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: inter,
		CurrentTime:   time.Now(),
		KeyUsages:     []x509.ExtKeyUsage{usage},
	}); err != nil {
		return nil, tls.Certificate{}, Identity{}, fmt.Errorf("%w: %s: %w", ErrUntrusted, c.CertFile, err)
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return nil, tls.Certificate{}, Identity{}, fmt.Errorf("%s: %w", c.CertFile, err)
	}
	return pool, pair, id, nil
}

// verifyPeerIdentity returns a tls.Config.VerifyConnection callback that
// requires the peer's verified leaf to carry a valid Coffer identity, and a
// node identity if nodeOnly is set. Failing here aborts the handshake with
// an alert, so the peer learns why it was refused.
func verifyPeerIdentity(nodeOnly bool) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		_, err := peerIdentity(cs, nodeOnly)
		return err
	}
}

// peerIdentity extracts the identity from a completed handshake's verified
// chain and enforces nodeOnly.
func peerIdentity(cs tls.ConnectionState, nodeOnly bool) (Identity, error) {
	id, err := identityFromState(cs.VerifiedChains)
	if err != nil {
		return Identity{}, err
	}
	if nodeOnly && id.Kind != KindNode {
		return id, fmt.Errorf("%w: %s", ErrNotNode, id)
	}
	return id, nil
}

// chainVerify runs first and then second; either may be nil.
func chainVerify(first, second func(tls.ConnectionState) error) func(tls.ConnectionState) error {
	switch {
	case first == nil:
		return second
	case second == nil:
		return first
	}
	return func(cs tls.ConnectionState) error {
		if err := first(cs); err != nil {
			return err
		}
		return second(cs)
	}
}
