// Package hsmwrap is Coffer's keystore boundary: the one place where the
// master key and the policy KEKs live, and where key material is wrapped
// and unwrapped.
//
// # The contract
//
// Everything above this package talks to a Keystore (see its documentation
// for the full contract). In short:
//
//   - The master key never leaves the keystore. A KEK leaves it only wrapped
//     under the master key, as GenerateKEK's result, which the leader
//     replicates through Raft and every node loads with LoadKEK. A wrapped
//     KEK is bound to its KEKID: it loads under that id or not at all.
//   - Seal and Open are AES-256-GCM under a loaded KEK, with caller-supplied
//     associated data; the output carries its own nonce. Any change to the
//     ciphertext, the associated data or the KEK fails with ErrIntegrity and
//     yields nothing.
//   - Every method is safe for concurrent use; errors wrap the package's
//     sentinel errors and never carry key material.
//
// Software, described below, is the embedded default. The interface is
// shaped so that a PKCS#11 implementation (an HSM; SoftHSM2 in tests) fits
// it call for call; DESIGN.md explains how, and specifies the formats.
//
// # The software keystore
//
// Software does AES-256-GCM in process memory. Its master key is kept on
// disk in a sealed master key file (CreateMasterKeyFile): the key encrypted
// under a key derived either from a passphrase with argon2id or from a key
// file of random bytes with HKDF-SHA256. A node opens the file at start
// (OpenSoftware, configured by SoftwareConfig), runs a self-test, and from
// then on holds the master key and the loaded KEKs in memory. Every node of a
// cluster must hold the same master key: create the sealed file once, then
// install it, and its passphrase or key file, on each node (the key ceremony).
//
// Threat model. The software keystore protects the master key at rest:
//
//   - A copy of the sealed file alone (a stolen disk or backup, a leaked
//     configuration repository) does not reveal the master key without the
//     passphrase or key file. argon2id makes each passphrase guess cost
//     about 64 MiB and a fraction of a second; a key file carries 256 bits.
//   - Raft logs and snapshots hold KEKs only wrapped under the master key, so
//     a copy of a node's state is useless without the master key.
//   - Tampering with the sealed file, a wrapped KEK or a sealed record is
//     detected (GCM authentication; headers and ids are associated data).
//
// It does not protect against an attacker who controls the running process
// or its host: root, a debugger or ptrace, /proc/<pid>/mem, core dumps,
// swap, a hypervisor snapshot. Such an attacker can read the AES key
// schedules (equivalent to the keys) out of memory, and can read a
// passphrase from the process environment or its file. Raw key bytes are
// zeroed as soon as their key schedules exist, but Go gives no way to zero
// or lock the schedules, and the garbage collector may have copied them;
// zeroing is best effort. A key file stored next to the sealed file gives no
// protection at rest either: keep it on separate storage (a secrets mount, a
// removable medium) and restrict both files to the service user (they are
// written with mode 0600). Where this model is not enough, use an HSM
// through the PKCS#11 keystore: there the keys never enter process memory.
//
// Nonces are random 96-bit values, so one KEK must not seal 2^32 times or
// more over its life; rotate KEKs (a new Version) well before that.
//
// # The PKCS#11 keystore
//
// PKCS11 (OpenPKCS11, configured by PKCS11Config) keeps the master key as an
// AES-256 token object in an HSM (CKA_SENSITIVE, wrappable only under a key
// the security officer marked trusted, usable only for key wrap and CMAC)
// and does every operation inside the HSM through a bounded pool of
// logged-in sessions: KEKs are unwrapped into sensitive, non-extractable
// session objects, Seal and Open are CKM_AES_GCM with nonces from the HSM's
// RNG, in the software keystore's output format. A wrapped KEK is an RFC
// 5649 key wrap under the master key plus an AES-CMAC tag, also under the
// master key, over the KEKID and the wrap, verified in the HSM before
// anything is unwrapped. Lost sessions, a logged-out token or a re-inserted
// device are re-established transparently (KEKs are reloaded from the blobs
// kept for them); what cannot be repaired fails with ErrUnavailable, and
// Healthy reports it. The PIN comes from a file or an environment variable
// and is the one secret the process holds: key bytes never enter it.
//
// The same master key reaches every node's HSM through the key ceremony
// (InitMasterKey, NewTransportKey, ExportMasterKey, ImportMasterKey,
// MasterKeyKCV; `cofferd keystore` runs each step): the master key travels
// wrapped under an RSA-3072 transport key generated in the receiving HSM.
// DESIGN.md has the formats, the runbook and the trade-offs.
package hsmwrap
