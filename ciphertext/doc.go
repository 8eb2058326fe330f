// Package ciphertext is Coffer's ciphertext format: the self-describing,
// versioned bytes that Encrypt and GenerateDataKey return (a wrapped data
// key is a ciphertext of the data key's bytes), that Decrypt and ReEncrypt
// take, and the functions that write and read them.
//
// A ciphertext names the key that sealed it, so Decrypt needs nothing but
// the ciphertext and the caller's encryption context:
//
//	magic (3) | version (1) | GKID length (1) | GKID | key version (4) | nonce (12) | AES-GCM ciphertext | tag (16)
//
// The cipher is AES-GCM with a 128-, 192- or 256-bit key (the key's own
// size; the ciphertext does not record it), a random 96-bit nonce and a
// 128-bit tag. The associated data is the header (magic to key version),
// the key's resource and the canonical encoding of the encryption context,
// so a ciphertext fails to open if any header field or the nonce is
// changed, under a key of another resource, or with another context.
// FORMAT.md specifies every byte, for implementations in other languages,
// with a worked example the tests keep true.
//
// # Use
//
// To encrypt, the caller resolves a GKID to its current key version and
// calls Seal with the raw key bytes, the key's resource and the caller's
// context. To decrypt, it calls ParseHeader to learn the GKID and key
// version, fetches that key (after checking access), and calls Open with
// the key, its resource and the context. ReEncrypt is Open under one key
// then Seal under another; the caller wipes the plaintext between them.
//
// # Contract
//
//   - The package is pure: no I/O, no logging, no clock, no global state.
//     Its functions are safe for concurrent use, retain none of their
//     arguments, and never modify them.
//   - Every error wraps one sentinel of errors.go with %w, and its message
//     starts with "ciphertext: " and names the cause. No error contains
//     plaintext or key bytes. ErrAuthentication does not say which of key,
//     resource, context or ciphertext differed.
//   - Open returns nil plaintext on any error; plaintext is only released
//     once the whole ciphertext verifies.
//   - ParseHeader never panics and does bounded work on any input; its
//     result is unauthenticated until Open succeeds.
//   - The caller owns the key bytes and wipes them; the AES key schedule
//     Seal and Open derive is left to the garbage collector.
//   - Seal and Open use only what FIPS 140-3 mode permits
//     (GODEBUG=fips140=only): AES-GCM whose nonce the module draws.
//
// # What the caller enforces
//
// The package keeps no state, so the caller:
//   - counts encryptions per key version and stops at MaxEncryptionsPerKey,
//     the NIST SP 800-38D bound for random 96-bit nonces;
//   - passes the key's resource as it is at the time of the call: a
//     ciphertext sealed before the key's resource changed no longer opens;
//   - limits request sizes, using Overhead for the bytes a ciphertext adds;
//   - may call ValidateContext to refuse a bad context before looking up a
//     key (Seal and Open check it again).
//
// # Versions
//
// Version 1 is the only version. A ciphertext with Coffer's magic and
// another version byte is refused with ErrUnsupportedVersion and never
// parsed further. A later version gets a new version byte; the version
// byte alone selects the cipher and every rule after it, which is why the
// header has no separate algorithm field (FORMAT.md, "Design notes").
package ciphertext
