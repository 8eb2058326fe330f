package hsmwrap

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/miekg/pkcs11"
)

// The key ceremony puts the same master key into every node's HSM without
// it ever existing in plaintext outside one. DESIGN.md ("Key ceremony")
// has the runbook; `cofferd keystore` runs each step.
//
//  1. InitMasterKey on the first HSM (the source).
//  2. NewTransportKey on each further HSM (a target): an RSA key pair whose
//     private half never leaves the target.
//  3. ExportMasterKey on the source, to the target's transport public key:
//     the master key wrapped with RSA-OAEP.
//  4. ImportMasterKey on the target: unwrapped straight into a token object,
//     checked against the export's key check value, transport key destroyed.
//  5. MasterKeyKCV on each HSM: the values must match.

// ErrMasterKeyExists means the token already holds an object with the
// master key's label; the ceremony never replaces a master key (that would
// orphan every KEK wrapped under it).
var ErrMasterKeyExists = errors.New("hsmwrap: the token already holds a master key")

// Key ceremony constants.
const (
	// TransportKeyBits is the size of the RSA transport key.
	TransportKeyBits = 3072

	exportFormat  = "coffer-pkcs11-master-key-export"
	exportVersion = 1
	// maxExportSize bounds an export file read from disk.
	maxExportSize = 64 << 10

	oaepSHA256 = "sha256"
	oaepSHA1   = "sha1"

	// kcvLen is the length of the key check value shown to operators.
	kcvLen = 3

	// masterCheckLabel starts the random challenge SameMasterKey has both
	// HSMs authenticate.
	masterCheckLabel = "coffer-master-check"
)

// transportLabel is the CKA_LABEL of the transport key pair on a target.
func transportLabel(cfg PKCS11Config) string { return cfg.MasterKeyLabel + "-transport" }

// ceremonySession is a logged-in session on the configured token, for one
// ceremony step.
type ceremonySession struct {
	cfg  PKCS11Config
	mod  *p11Module
	ctx  *pkcs11.Ctx
	slot uint
	s    pkcs11.SessionHandle
}

// openCeremony opens a read-write session on cfg's token, logged in as the
// user if asUser (else nobody is logged in yet).
func openCeremony(cfg PKCS11Config, asUser bool) (*ceremonySession, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mod, err := loadModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	c := &ceremonySession{cfg: cfg, mod: mod, ctx: mod.ctx}
	if c.slot, err = findSlot(c.ctx, cfg); err != nil {
		mod.release()
		return nil, err
	}
	if c.s, err = c.ctx.OpenSession(c.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION); err != nil {
		mod.release()
		return nil, mapRV("C_OpenSession", callPlain, err)
	}
	if asUser {
		if err := login(c.ctx, c.s, pkcs11.CKU_USER, cfg.PINFile, cfg.PINEnv, "user PIN"); err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

func (c *ceremonySession) close() {
	c.ctx.CloseSession(c.s)
	c.mod.release()
}

// labelled returns the objects of class labelled label.
func (c *ceremonySession) labelled(class uint, label string) ([]pkcs11.ObjectHandle, error) {
	return findObjects(c.ctx, c.s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, 16)
}

// refuseExistingMaster fails with ErrMasterKeyExists if any object carries
// the master key's label.
func (c *ceremonySession) refuseExistingMaster() error {
	hs, err := findObjects(c.ctx, c.s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, c.cfg.MasterKeyLabel)}, 1)
	if err != nil {
		return err
	}
	if len(hs) > 0 {
		return fmt.Errorf("%w: an object labelled %q exists on %s", ErrMasterKeyExists, c.cfg.MasterKeyLabel, c.cfg.token())
	}
	return nil
}

// kcv returns the master key's check value.
func (c *ceremonySession) kcv(master pkcs11.ObjectHandle) (string, error) {
	tag, err := cmacOn(c.ctx, c.s, master, make([]byte, 16))
	if err != nil {
		return "", err
	}
	return strings.ToUpper(hex.EncodeToString(tag[:kcvLen])), nil
}

// InitMasterKey generates the master key on cfg's token: AES-256, a token
// object labelled cfg.MasterKeyLabel, sensitive, extractable only under a
// trusted wrapping key (CKA_WRAP_WITH_TRUSTED), limited to
// CKM_AES_KEY_WRAP_PAD and CKM_AES_CMAC, not modifiable, not copyable. It
// refuses with ErrMasterKeyExists if an object with that label exists.
func InitMasterKey(cfg PKCS11Config) error {
	c, err := openCeremony(cfg, true)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.refuseExistingMaster(); err != nil {
		return err
	}
	h, err := c.ctx.GenerateKey(c.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, masterKeyTemplate(cfg.MasterKeyLabel, true))
	if err != nil {
		return fmt.Errorf("generating the master key: %w", mapRV("C_GenerateKey(CKM_AES_KEY_GEN)", callPlain, err))
	}
	// Check that it is usable the way the keystore will use it.
	if _, err := findMasterKey(c.ctx, c.s, cfg.MasterKeyLabel); err != nil {
		c.ctx.DestroyObject(c.s, h)
		return err
	}
	return nil
}

// MasterKeyKCV returns the key check value of the master key on cfg's
// token: the first 3 bytes of AES-CMAC over a block of 16 zero bytes,
// computed inside the HSM, in upper-case hex. Two HSMs hold the same master
// key if their values match (and, with 2^-24 odds of a chance match, almost
// certainly not if they do not; SameMasterKey checks with no such odds).
func MasterKeyKCV(cfg PKCS11Config) (string, error) {
	c, err := openCeremony(cfg, true)
	if err != nil {
		return "", err
	}
	defer c.close()
	master, err := findMasterKey(c.ctx, c.s, cfg.MasterKeyLabel)
	if err != nil {
		return "", err
	}
	return c.kcv(master)
}

// SameMasterKey reports whether the tokens of a and b hold the same master
// key: both HSMs compute AES-CMAC over the same fresh random challenge and
// the full 16-byte tags are compared. For tooling that reaches both HSMs
// from one process; operators on separate machines compare MasterKeyKCV.
func SameMasterKey(a, b PKCS11Config) (bool, error) {
	ca, err := openCeremony(a, true)
	if err != nil {
		return false, err
	}
	defer ca.close()
	cb, err := openCeremony(b, true)
	if err != nil {
		return false, err
	}
	defer cb.close()
	ma, err := findMasterKey(ca.ctx, ca.s, a.MasterKeyLabel)
	if err != nil {
		return false, err
	}
	mb, err := findMasterKey(cb.ctx, cb.s, b.MasterKeyLabel)
	if err != nil {
		return false, err
	}
	challenge, err := ca.ctx.GenerateRandom(ca.s, 32)
	if err != nil {
		return false, mapRV("C_GenerateRandom", callPlain, err)
	}
	msg := append([]byte(masterCheckLabel+"\x00"), challenge...)
	ta, err := cmacOn(ca.ctx, ca.s, ma, msg)
	if err != nil {
		return false, err
	}
	tb, err := cmacOn(cb.ctx, cb.s, mb, msg)
	if err != nil {
		return false, err
	}
	return subtle.ConstantTimeCompare(ta, tb) == 1, nil
}

// NewTransportKey generates, on cfg's token (the target of an import), an
// RSA-3072 key pair labelled "<MasterKeyLabel>-transport" and returns the
// public key as a PEM "PUBLIC KEY" block (PKIX). The private key is a token
// object, sensitive, never extractable, good only for CKM_RSA_PKCS_OAEP
// unwrapping. An earlier transport key pair on the token is replaced. It
// refuses with ErrMasterKeyExists if the token already holds a master key.
//
// Whoever carries the public key to the source HSM must make sure it is
// this one (compare TransportKeyFingerprint over a second channel): the
// master key goes to whoever holds the matching private key.
func NewTransportKey(cfg PKCS11Config) (pubPEM []byte, err error) {
	c, err := openCeremony(cfg, true)
	if err != nil {
		return nil, err
	}
	defer c.close()
	if err := c.refuseExistingMaster(); err != nil {
		return nil, err
	}
	label := transportLabel(cfg)
	if err := c.destroyTransportKey(label); err != nil {
		return nil, err
	}
	pub, priv, err := c.ctx.GenerateKeyPair(c.s,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, TransportKeyBits),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, ulongBytes(pkcs11.CKM_RSA_PKCS_OAEP)),
			pkcs11.NewAttribute(pkcs11.CKA_COPYABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
		})
	if err != nil {
		return nil, fmt.Errorf("generating the transport key: %w", mapRV("C_GenerateKeyPair(CKM_RSA_PKCS_KEY_PAIR_GEN)", callPlain, err))
	}
	key, err := c.rsaPublicKey(pub)
	if err != nil {
		c.ctx.DestroyObject(c.s, pub)
		c.ctx.DestroyObject(c.s, priv)
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("%w: encoding the transport public key: %w", ErrUnavailable, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// TransportKeyFingerprint returns the SHA-256 of the DER encoding of a
// transport public key (PEM as NewTransportKey returns it), in hex, for
// operators to compare over a second channel.
func TransportKeyFingerprint(pubPEM []byte) (string, error) {
	_, der, err := parseTransportKey(pubPEM)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// ExportMasterKey wraps the master key on cfg's token (the source) under a
// target's transport public key with CKM_RSA_PKCS_OAEP and returns the
// export file (JSON: the wrapped key, the OAEP hash used, the master key's
// check value and the transport key's fingerprint).
//
// The master key is CKA_WRAP_WITH_TRUSTED, so the transport key must be
// CKA_TRUSTED, which only the security officer can set: the SO PIN
// (cfg.SOPINFile or cfg.SOPINEnv) is required as well as the user PIN, and
// the trusted key is a session object that does not outlive this call.
// OAEP uses SHA-256 (and MGF1-SHA-256) where the token supports it for
// wrapping, else SHA-1 (SoftHSM2 2.6 supports only SHA-1 here); the export
// records which.
func ExportMasterKey(cfg PKCS11Config, transportPubPEM []byte) (wrapped []byte, err error) {
	key, der, err := parseTransportKey(transportPubPEM)
	if err != nil {
		return nil, err
	}
	if cfg.SOPINFile == "" && cfg.SOPINEnv == "" {
		return nil, fmt.Errorf("%w: exporting the master key needs the source token's SO PIN (to mark the transport key trusted); set SOPINFile or SOPINEnv", ErrInvalidArgument)
	}
	c, err := openCeremony(cfg, false)
	if err != nil {
		return nil, err
	}
	defer c.close()

	// As the security officer: import the transport public key as a
	// trusted session object.
	if err := login(c.ctx, c.s, pkcs11.CKU_SO, cfg.SOPINFile, cfg.SOPINEnv, "SO PIN"); err != nil {
		return nil, err
	}
	label := transportLabel(cfg)
	trusted, err := c.ctx.CreateObject(c.s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, key.N.Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(key.E)).Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true),
	})
	lerr := c.ctx.Logout(c.s)
	if err != nil {
		return nil, fmt.Errorf("importing the transport key as trusted: %w", mapRV("C_CreateObject", callPlain, err))
	}
	if lerr != nil {
		return nil, mapRV("C_Logout", callPlain, lerr)
	}
	defer c.ctx.DestroyObject(c.s, trusted)

	// As the user: wrap the master key. Handles of private objects are
	// not stable across logins, so look them up now.
	if err := login(c.ctx, c.s, pkcs11.CKU_USER, cfg.PINFile, cfg.PINEnv, "user PIN"); err != nil {
		return nil, err
	}
	master, err := findMasterKey(c.ctx, c.s, cfg.MasterKeyLabel)
	if err != nil {
		return nil, err
	}
	kcv, err := c.kcv(master)
	if err != nil {
		return nil, err
	}
	var blob []byte
	hash := oaepSHA256
	blob, err = c.ctx.WrapKey(c.s, oaepMechanism(hash), trusted, master)
	if err != nil && oaepParamsRefused(err) {
		hash = oaepSHA1
		blob, err = c.ctx.WrapKey(c.s, oaepMechanism(hash), trusted, master)
	}
	if err != nil {
		return nil, fmt.Errorf("wrapping the master key: %w", mapRV("C_WrapKey(CKM_RSA_PKCS_OAEP)", callPlain, err))
	}
	sum := sha256.Sum256(der)
	return json.MarshalIndent(masterExport{
		Format:       exportFormat,
		Version:      exportVersion,
		OAEPHash:     hash,
		KCV:          kcv,
		TransportKey: hex.EncodeToString(sum[:]),
		Wrapped:      base64.StdEncoding.EncodeToString(blob),
	}, "", "  ")
}

// ImportMasterKey unwraps an export (ExportMasterKey's result) with the
// transport private key on cfg's token (the target) straight into a token
// object with the master key's label and attributes, checks its key check
// value against the export's, and destroys the transport key pair. It
// refuses with ErrMasterKeyExists if the token already holds a master key;
// an export that does not unwrap, or unwraps to another key, gives
// ErrIntegrity and leaves nothing behind.
func ImportMasterKey(cfg PKCS11Config, wrapped []byte) error {
	exp, blob, err := parseMasterExport(wrapped)
	if err != nil {
		return err
	}
	c, err := openCeremony(cfg, true)
	if err != nil {
		return err
	}
	defer c.close()
	if err := c.refuseExistingMaster(); err != nil {
		return err
	}
	label := transportLabel(cfg)
	privs, err := c.labelled(pkcs11.CKO_PRIVATE_KEY, label)
	if err != nil {
		return err
	}
	pubs, err := c.labelled(pkcs11.CKO_PUBLIC_KEY, label)
	if err != nil {
		return err
	}
	if len(privs) != 1 || len(pubs) != 1 {
		return fmt.Errorf("%w: %s holds no transport key labelled %q (run transport-key on this token first; the import consumes it)", ErrInvalidArgument, cfg.token(), label)
	}
	pub, err := c.rsaPublicKey(pubs[0])
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("%w: encoding the transport public key: %w", ErrUnavailable, err)
	}
	if sum := sha256.Sum256(der); hex.EncodeToString(sum[:]) != exp.TransportKey {
		return fmt.Errorf("%w: the export was made for transport key %s, but %s holds transport key %s", ErrInvalidArgument, exp.TransportKey, cfg.token(), hex.EncodeToString(sum[:]))
	}
	if len(blob) != pub.Size() {
		return fmt.Errorf("%w: the wrapped master key is %d bytes, want %d", ErrIntegrity, len(blob), pub.Size())
	}
	master, err := c.ctx.UnwrapKey(c.s, oaepMechanism(exp.OAEPHash), privs[0], blob, masterKeyTemplate(cfg.MasterKeyLabel, false))
	if err != nil {
		return fmt.Errorf("unwrapping the master key: %w", mapRV("C_UnwrapKey(CKM_RSA_PKCS_OAEP)", callVerify, err))
	}
	kcv, err := c.kcv(master)
	if err == nil && subtle.ConstantTimeCompare([]byte(kcv), []byte(exp.KCV)) != 1 {
		err = fmt.Errorf("%w: the imported master key has check value %s, the export says %s", ErrIntegrity, kcv, exp.KCV)
	}
	if err == nil {
		_, err = findMasterKey(c.ctx, c.s, cfg.MasterKeyLabel)
	}
	if err != nil {
		c.ctx.DestroyObject(c.s, master)
		return err
	}
	return c.destroyTransportKey(label)
}

// destroyTransportKey removes the transport key pair labelled label.
func (c *ceremonySession) destroyTransportKey(label string) error {
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		hs, err := c.labelled(class, label)
		if err != nil {
			return err
		}
		for _, h := range hs {
			if err := c.ctx.DestroyObject(c.s, h); err != nil {
				return fmt.Errorf("removing the transport key: %w", mapRV("C_DestroyObject", callPlain, err))
			}
		}
	}
	return nil
}

// rsaPublicKey reads an RSA public key object.
func (c *ceremonySession) rsaPublicKey(h pkcs11.ObjectHandle) (*rsa.PublicKey, error) {
	attrs, err := c.ctx.GetAttributeValue(c.s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
	})
	if err != nil {
		return nil, mapRV("C_GetAttributeValue(transport public key)", callPlain, err)
	}
	var n, e *big.Int
	for _, a := range attrs {
		switch a.Type {
		case pkcs11.CKA_MODULUS:
			n = new(big.Int).SetBytes(a.Value)
		case pkcs11.CKA_PUBLIC_EXPONENT:
			e = new(big.Int).SetBytes(a.Value)
		}
	}
	if n == nil || e == nil || !e.IsInt64() || e.Int64() > 1<<31-1 {
		return nil, fmt.Errorf("%w: the token returned an unusable RSA public key", ErrUnavailable)
	}
	return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
}

// parseTransportKey decodes a PEM "PUBLIC KEY" holding an RSA key of at
// least TransportKeyBits bits.
func parseTransportKey(pubPEM []byte) (*rsa.PublicKey, []byte, error) {
	block, rest := pem.Decode(pubPEM)
	if block == nil || block.Type != "PUBLIC KEY" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, nil, fmt.Errorf("%w: the transport key is not a single PEM PUBLIC KEY block", ErrInvalidArgument)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: the transport key does not parse: %w", ErrInvalidArgument, err)
	}
	key, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, nil, fmt.Errorf("%w: the transport key is a %T, want RSA", ErrInvalidArgument, k)
	}
	if key.N.BitLen() < TransportKeyBits {
		return nil, nil, fmt.Errorf("%w: the transport key has %d bits, want at least %d", ErrInvalidArgument, key.N.BitLen(), TransportKeyBits)
	}
	return key, block.Bytes, nil
}

// oaepMechanism is CKM_RSA_PKCS_OAEP with hash and MGF1 over the same hash
// and an empty label.
func oaepMechanism(hash string) []*pkcs11.Mechanism {
	h, mgf := uint(pkcs11.CKM_SHA256), uint(pkcs11.CKG_MGF1_SHA256)
	if hash == oaepSHA1 {
		h, mgf = pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, pkcs11.NewOAEPParams(h, mgf, pkcs11.CKZ_DATA_SPECIFIED, nil))}
}

// oaepParamsRefused reports a token refusing the OAEP parameters (rather
// than the wrap itself).
func oaepParamsRefused(err error) bool {
	switch rvOf(err) {
	case pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_MECHANISM_INVALID:
		return true
	}
	return false
}

// masterExport is the export file: a JSON object, all members required, no
// others allowed.
type masterExport struct {
	Format       string `json:"format"`
	Version      int    `json:"version"`
	OAEPHash     string `json:"oaep_hash"`
	KCV          string `json:"kcv"`
	TransportKey string `json:"transport_key_sha256"`
	Wrapped      string `json:"wrapped"`
}

// parseMasterExport decodes and checks an export file strictly.
func parseMasterExport(data []byte) (*masterExport, []byte, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: master key export: %s", ErrInvalidArgument, fmt.Sprintf(format, args...))
	}
	if len(data) > maxExportSize {
		return nil, nil, bad("larger than %d bytes", maxExportSize)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, nil, bad("not a JSON object: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var e masterExport
	if err := dec.Decode(&e); err != nil {
		return nil, nil, bad("%v", err)
	}
	if dec.More() {
		return nil, nil, bad("trailing data")
	}
	for _, m := range []string{"format", "version", "oaep_hash", "kcv", "transport_key_sha256", "wrapped"} {
		if _, ok := raw[m]; !ok {
			return nil, nil, bad("member %q is missing", m)
		}
	}
	switch {
	case e.Format != exportFormat:
		return nil, nil, bad("format is %q, want %q", e.Format, exportFormat)
	case e.Version != exportVersion:
		return nil, nil, bad("version %d is not supported", e.Version)
	case e.OAEPHash != oaepSHA256 && e.OAEPHash != oaepSHA1:
		return nil, nil, bad("oaep_hash %q is not sha256 or sha1", e.OAEPHash)
	case !isUpperHex(e.KCV, kcvLen):
		return nil, nil, bad("kcv is not %d bytes of upper-case hex", kcvLen)
	case !isLowerHex(e.TransportKey, sha256.Size):
		return nil, nil, bad("transport_key_sha256 is not %d bytes of lower-case hex", sha256.Size)
	}
	blob, err := base64.StdEncoding.Strict().DecodeString(e.Wrapped)
	if err != nil {
		return nil, nil, bad("wrapped is not base64: %v", err)
	}
	if len(blob) < TransportKeyBits/8 || len(blob) > 1024 {
		return nil, nil, bad("wrapped is %d bytes", len(blob))
	}
	return &e, blob, nil
}

func isUpperHex(s string, n int) bool {
	return len(s) == 2*n && strings.Trim(s, "0123456789ABCDEF") == ""
}

func isLowerHex(s string, n int) bool {
	return len(s) == 2*n && strings.Trim(s, "0123456789abcdef") == ""
}
