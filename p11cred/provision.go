package p11cred

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"net/url"

	"github.com/miekg/pkcs11"

	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/transport"
)

// keyIDLen is the length of the random CKA_ID that ties the key pair, the
// cache secret and the certificate object together.
const keyIDLen = 16

// GenerateKey provisions a token for a client: it generates, inside the
// token, an EC P-256 key pair labelled cfg.KeyLabel (the same attributes as
// hsmwrap's signing keys: sensitive, never extractable, CKM_ECDSA signing
// only, not modifiable) and a 256-bit generic secret labelled with the
// cache key label (sensitive, never extractable, CKM_SHA256_HMAC only), all
// persistent token objects sharing one random CKA_ID. Nothing leaves the
// token but the public key, which it returns. It refuses, with ErrExists,
// when a private key or a secret key already has either label, and is all
// or nothing: on failure it removes what it made. cfg.CertFile is ignored.
func GenerateKey(cfg Config) (crypto.PublicKey, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mod, err := hsmwrap.OpenModule(cfg.Module)
	if err != nil {
		return nil, wrapP11("module "+cfg.Module, err)
	}
	defer mod.Close()
	ctx := mod.Ctx()
	slot, err := mod.FindToken(cfg.TokenLabel)
	if err != nil {
		return nil, wrapP11("token "+cfg.TokenLabel, err)
	}
	s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, wrapP11("token "+cfg.TokenLabel, hsmwrap.PKCS11Error("C_OpenSession", err))
	}
	defer ctx.CloseSession(s)
	if err := hsmwrap.LoginUser(ctx, s, cfg.PINFile, cfg.PINEnv); err != nil {
		return nil, wrapP11(fmt.Sprintf("token %s (%s)", cfg.TokenLabel, cfg.pinSource()), err)
	}
	for _, l := range []struct {
		class uint
		label string
	}{{pkcs11.CKO_PRIVATE_KEY, cfg.KeyLabel}, {pkcs11.CKO_SECRET_KEY, cfg.ResolvedCacheKeyLabel()}, {pkcs11.CKO_SECRET_KEY, cfg.KeyLabel}, {pkcs11.CKO_PRIVATE_KEY, cfg.ResolvedCacheKeyLabel()}} {
		hs, err := hsmwrap.FindObjects(ctx, s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, l.class),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, l.label),
		}, 1)
		if err != nil {
			return nil, wrapP11("token "+cfg.TokenLabel, err)
		}
		if len(hs) > 0 {
			return nil, fmt.Errorf("%w: token %s already holds a key labelled %q; choose another label or remove it", ErrExists, cfg.TokenLabel, l.label)
		}
	}
	id, err := ctx.GenerateRandom(s, keyIDLen)
	if err != nil {
		return nil, wrapP11("token "+cfg.TokenLabel, hsmwrap.PKCS11Error("C_GenerateRandom", err))
	}
	if len(id) != keyIDLen {
		return nil, fmt.Errorf("%w: C_GenerateRandom returned %d bytes, want %d", ErrUnavailable, len(id), keyIDLen)
	}
	pubT, privT := hsmwrap.ECSigningKeyTemplates(cfg.KeyLabel, id)
	pub, priv, err := ctx.GenerateKeyPair(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
	if err != nil {
		return nil, wrapP11("generating the key pair", hsmwrap.PKCS11Error("C_GenerateKeyPair(CKM_EC_KEY_PAIR_GEN)", err))
	}
	_, err = ctx.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, cacheSecretTemplate(cfg.ResolvedCacheKeyLabel(), id))
	if err != nil {
		ctx.DestroyObject(s, priv)
		ctx.DestroyObject(s, pub)
		return nil, wrapP11("generating the cache secret", hsmwrap.PKCS11Error("C_GenerateKey(CKM_GENERIC_SECRET_KEY_GEN)", err))
	}
	return findPublicKey(ctx, s, cfg.KeyLabel, id, pkcs11.CKK_EC)
}

// cacheSecretTemplate is the template of the cache secret: a persistent,
// private generic secret of 32 bytes that can compute HMAC-SHA256 and
// nothing else, never readable or extractable. CKA_MODIFIABLE comes last
// (SoftHSM2 applies a template in order).
func cacheSecretTemplate(label string, id []byte) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, DerivedKeyLen),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, hsmwrap.ULongArray(pkcs11.CKM_SHA256_HMAC)),
		pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
	}
}

// CreateCSR returns a PEM certificate request for the client identity
// coffer://client/name (also the subject's common name), signed inside the
// token with the credential's key, for `coffer client sign`.
func (c *Credential) CreateCSR(name string) ([]byte, error) {
	id := transport.Identity{Kind: transport.KindClient, Name: name}
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name},
		URIs:    []*url.URL{id.URI()},
	}, c.key)
	if err != nil {
		return nil, opError("creating the certificate request", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// StoreCertificate stores the leaf of certPEM (PEM, leaf first; further
// certificates are ignored) in the token as an X.509 certificate object
// labelled with the key label and carrying the key's CKA_ID, so that
// Certificate finds it when no certificate file is configured. The leaf
// must be for the token's key (ErrMismatch). A certificate already stored
// under the label is replaced (a renewal) once the new one is in place.
// Certificates are public: the object is not private, so tools can list it
// without the PIN.
func (c *Credential) StoreCertificate(certPEM []byte) error {
	chain, err := decodeChain(certPEM)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return fmt.Errorf("%w: certificate: %w", ErrInvalidArgument, err)
	}
	if !publicEqual(leaf.PublicKey, c.key.pub) {
		return fmt.Errorf("%w: the certificate for %q is not for the key labelled %q", ErrMismatch, leaf.Subject.CommonName, c.cfg.KeyLabel)
	}
	serial, err := asn1.Marshal(leaf.SerialNumber)
	if err != nil {
		return fmt.Errorf("%w: certificate serial: %w", ErrInvalidArgument, err)
	}
	err = c.run(func(s pkcs11.SessionHandle, _ *state) error {
		old, err := hsmwrap.FindObjects(c.ctx, s, certTemplate(c.cfg.KeyLabel), 16)
		if err != nil {
			return err
		}
		tmpl := append(certTemplate(c.cfg.KeyLabel),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ID, c.keyID),
			pkcs11.NewAttribute(pkcs11.CKA_SUBJECT, leaf.RawSubject),
			pkcs11.NewAttribute(pkcs11.CKA_ISSUER, leaf.RawIssuer),
			pkcs11.NewAttribute(pkcs11.CKA_SERIAL_NUMBER, serial),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, leaf.Raw),
		)
		if _, err := c.ctx.CreateObject(s, tmpl); err != nil {
			return hsmwrap.PKCS11Error("C_CreateObject(certificate)", err)
		}
		for _, h := range old {
			if err := c.ctx.DestroyObject(s, h); err != nil {
				return hsmwrap.PKCS11Error("C_DestroyObject(old certificate)", err)
			}
		}
		return nil
	})
	if err != nil {
		return opError("storing the certificate", err)
	}
	return nil
}
