package p11cred

// The client's certificate chain: from Config.CertFile or the token's
// certificate object, checked against the token key.

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"

	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/miekg/pkcs11"
)

// Certificate returns the client's TLS certificate: the chain from
// Config.CertFile, or else the leaf from the token's certificate object
// (label KeyLabel), with PrivateKey set to Signer() and Leaf parsed. The
// leaf's public key must be the token key's (ErrMismatch). Once read, the
// same certificate is returned again; a failure is not kept, so a later
// call tries again.
func (c *Credential) Certificate() (tls.Certificate, error) {
	c.certMu.Lock()
	defer c.certMu.Unlock()
	if c.cert != nil {
		return *c.cert, nil
	}
	pair, err := c.loadCertificate()
	if err != nil {
		return tls.Certificate{}, err
	}
	c.cert = &pair
	return pair, nil
}

func (c *Credential) loadCertificate() (tls.Certificate, error) {
	var chain [][]byte
	if c.cfg.CertFile != "" {
		data, err := readLimited(c.cfg.CertFile)
		if err != nil {
			return tls.Certificate{}, err
		}
		if chain, err = decodeChain(data); err != nil {
			return tls.Certificate{}, fmt.Errorf("%s: %w", c.cfg.CertFile, err)
		}
	} else {
		der, err := c.tokenCertificate()
		if err != nil {
			return tls.Certificate{}, err
		}
		chain = [][]byte{der}
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%w: certificate: %w", ErrInvalidArgument, err)
	}
	if !publicEqual(leaf.PublicKey, c.key.pub) {
		return tls.Certificate{}, fmt.Errorf("%w: the certificate for %q is not for the key labelled %q", ErrMismatch, leaf.Subject.CommonName, c.cfg.KeyLabel)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: c.key, Leaf: leaf}, nil
}

// tokenCertificate reads the DER of the certificate object belonging to
// the key.
func (c *Credential) tokenCertificate() ([]byte, error) {
	var der []byte
	err := c.run(func(s pkcs11.SessionHandle, _ *state) error {
		hs, err := hsmwrap.FindObjects(c.ctx, s, certTemplate(c.cfg.KeyLabel), 2)
		if err != nil {
			return err
		}
		switch len(hs) {
		case 0:
			return fmt.Errorf("%w: no certificate labelled %q: give the certificate file (--cert) or store it in the token (`coffer pkcs11 import-cert`)", ErrNotFound, c.cfg.KeyLabel)
		case 1:
		default:
			return fmt.Errorf("%w: more than one certificate is labelled %q", ErrInvalidArgument, c.cfg.KeyLabel)
		}
		attrs, err := c.ctx.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return hsmwrap.PKCS11Error("C_GetAttributeValue(certificate)", err)
		}
		if v := attrMap(attrs)[pkcs11.CKA_VALUE]; len(v) > 0 && len(v) <= maxCertBytes {
			der = bytes.Clone(v)
			return nil
		}
		return fmt.Errorf("%w: the certificate labelled %q is empty or larger than %d bytes", ErrInvalidArgument, c.cfg.KeyLabel, maxCertBytes)
	})
	if err != nil {
		return nil, opError("reading the certificate", err)
	}
	return der, nil
}

// certTemplate finds X.509 certificate objects labelled label.
func certTemplate(label string) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE),
		pkcs11.NewAttribute(pkcs11.CKA_CERTIFICATE_TYPE, pkcs11.CKC_X_509),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}
}

// readLimited reads at most maxCertBytes of path.
func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate file: %w", ErrInvalidConfig, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCertBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %w", ErrInvalidConfig, path, err)
	}
	if len(b) > maxCertBytes {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalidArgument, path, maxCertBytes)
	}
	return b, nil
}

// decodeChain decodes every CERTIFICATE block of a PEM input, leaf first.
func decodeChain(data []byte) ([][]byte, error) {
	var chain [][]byte
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: unexpected PEM block %q", ErrInvalidArgument, b.Type)
		}
		chain = append(chain, b.Bytes)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: data after the PEM certificates", ErrInvalidArgument)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: no PEM certificate", ErrInvalidArgument)
	}
	return chain, nil
}

func publicEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}
