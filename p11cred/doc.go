// Package p11cred keeps a Coffer client's credential in a PKCS#11 token (a
// smartcard, a TPM through its PKCS#11 library, an HSM; SoftHSM2 in tests):
// the private key of its mTLS certificate, and a secret from which the key
// of its encrypted cache file is derived. Neither ever leaves the token.
//
// # The contract
//
// Open (configured by Config) loads the module, finds the token by label,
// logs in with the user PIN, read from a file or an environment variable
// (never from a command-line value, which process listings would show),
// finds the private key by CKA_LABEL and checks, with one signature, that
// it matches its public key. Then:
//
//   - Signer is a crypto.Signer whose Sign runs C_Sign in the token: ECDSA
//     P-256 (CKM_ECDSA, any hash, ASN.1 DER output as crypto/ecdsa gives)
//     and RSA of 2048 bits or more (PSS for *rsa.PSSOptions, which TLS 1.3
//     uses, PKCS #1 v1.5 otherwise; SHA-256/384/512). rand is ignored.
//   - Certificate returns a tls.Certificate whose PrivateKey is that
//     Signer: Go's TLS stack signs the handshake with it, and the client
//     library can take Config.TLS.Certificates[0].PrivateKey.(crypto.Signer)
//     to sign requests with the same key. The chain comes from
//     Config.CertFile (PEM, leaf first) or, when that is empty, from the
//     token's X.509 certificate object with the key's label (StoreCertificate
//     puts it there). Pass it to transport.TLSConfig.ClientTLSWithCertificate
//     for Coffer's client TLS settings.
//   - DeriveKey(info) is HMAC-SHA256, computed in the token under a 256-bit
//     generic secret labelled "<key label>-cache" (Config.CacheKeyLabel),
//     over "coffer-client-cache-key-v1" ‖ 0x00 ‖ info: 32 bytes, the same
//     for the same token, secret and info in every session and process,
//     unrelated for any other. It has the signature of
//     client.Config.CacheFileKey (func(info []byte) ([]byte, error)); the
//     cache file's key is therefore as hard to take away as the token.
//   - Every method is safe for concurrent use. Operations run on a bounded
//     pool of Config.Sessions sessions (one PKCS#11 operation per session at
//     a time), so TLS handshakes on several connections sign at once.
//   - A lost session, login or device (the token reset, a smartcard
//     re-inserted) is repaired once per operation: the credential opens a
//     new session, logs in again with the PIN source, finds its objects
//     again and retries; a key that is no longer the one opened is refused
//     (ErrMismatch), and a PIN the token now refuses is reported (ErrPIN)
//     to every later operation without another login attempt, so a changed
//     PIN file cannot lock the token. Close closes every session and
//     releases the module.
//   - Errors wrap one of the package's sentinels (ErrPIN, ErrNotFound,
//     ErrUnavailable, …) and, for a failed PKCS#11 call, also hsmwrap's
//     error naming the call and its return value. They never carry the PIN.
//
// Provisioning: GenerateKey makes, inside the token, the EC P-256 key pair
// (hsmwrap's signing key template: sensitive, never extractable, CKM_ECDSA
// only) and the cache secret (sensitive, never extractable,
// CKM_SHA256_HMAC only), tied together by one random CKA_ID. CreateCSR
// makes a PKCS #10 request for coffer://client/NAME signed in the token,
// which `coffer client sign` turns into a certificate with the client CA's
// key; StoreCertificate stores it back in the token. `coffer pkcs11` runs
// these steps.
//
// # Why a package of its own
//
// hsmwrap is the node's keystore boundary: its reason to change is how a
// node keeps the master key and the KEKs. This package's reason to change
// is how a client authenticates and protects its cache; it is imported by
// client programs (the CLI, applications using the client library), which
// have no keystore. What both need from PKCS#11 — the process-wide module
// registry (a library is initialised once per process, and C_Finalize ends
// every user's sessions, so the two must share it), token lookup, login,
// the mapping of return values to errors, EC point decoding and the signing
// key templates — stays in hsmwrap, exported in hsmwrap/pkcs11_shared.go,
// and is not written twice. hsmwrap's session pool is not reused: it is
// tied to the master key (every re-established epoch checks it and reloads
// KEKs); the credential's pool here is the same idea, much smaller.
//
// # Threat model
//
// The key and the cache secret are generated in the token, are
// CKA_SENSITIVE and never CKA_EXTRACTABLE, so neither a copy of the
// client's disk nor a dump of its memory reveals them; the process holds
// the PIN (read at login, cleared after the call, and read again for a new
// login) and the derived cache key while it uses it. Whoever holds the PIN
// and the token can sign as the client and derive its cache keys, while
// they hold them: guard the PIN file (mode 0600) like the token. Open logs
// in once and never retries a refused PIN, as tokens lock after a few.
package p11cred
