package p11cred

// Finding the client's objects in the token: its private key, the public
// key beside it, the cache secret.

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"fmt"
	"math/big"

	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/miekg/pkcs11"
)

// findPrivateKey finds the one private key labelled label, checks that it
// can sign and is of a supported kind, and reads its public key from the
// public key object with the same CKA_ID (or label), if there is one.
func findPrivateKey(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string) (pkcs11.ObjectHandle, keyInfo, error) {
	var info keyInfo
	hs, err := hsmwrap.FindObjects(ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, 2)
	if err != nil {
		return 0, info, wrapP11("finding key "+label, err)
	}
	switch len(hs) {
	case 0:
		return 0, info, fmt.Errorf("%w: no private key labelled %q (provision one with `coffer pkcs11 keygen`)", ErrNotFound, label)
	case 1:
	default:
		return 0, info, fmt.Errorf("%w: more than one private key is labelled %q; give each key its own label", ErrUnsupportedKey, label)
	}
	h := hs[0]
	attrs, err := ctx.GetAttributeValue(s, h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
	})
	if err != nil {
		return 0, info, wrapP11("key "+label, hsmwrap.PKCS11Error("C_GetAttributeValue(private key)", err))
	}
	v := attrMap(attrs)
	if b := v[pkcs11.CKA_SIGN]; len(b) != 1 || b[0] == 0 {
		return 0, info, fmt.Errorf("%w: the private key labelled %q may not sign (CKA_SIGN is false)", ErrUnsupportedKey, label)
	}
	info.typ = hsmwrap.ULongAttr(v[pkcs11.CKA_KEY_TYPE])
	info.id = bytes.Clone(v[pkcs11.CKA_ID])
	if info.typ != pkcs11.CKK_EC && info.typ != pkcs11.CKK_RSA {
		return 0, info, fmt.Errorf("%w: the key labelled %q is of PKCS#11 key type %#x; ECDSA P-256 and RSA are supported", ErrUnsupportedKey, label, info.typ)
	}
	pub, err := findPublicKey(ctx, s, label, info.id, info.typ)
	if err != nil {
		return 0, info, err
	}
	if pub == nil {
		return 0, info, fmt.Errorf("%w: no public key object beside the private key labelled %q (same CKA_ID or label)", ErrNotFound, label)
	}
	info.pub = pub
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		info.bits = k.Curve.Params().BitSize
	case *rsa.PublicKey:
		info.bits = k.N.BitLen()
		if info.bits < minRSABits {
			return 0, info, fmt.Errorf("%w: the RSA key labelled %q has %d bits, at least %d are needed", ErrUnsupportedKey, label, info.bits, minRSABits)
		}
	}
	return h, info, nil
}

// minRSABits is the smallest RSA key accepted.
const minRSABits = 2048

// findPublicKey reads the public key object matching the private key: by
// CKA_ID when it has one, else by label. It returns nil when there is none.
func findPublicKey(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string, id []byte, typ uint) (crypto.PublicKey, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY)}
	if len(id) > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	} else {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	hs, err := hsmwrap.FindObjects(ctx, s, tmpl, 2)
	if err != nil {
		return nil, wrapP11("finding the public key of "+label, err)
	}
	if len(hs) == 0 {
		return nil, nil
	}
	if len(hs) > 1 {
		return nil, fmt.Errorf("%w: several public key objects match the private key labelled %q", ErrUnsupportedKey, label)
	}
	if typ == pkcs11.CKK_EC {
		attrs, err := ctx.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		})
		if err != nil {
			return nil, wrapP11("key "+label, hsmwrap.PKCS11Error("C_GetAttributeValue(EC public key)", err))
		}
		v := attrMap(attrs)
		if !bytes.Equal(v[pkcs11.CKA_EC_PARAMS], hsmwrap.P256ECParams()) {
			return nil, fmt.Errorf("%w: the EC key labelled %q is not on P-256", ErrUnsupportedKey, label)
		}
		pub, err := hsmwrap.DecodeP256Point(v[pkcs11.CKA_EC_POINT])
		if err != nil {
			return nil, fmt.Errorf("%w: the public key labelled %q: %w", ErrUnsupportedKey, label, err)
		}
		return pub, nil
	}
	attrs, err := ctx.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
	})
	if err != nil {
		return nil, wrapP11("key "+label, hsmwrap.PKCS11Error("C_GetAttributeValue(RSA public key)", err))
	}
	v := attrMap(attrs)
	e := new(big.Int).SetBytes(v[pkcs11.CKA_PUBLIC_EXPONENT])
	if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 {
		return nil, fmt.Errorf("%w: the RSA public key labelled %q has an unusable exponent", ErrUnsupportedKey, label)
	}
	return &rsa.PublicKey{N: new(big.Int).SetBytes(v[pkcs11.CKA_MODULUS]), E: int(e.Int64())}, nil
}

// findCacheSecret finds the one secret key labelled label; none is
// ErrNotFound.
func findCacheSecret(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string) (pkcs11.ObjectHandle, error) {
	hs, err := hsmwrap.FindObjects(ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, 2)
	if err != nil {
		return 0, wrapP11("finding cache secret "+label, err)
	}
	switch len(hs) {
	case 0:
		return 0, fmt.Errorf("%w: no cache secret labelled %q (`coffer pkcs11 keygen` creates it)", ErrNotFound, label)
	case 1:
		return hs[0], nil
	}
	return 0, fmt.Errorf("%w: more than one secret key is labelled %q", ErrUnsupportedKey, label)
}

func attrMap(attrs []*pkcs11.Attribute) map[uint][]byte {
	v := make(map[uint][]byte, len(attrs))
	for _, a := range attrs {
		v[a.Type] = a.Value
	}
	return v
}
