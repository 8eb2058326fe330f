// Package transport holds Coffer's network security plumbing: the small PKI
// that issues node and client certificates, the identities those
// certificates carry, TLS configurations built from PEM files, the gRPC
// server and client options every Coffer endpoint uses, and the Raft stream
// layer over mutual TLS.
//
// # Identities
//
// Every certificate Coffer issues carries exactly one URI SAN naming who it
// speaks for:
//
//	coffer://node/<name>     a cluster member        Identity{KindNode, name}    "node:<name>"
//	coffer://client/<name>   an API caller           Identity{KindClient, name}  "client:<name>"
//
// Names are 1-64 characters of [A-Za-z0-9._-] and may not be "." or "..".
// The URI SAN is authoritative. The subject (common name, organisation) is
// informational only and is never consulted for authentication or
// authorisation. A certificate with no coffer:// URI has no identity
// (ErrNoIdentity); one with several, or a malformed one, is rejected
// (ErrInvalidIdentity). URI SANs with other schemes are ignored.
//
// Identities are only ever taken from the leaf of a chain that the TLS stack
// verified against the configured CA (IdentityFromContext for gRPC,
// RaftStreamLayer for Raft); unverified peer certificates are never read.
// Whether a client identity is registered, active and authorised is decided
// by the caller (package node), not here.
//
// # Certificates
//
// A deployment has two CAs (DESIGN.md, "Trust model"): the node CA signs
// node certificates, the client CA client certificates, and neither can
// sign the other kind. CreateCA makes a CA for one kind, name-constrained to
// it; CA.Issue creates ECDSA P-256 keys and SHA-256 signed certificates with
// 128-bit random serials, and refuses an identity of a kind its CA may not
// sign (ErrWrongCA). Extended key usages encode the role:
//
//	node    ServerAuth + ClientAuth   may serve gRPC and Raft, and dial both
//	client  ClientAuth only           may only dial gRPC; can never serve
//
// Node certificates must carry the IP and DNS SANs that peers dial, because
// every client verifies the server name (Raft sets it from the dialled host,
// gRPC from the target). Private key files are written 0600, certificates
// 0644, and existing files are never overwritten.
//
// # What is accepted where
//
//	gRPC server (ServerTLS + ServerOptions)
//	    TLS 1.3; a client certificate is required and must carry a valid
//	    identity and chain to the CA of its kind: a node identity to the
//	    node CA (CAFile), a client identity to the client CA (ClientCAFile).
//	    The service layer reads it with IdentityFromContext and decides
//	    membership and grants.
//	gRPC client (ClientTLS + Dial)
//	    TLS 1.3; the server must chain to the node CA, match the dialled
//	    name and present a node identity. ClientTLSWithCertificate is the
//	    same for a key pair whose private key is not a file (a crypto.Signer
//	    in a PKCS#11 token, package p11cred), with the same checks.
//	Raft port (PeerServerTLS, NewRaftTransport), both directions
//	    TLS 1.3 with the RaftALPN application protocol; the peer must chain
//	    to the node CA and present a node identity, and then pass
//	    RaftTransportConfig.Authorize (the member rule), before Raft reads a
//	    byte. A client certificate is refused during the handshake. The
//	    handshake completes, under the I/O timeout, before a connection is
//	    handed to Raft; rejected connections are closed and logged.
//	    RaftStreamLayer.Revalidate closes open connections Authorize no
//	    longer accepts.
//
// Errors wrap the package's sentinel errors (ErrNoIdentity,
// ErrInvalidIdentity, ErrNotNode, ErrInvalidConfig, ...) with %w wherever
// one applies; test for them with errors.Is.
package transport
