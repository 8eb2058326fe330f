package transport

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"
)

// TLSConfig names the PEM files a node or client uses for mutual TLS.
//
// Coffer trusts two certificate authorities, never one for both roles (see
// DESIGN.md, "Trust model"): the node CA, whose certificates alone may
// carry node identities, and the client CA, whose certificates alone may
// carry client identities. Clients need only the node CA (to verify the
// nodes they dial); nodes need both.
type TLSConfig struct {
	// CAFile holds the node CA certificate(s): the anchors of node
	// identities, and so of every server a node or client dials.
	CAFile string `json:"ca_file"`
	// ClientCAFile holds the client CA certificate(s): the anchors of
	// client identities. Only a node (ServerTLS) needs it; it must share
	// no certificate with CAFile.
	ClientCAFile string `json:"client_ca_file,omitempty"`
	// CertFile and KeyFile are this party's certificate and private key.
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
}

// Validate checks that every path a client needs is set. File contents are
// checked by ServerTLS and ClientTLS; ServerTLS also requires ClientCAFile.
func (c TLSConfig) Validate() error {
	switch {
	case c.CAFile == "":
		return fmt.Errorf("%w: tls: node CA file (ca_file) not set", ErrInvalidConfig)
	case c.CertFile == "":
		return fmt.Errorf("%w: tls: certificate file not set", ErrInvalidConfig)
	case c.KeyFile == "":
		return fmt.Errorf("%w: tls: key file not set", ErrInvalidConfig)
	}
	return nil
}

// ValidateNode checks the paths a node needs: Validate's and ClientCAFile.
func (c TLSConfig) ValidateNode() error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.ClientCAFile == "" {
		return fmt.Errorf("%w: tls: client CA file (client_ca_file) not set: a node needs it to accept API clients", ErrInvalidConfig)
	}
	return nil
}

// ServerTLS returns the API server configuration: TLS 1.3 only, presenting
// this node's certificate and requiring a client certificate that carries a
// valid Coffer identity and chains to the CA of its kind: a node identity
// to the node CA, a client identity to the client CA. A certificate from
// the client CA that claims a node identity is refused in the handshake,
// whatever its name.
//
// The certificate must be a node certificate: it must chain to the node CA
// with the ServerAuth usage and carry a node identity.
func (c TLSConfig) ServerTLS() (*tls.Config, error) {
	nodes, pair, err := c.loadNode()
	if err != nil {
		return nil, err
	}
	clients, err := loadPool(c.ClientCAFile)
	if err != nil {
		return nil, err
	}
	if err := disjoint(nodes, clients, c); err != nil {
		return nil, err
	}
	both := x509.NewCertPool()
	for _, ca := range append(append([]*x509.Certificate(nil), nodes...), clients...) {
		both.AddCert(ca)
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{pair},
		ClientCAs:        both,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		VerifyConnection: verifyCaller(certPool(nodes), certPool(clients)),
	}, nil
}

// PeerServerTLS returns the configuration of a port that serves nodes only
// (the Raft port): like ServerTLS, but only certificates from the node CA
// are asked for and accepted, and they must carry a node identity.
func (c TLSConfig) PeerServerTLS() (*tls.Config, error) {
	nodes, pair, err := c.loadNode()
	if err != nil {
		return nil, err
	}
	pool := certPool(nodes)
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{pair},
		ClientCAs:        pool,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		VerifyConnection: verifyCaller(pool, nil),
	}, nil
}

// loadNode loads this node's key pair, which must chain to the node CA for
// ServerAuth and carry a node identity.
func (c TLSConfig) loadNode() ([]*x509.Certificate, tls.Certificate, error) {
	if err := c.ValidateNode(); err != nil {
		return nil, tls.Certificate{}, err
	}
	cas, pair, id, err := c.load(x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, tls.Certificate{}, err
	}
	if id.Kind != KindNode {
		return nil, tls.Certificate{}, fmt.Errorf("%w: %s: serving requires a node certificate, got %s", ErrNotNode, c.CertFile, id)
	}
	return cas, pair, nil
}

// ClientTLS returns a client configuration: TLS 1.3 only, trusting only the
// node CA and presenting this party's certificate. The server must present
// a node identity. ServerName is left empty: gRPC fills it from the dialled
// target and the Raft stream layer from the dialled host; other callers
// must set it.
func (c TLSConfig) ClientTLS() (*tls.Config, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cas, pair, _, err := c.load(x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{pair},
		RootCAs:          certPool(cas),
		VerifyConnection: verifyPeerIdentity(true),
	}, nil
}

// ClientTLSWithCertificate is ClientTLS presenting pair instead of the
// key pair in CertFile and KeyFile, which are ignored: for a private key
// that lives elsewhere, such as a PKCS#11 token (package p11cred), whose
// pair.PrivateKey is a crypto.Signer backed by the token. Only CAFile is
// required. The pair gets the same checks as a loaded one: its leaf must
// carry a valid identity and, when ClientCAFile is set and it is a client
// identity, chain to that CA for client authentication. A leaf that cannot
// be parsed is ErrBadPEM; a missing certificate ErrInvalidConfig.
func (c TLSConfig) ClientTLSWithCertificate(pair tls.Certificate) (*tls.Config, error) {
	if c.CAFile == "" {
		return nil, fmt.Errorf("%w: tls: node CA file (ca_file) not set", ErrInvalidConfig)
	}
	if len(pair.Certificate) == 0 || pair.PrivateKey == nil {
		return nil, fmt.Errorf("%w: tls: the client certificate or its private key is missing", ErrInvalidConfig)
	}
	cas, err := loadPool(c.CAFile)
	if err != nil {
		return nil, err
	}
	if _, err := c.checkPair(cas, &pair, x509.ExtKeyUsageClientAuth, "the client certificate"); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{pair},
		RootCAs:          certPool(cas),
		VerifyConnection: verifyPeerIdentity(true),
	}, nil
}

// loadPool reads the CA certificates of a PEM file.
func loadPool(path string) ([]*x509.Certificate, error) {
	data, err := readPEMFile(path)
	if err != nil {
		return nil, err
	}
	cas, err := parseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cas, nil
}

func certPool(cas []*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	return pool
}

// disjoint refuses a node CA and client CA that share a certificate: the
// key that signs clients must not be able to mint node identities.
func disjoint(nodes, clients []*x509.Certificate, c TLSConfig) error {
	for _, n := range nodes {
		for _, cl := range clients {
			if bytes.Equal(n.Raw, cl.Raw) {
				return fmt.Errorf("%w: tls: %s and %s hold the same CA (%s): the client CA must be a different CA from the node CA, or whoever issues clients could mint node identities",
					ErrInvalidConfig, c.CAFile, c.ClientCAFile, n.Subject.CommonName)
			}
		}
	}
	return nil
}

// load reads the node CA pool and the key pair and checks that the
// certificate chains to the node CA (a node) or, for a client, that it
// carries a valid identity (a client's own CA is not needed to dial).
func (c TLSConfig) load(usage x509.ExtKeyUsage) ([]*x509.Certificate, tls.Certificate, Identity, error) {
	cas, err := loadPool(c.CAFile)
	if err != nil {
		return nil, tls.Certificate{}, Identity{}, err
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
	id, err := c.checkPair(cas, &pair, usage, c.CertFile)
	if err != nil {
		return nil, tls.Certificate{}, Identity{}, err
	}
	return cas, pair, id, nil
}

// checkPair parses pair's leaf (setting pair.Leaf) and checks that it
// carries a valid identity and chains to the CA of its kind for usage: the
// node CA (cas), or for a client the client CA, checked only when
// ClientCAFile is set. what names the certificate in errors.
func (c TLSConfig) checkPair(cas []*x509.Certificate, pair *tls.Certificate, usage x509.ExtKeyUsage, what string) (Identity, error) {
	leaf := pair.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return Identity{}, fmt.Errorf("%w: %s: %w", ErrBadPEM, what, err)
		}
		pair.Leaf = leaf
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return Identity{}, fmt.Errorf("%s: %w", what, err)
	}
	anchors := cas
	if id.Kind == KindClient {
		// A client certificate chains to the client CA, which a client
		// need not hold; its own file is checked when ClientCAFile is set.
		if c.ClientCAFile == "" {
			return id, nil
		}
		if anchors, err = loadPool(c.ClientCAFile); err != nil {
			return Identity{}, err
		}
	}
	if err := verifyLeaf(leaf, pair.Certificate[1:], certPool(anchors), usage); err != nil {
		return Identity{}, fmt.Errorf("%w: %s: %w", ErrUntrusted, what, err)
	}
	return id, nil
}

// verifyLeaf verifies leaf, with the intermediates sent beside it, against
// roots for usage.
func verifyLeaf(leaf *x509.Certificate, rest [][]byte, roots *x509.CertPool, usage x509.ExtKeyUsage) error {
	inter := x509.NewCertPool()
	for _, der := range rest {
		ic, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadPEM, err)
		}
		inter.AddCert(ic)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: time.Now(), KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// verifyCaller returns a tls.Config.VerifyConnection callback for a server:
// the peer's verified leaf must carry a valid Coffer identity, and verify
// again against the CA of its kind alone (nodes against nodes, clients
// against clients; a nil pool refuses that kind). Failing here aborts the
// handshake with an alert, so the peer learns why it was refused.
func verifyCaller(nodes, clients *x509.CertPool) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		id, err := peerIdentity(cs, false)
		if err != nil {
			return err
		}
		roots := nodes
		if id.Kind == KindClient {
			roots = clients
		}
		if roots == nil {
			return fmt.Errorf("%w: %s", ErrNotNode, id)
		}
		var rest [][]byte
		for _, c := range cs.PeerCertificates[1:] {
			rest = append(rest, c.Raw)
		}
		if err := verifyLeaf(cs.PeerCertificates[0], rest, roots, x509.ExtKeyUsageClientAuth); err != nil {
			return fmt.Errorf("%w: %s must be issued by the %s CA: %w", ErrWrongCA, id, id.Kind, err)
		}
		return nil
	}
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

// CallerVerifier checks a caller's certificate outside a handshake (the
// certificate a node forwards with a client's signed request) as a node's
// handshake does: it must carry a Coffer identity and chain, directly or
// through the node CA for a node identity, to the CA of its kind.
type CallerVerifier struct{ nodes, clients *x509.CertPool }

// CallerVerifier returns the verifier of this node's CAs.
func (c TLSConfig) CallerVerifier() (*CallerVerifier, error) {
	nodes, _, err := c.loadNode()
	if err != nil {
		return nil, err
	}
	clients, err := loadPool(c.ClientCAFile)
	if err != nil {
		return nil, err
	}
	return &CallerVerifier{nodes: certPool(nodes), clients: certPool(clients)}, nil
}

// Verify returns the identity leaf carries once it verified against the
// CA of that identity's kind, now, for client authentication.
func (v *CallerVerifier) Verify(leaf *x509.Certificate) (Identity, error) {
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return Identity{}, err
	}
	roots := v.nodes
	if id.Kind == KindClient {
		roots = v.clients
	}
	if err := verifyLeaf(leaf, nil, roots, x509.ExtKeyUsageClientAuth); err != nil {
		return Identity{}, fmt.Errorf("%w: %s must be issued by the %s CA: %w", ErrWrongCA, id, id.Kind, err)
	}
	return id, nil
}

// VerifyNodeCert checks a node's certificate outside a handshake (the
// certificate of a signed response): it must chain to roots (the node CA)
// for server authentication, now, and carry a node identity.
func VerifyNodeCert(leaf *x509.Certificate, roots *x509.CertPool) (Identity, error) {
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return Identity{}, err
	}
	if id.Kind != KindNode {
		return Identity{}, fmt.Errorf("%w: %s", ErrNotNode, id)
	}
	if err := verifyLeaf(leaf, nil, roots, x509.ExtKeyUsageServerAuth); err != nil {
		return Identity{}, fmt.Errorf("%w: %s must be issued by the node CA: %w", ErrWrongCA, id, err)
	}
	return id, nil
}
