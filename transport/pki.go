package transport

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// PKI parameters. Keys are ECDSA P-256; certificates are signed with
// ECDSA-SHA256; serial numbers are 128 random bits.
const (
	// DefaultCertValidity is used when IssueRequest.Validity is zero.
	DefaultCertValidity = 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so freshly issued certificates verify on
	// peers whose clocks are slightly behind.
	clockSkew = 5 * time.Minute

	pemTypeCert   = "CERTIFICATE"
	pemTypeKey    = "PRIVATE KEY"
	pemTypeECKey  = "EC PRIVATE KEY"
	keyFileMode   = 0o600
	certFileMode  = 0o644
	maxPEMFileLen = 1 << 20
)

// CA is a certificate authority that issues Coffer node and client
// certificates. Key may be any crypto.Signer (a software key or an HSM
// handle) whose public key matches Cert.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// IssueRequest describes a certificate to issue.
type IssueRequest struct {
	// Identity is encoded as the certificate's only URI SAN and as the
	// subject common name (informational).
	Identity Identity
	// DNSNames and IPs are the names the holder serves on. Node
	// certificates must list the addresses peers dial (Raft and gRPC verify
	// the dialled host against them).
	DNSNames []string
	IPs      []net.IP
	// Validity is how long the certificate is valid from now; zero means
	// DefaultCertValidity. It may not outlive the CA.
	Validity time.Duration
}

// CreateCA creates a self-signed ECDSA P-256 CA that may sign leaf
// certificates only (path length zero), and only for identities of kind:
// the certificate is name-constrained to coffer://<kind>/ URIs and limited
// to the extended key usages of that kind, so a verifier refuses a node
// identity signed by a client CA (and the reverse) even without Coffer's
// own check. A deployment has one CA of each kind (see DESIGN.md, "Trust
// model").
func CreateCA(commonName string, kind Kind, validity time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, fmt.Errorf("%w: CA common name is empty", ErrInvalidConfig)
	}
	if !kind.Valid() {
		return nil, fmt.Errorf("%w: CA kind %q is neither %s nor %s", ErrInvalidConfig, kind, KindNode, KindClient)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("%w: CA validity %s", ErrValidity, validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("transport: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	ski, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"Coffer"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
		PermittedURIDomains:   []string{string(kind)},
		ExtKeyUsage:           kindUsages(kind),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("transport: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("transport: parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemTypeCert, Bytes: der})}, nil
}

// LoadCA reads a CA certificate and its PKCS#8 (or SEC 1) private key from
// PEM files and checks that they belong together and that the certificate
// is a CA.
func LoadCA(certPath, keyPath string) (*CA, error) {
	certPEM, err := readPEMFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readPEMFile(keyPath)
	if err != nil {
		return nil, err
	}
	certs, err := parseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("%w: %s holds %d certificates, want 1", ErrBadPEM, certPath, len(certs))
	}
	cert := certs[0]
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotCA, certPath)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if err := checkKeyMatches(cert, key); err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemTypeCert, Bytes: cert.Raw})}, nil
}

// WriteFiles writes the CA certificate (0644) and private key (0600, PKCS#8)
// as PEM. It refuses to overwrite either file. The key must be an exportable
// software key.
func (ca *CA) WriteFiles(certPath, keyPath string) error {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return fmt.Errorf("%w: incomplete CA", ErrInvalidConfig)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return fmt.Errorf("transport: CA key is not exportable: %w", err)
	}
	certPEM := ca.CertPEM
	if len(certPEM) == 0 {
		certPEM = pem.EncodeToMemory(&pem.Block{Type: pemTypeCert, Bytes: ca.Cert.Raw})
	}
	return WriteKeyPair(certPath, keyPath, certPEM, pem.EncodeToMemory(&pem.Block{Type: pemTypeKey, Bytes: keyDER}))
}

// Issue creates a fresh P-256 key and a certificate for req.Identity signed
// by the CA. Node certificates get the ServerAuth and ClientAuth extended key
// usages; client certificates ClientAuth only, so they can never serve. The
// returned key is PKCS#8 PEM.
func (ca *CA) Issue(req IssueRequest) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("transport: generate key: %w", err)
	}
	certPEM, err = ca.Sign(req, &key.PublicKey, time.Now())
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("transport: marshal key: %w", err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: pemTypeKey, Bytes: keyDER}), nil
}

// Sign issues a certificate for a public key generated elsewhere (a CSR's,
// say), with the same profile as Issue: one coffer:// URI SAN for
// req.Identity, the node or client key usages, a 128-bit random serial, and
// a validity (from now) that may not outlive the CA. A zero req.Validity
// means DefaultCertValidity.
func (ca *CA) Sign(req IssueRequest, pub crypto.PublicKey, now time.Time) (certPEM []byte, err error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, fmt.Errorf("%w: incomplete CA", ErrInvalidConfig)
	}
	if err := req.Identity.Validate(); err != nil {
		return nil, err
	}
	if !ca.Signs(req.Identity.Kind) {
		return nil, fmt.Errorf("%w: CA %q signs %s identities only, not %s", ErrWrongCA, ca.Cert.Subject.CommonName,
			strings.Join(ca.Cert.PermittedURIDomains, ", "), req.Identity)
	}
	validity := req.Validity
	if validity == 0 {
		validity = DefaultCertValidity
	}
	if validity < 0 {
		return nil, fmt.Errorf("%w: %s", ErrValidity, validity)
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("%w: certificate would expire at %s, after the CA (%s)",
			ErrValidity, notAfter.UTC().Format(time.RFC3339), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	notBefore := now.Add(-clockSkew)
	if notBefore.Before(ca.Cert.NotBefore) {
		notBefore = ca.Cert.NotBefore
	}

	eku := kindUsages(req.Identity.Kind)
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	ski, err := subjectKeyID(pub)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         req.Identity.Name,
			Organization:       []string{"Coffer"},
			OrganizationalUnit: []string{string(req.Identity.Kind)},
		},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          ski,
		DNSNames:              append([]string(nil), req.DNSNames...),
		IPAddresses:           append([]net.IP(nil), req.IPs...),
		URIs:                  []*url.URL{req.Identity.URI()},
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("transport: sign certificate for %s: %w", req.Identity, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemTypeCert, Bytes: der}), nil
}

// Signs reports whether the CA may sign identities of kind k: a CA whose
// certificate constrains URI names (as CreateCA's do) signs only the kinds
// it permits; an unconstrained one (an external CA) any kind.
func (ca *CA) Signs(k Kind) bool {
	if ca == nil || ca.Cert == nil {
		return false
	}
	if len(ca.Cert.PermittedURIDomains) == 0 {
		return !slices.Contains(ca.Cert.ExcludedURIDomains, string(k))
	}
	return slices.Contains(ca.Cert.PermittedURIDomains, string(k))
}

// kindUsages are the extended key usages of a kind: a node serves (gRPC,
// Raft) and dials; a client only dials.
func kindUsages(k Kind) []x509.ExtKeyUsage {
	if k == KindNode {
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
}

// WriteKeyPair writes certPEM (mode 0644) and keyPEM (mode 0600). It refuses
// to overwrite either file; if writing fails part way, files it created are
// removed.
func WriteKeyPair(certPath, keyPath string, certPEM, keyPEM []byte) error {
	if certPath == "" || keyPath == "" {
		return fmt.Errorf("%w: empty output path", ErrInvalidConfig)
	}
	if certPath == keyPath {
		return fmt.Errorf("%w: certificate and key paths are the same", ErrInvalidConfig)
	}
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return fmt.Errorf("%w: empty certificate or key", ErrBadPEM)
	}
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%w: %s: %w", ErrExists, p, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("transport: %w", err)
		}
	}
	if err := writeNewFile(keyPath, keyPEM, keyFileMode); err != nil {
		return err
	}
	if err := writeNewFile(certPath, certPEM, certFileMode); err != nil {
		_ = os.Remove(keyPath)
		return err
	}
	return nil
}

// writeNewFile creates path exclusively with mode, writes data and syncs.
func writeNewFile(path string, data []byte, mode os.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s: %w", ErrExists, path, fs.ErrExist)
		}
		return fmt.Errorf("transport: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("transport: %w", cerr)
		}
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	// Set the mode explicitly rather than relying on the umask.
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("transport: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("transport: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("transport: %w", err)
	}
	return nil
}

func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("transport: serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectKeyID follows RFC 7093 method 1: the leftmost 160 bits of the
// SHA-256 of the subject public key.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("transport: marshal public key: %w", err)
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("transport: parse public key: %w", err)
	}
	sum := sha256.Sum256(spki.PublicKey.Bytes)
	return sum[:20], nil
}

func readPEMFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	defer func() { _ = f.Close() }()
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(f, maxPEMFileLen+1))
	if err != nil {
		return nil, fmt.Errorf("transport: read %s: %w", path, err)
	}
	if n > maxPEMFileLen {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrBadPEM, path, maxPEMFileLen)
	}
	return buf.Bytes(), nil
}

// parseCertsPEM decodes every CERTIFICATE block in data. Any other block
// type, trailing garbage or an empty input is an error.
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != pemTypeCert {
			return nil, fmt.Errorf("%w: unexpected PEM block %q", ErrBadPEM, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadPEM, err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: trailing data after PEM blocks", ErrBadPEM)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no certificate found", ErrBadPEM)
	}
	return certs, nil
}

// parseKeyPEM decodes a single PKCS#8 or SEC 1 private key.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%w: no private key found", ErrBadPEM)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("%w: trailing data after private key", ErrBadPEM)
	}
	var key any
	var err error
	switch block.Type {
	case pemTypeKey:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case pemTypeECKey:
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%w: unexpected PEM block %q", ErrBadPEM, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPEM, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: key of type %T cannot sign", ErrBadPEM, key)
	}
	return signer, nil
}

func checkKeyMatches(cert *x509.Certificate, key crypto.Signer) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := key.Public().(equaler)
	if !ok || !pub.Equal(cert.PublicKey) {
		return ErrKeyMismatch
	}
	return nil
}
