// Package audit is the core of Coffer's audit log: the canonical encoding and
// hash chain of audit entries, signed checkpoints, prune markers, the export
// format and the offline verifier. It has no I/O beyond what its callers hand
// it, no clock and, in the chain, no randomness.
//
// # The chain
//
// Every request, granted or denied, has one cofferv1.AuditEntry. The proposer
// fills the request fields and checks them with Validate. When the state
// machine applies the entry it calls Link, which sets seq (the next global
// sequence number), prev_hash (the previous entry's hash, GenesisHash for
// entry 1) and hash:
//
//	hash = SHA-256(EntryDomain || EntryDigestInput(entry))
//
// EntryDigestInput is a fixed, language-independent encoding of every field
// but hash (tag byte, then a fixed-width big-endian integer or a 4-byte
// length and the bytes), so an auditor can recompute it in any language.
// Link is deterministic and cheap (well under a microsecond), fit for
// Raft's Apply.
//
// # Checkpoints
//
// Periodically the leader signs the chain head with its node key: an
// AuditCheckpoint {seq, head, time, signer, public_key} signed over
// CheckpointDigest by Sign, with ECDSA P-256 or Ed25519. Every node checks a
// checkpoint's head against its own chain when applying it
// (ValidateCheckpoint plus a comparison with the hash it stored at seq).
// Auditors verify checkpoints with VerifyCheckpoint against TrustedKeys, the
// nodes' public keys (LoadTrustedKeys reads PEM files).
//
// # Pruning
//
// A prefix 1..s of the log may be dropped once a checkpoint covers s; an
// AuditPruneMarker built by NewPruneMarker from that checkpoint takes its
// place, and the chain continues from the marker's prev_hash.
//
// # Export and verification
//
// Writer and Reader speak the export format, JSON Lines with one entry,
// checkpoint or marker per line, in apply order. Verifier (or VerifyJSONL)
// checks an export with public keys only: consecutive sequence numbers,
// links, hashes, checkpoint heads and signatures, an optional marker, and
// optionally checkpoints the auditor kept from earlier exports. It reports
// the first problem as a *VerifyError naming the first bad sequence number
// and its kind, and otherwise a Report of what is signed and what is not.
//
// # Sensitive details
//
// DetailHMAC computes detail_hmac, an HMAC-SHA256 under a cluster-wide key
// over values that must not appear in the log in the clear.
//
// DESIGN.md specifies every byte (with a worked example that the tests keep
// true), the verification algorithm for independent verifiers, and what the
// scheme does and does not prove.
package audit
