// Package msgsig signs and verifies Coffer's message-level signatures: a
// client's signature of each request that releases key material or changes
// state, and a node's signature of each response that carries key material
// or a decision. The bytes are specified in FORMAT.md.
//
// A request is signed over a RequestStatement: the gRPC method, the request
// id, the time, an HMAC of the request message's deterministic encoding
// keyed by a random nonce sent beside the statement (a commitment that
// reveals nothing of the arguments to a reader of the audit), the request's
// gkid, resource and HPKE public key, and the SHA-256 of the signer's
// certificate. The statement travels encoded, with its signature,
// in the RequestHeader gRPC header; the signature covers the encoded bytes
// as sent, so a verifier never re-encodes the statement. Nodes verify it
// against the caller's certificate (VerifyRequest) and keep statement and
// signature in the request's audit entry, which lets an auditor show
// offline, with the client's certificate, that the client asked
// (VerifyStatement).
//
// A response is signed over a ResponseStatement: the method, the request
// id, the time, the SHA-256 of the response message's deterministic
// encoding, the SHA-256 of the request's statement and the node's identity.
// It travels in the ResponseTrailer gRPC trailer with the node's
// certificate, which must chain to the cluster's node CA
// (VerifyResponse).
//
// Which calls are signed is fixed by RequestSigned and ResponseSigned.
// Signatures use the certificate's key: ECDSA with SHA-256 (ASN.1), Ed25519,
// or RSA-PSS with SHA-256. Any crypto.Signer works, including keys held in a
// PKCS#11 token.
package msgsig
