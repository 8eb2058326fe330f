// Package keyseal delivers key material sealed to the one client that
// asked for it, with HPKE (RFC 9180), so that only that client can read it
// even where TLS ends at a proxy.
//
// A request that releases key material (get, a data key) carries a fresh
// public key of the client's (SealTo: a KEM id and the key's bytes). The
// node seals the material to it in single-shot base mode with HKDF-SHA256
// and AES-256-GCM, and with an info string that binds the sealed bytes to
// what was asked (Binding: the operation, the GKID, the key version, the
// request id and the client's identity), so a sealed answer cannot be
// replayed to another request, another client or as another key. The
// client opens it with the private key it kept for that request and the
// binding it expects, and refuses anything else.
//
// Two KEMs are accepted: DHKEM(X25519, HKDF-SHA256) (KEMX25519, the
// default) and the hybrid ML-KEM-768 + X25519 (KEMMLKEM768X25519), for
// material that must stay secret against a future quantum computer that
// records today's traffic. FORMAT.md specifies the info string and the
// sealed bytes so that another client can implement them.
package keyseal
