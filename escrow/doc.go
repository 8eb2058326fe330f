// Package escrow implements Coffer's offline key recovery.
//
// A custody policy names one or more escrow public keys (RSA, at least 3072
// bits), each held offline by a security officer. The leader encrypts every
// key created under the policy to each escrow key with RSA-OAEP (SHA-256),
// with the key's GKID in the OAEP label so a copy cannot be moved to another
// key, and replicates the copies with the key record. If every HSM is lost,
// an officer recovers keys from a snapshot or a node's data directory with
// the escrow private key alone: no cluster, no keystore.
//
// Private key files are PKCS#8 PEM, mode 0600, optionally encrypted under a
// passphrase (argon2id, AES-256-GCM; see DESIGN.md).
package escrow
