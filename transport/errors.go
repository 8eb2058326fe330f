package transport

import "errors"

// Sentinel errors. Functions in this package wrap them with %w and add
// context, so callers test with errors.Is.
var (
	// ErrNoIdentity means no Coffer identity could be found: the peer did not
	// present a verified certificate, or the certificate carries no
	// coffer:// URI SAN.
	ErrNoIdentity = errors.New("transport: no coffer identity")

	// ErrInvalidIdentity means an identity is malformed: unknown kind, a name
	// outside 1-64 characters of [A-Za-z0-9._-], a malformed coffer:// URI, or
	// a certificate with more than one coffer:// URI SAN.
	ErrInvalidIdentity = errors.New("transport: invalid coffer identity")

	// ErrNotNode means a peer presented a valid identity that is not a
	// cluster node where only nodes are accepted (the Raft port, or a server
	// that a client dials).
	ErrNotNode = errors.New("transport: peer is not a cluster node")

	// ErrWrongProtocol means a peer on the Raft port did not negotiate the
	// Raft application protocol (RaftALPN), e.g. a gRPC client.
	ErrWrongProtocol = errors.New("transport: peer did not negotiate the expected protocol")

	// ErrInvalidConfig means a configuration value is missing or unusable.
	ErrInvalidConfig = errors.New("transport: invalid configuration")

	// ErrExists means a file that would be written already exists. Errors
	// carrying it also match fs.ErrExist.
	ErrExists = errors.New("transport: refusing to overwrite existing file")

	// ErrBadPEM means PEM input could not be decoded into the expected
	// certificate or private key.
	ErrBadPEM = errors.New("transport: malformed PEM material")

	// ErrKeyMismatch means a private key does not belong to the certificate
	// it was loaded with.
	ErrKeyMismatch = errors.New("transport: private key does not match certificate")

	// ErrNotCA means a certificate loaded as a CA is not a CA certificate.
	ErrNotCA = errors.New("transport: certificate is not a CA")

	// ErrValidity means a requested validity period is not positive or would
	// outlive the issuing CA.
	ErrValidity = errors.New("transport: invalid validity period")

	// ErrUntrusted means a certificate does not chain to the configured CA or
	// lacks the extended key usage its role requires.
	ErrUntrusted = errors.New("transport: certificate not trusted for this role")

	// ErrWrongCA means a certificate carries an identity of a kind its
	// issuing CA may not vouch for: a node identity from the client CA, a
	// client identity from the node CA, or a CA asked to sign a kind its
	// name constraints exclude.
	ErrWrongCA = errors.New("transport: certificate issued by the wrong CA for its identity")

	// ErrRefusedPeer means a node certificate passed the TLS handshake on
	// the Raft port but RaftTransportConfig.Authorize refused its holder
	// (not a member, revoked, or not the certificate pinned for it).
	ErrRefusedPeer = errors.New("transport: raft peer refused")
)
