package transport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCA_CreateWriteLoadRoundTrip(t *testing.T) {
	ca := mustCAOf(t, "Coffer test CA", KindClient)
	if !ca.Cert.IsCA || ca.Cert.MaxPathLen != 0 || !ca.Cert.MaxPathLenZero {
		t.Fatalf("CA constraints: IsCA=%v MaxPathLen=%d zero=%v", ca.Cert.IsCA, ca.Cert.MaxPathLen, ca.Cert.MaxPathLenZero)
	}
	if ca.Cert.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Fatalf("signature algorithm %v", ca.Cert.SignatureAlgorithm)
	}
	if pub, ok := ca.Cert.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("CA key is not P-256: %T", ca.Cert.PublicKey)
	}

	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := ca.WriteFiles(certPath, keyPath); err != nil {
		t.Fatalf("WriteFiles: %v", err)
	}
	assertMode(t, keyPath, 0o600)
	assertMode(t, certPath, 0o644)

	loaded, err := LoadCA(certPath, keyPath)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Fatal("loaded certificate differs")
	}
	if string(loaded.CertPEM) != string(ca.CertPEM) {
		t.Fatal("loaded CertPEM differs")
	}
	// The loaded key must be able to issue certificates that verify under
	// the original CA certificate.
	certPEM, _, err := loaded.Issue(IssueRequest{Identity: Identity{KindClient, "c1"}, Validity: time.Hour})
	if err != nil {
		t.Fatalf("Issue with loaded CA: %v", err)
	}
	if _, err := mustParseCert(t, certPEM).Verify(x509.VerifyOptions{
		Roots: poolOf(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		t.Fatalf("verify: %v", err)
	}

	err = ca.WriteFiles(certPath, filepath.Join(dir, "other-key.pem"))
	if !errors.Is(err, ErrExists) || !errors.Is(err, fs.ErrExist) {
		t.Fatalf("overwrite cert: %v; want ErrExists", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "other-key.pem")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("refused write left a key file behind: %v", err)
	}
	if err := ca.WriteFiles(filepath.Join(dir, "other.pem"), keyPath); !errors.Is(err, ErrExists) {
		t.Fatalf("overwrite key: %v; want ErrExists", err)
	}
}

func TestCreateCA_Rejects(t *testing.T) {
	if _, err := CreateCA("x", KindNode, 0); !errors.Is(err, ErrValidity) {
		t.Fatalf("zero validity: %v", err)
	}
	if _, err := CreateCA("", KindNode, time.Hour); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("empty name: %v", err)
	}
	if _, err := CreateCA("x", "admin", time.Hour); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("unknown kind: %v", err)
	}
}

func TestCA_IssueNodeAndClient(t *testing.T) {
	cas := map[Kind]*CA{KindNode: mustCA(t, "nodes"), KindClient: mustCAOf(t, "clients", KindClient)}
	serials := map[string]bool{}
	for _, tc := range []struct {
		id  Identity
		eku []x509.ExtKeyUsage
	}{
		{Identity{KindNode, "n1"}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		{Identity{KindClient, "admin"}, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
	} {
		t.Run(tc.id.String(), func(t *testing.T) {
			ca := cas[tc.id.Kind]
			certPEM, keyPEM, err := ca.Issue(IssueRequest{
				Identity: tc.id,
				DNSNames: []string{"n1.coffer.test"},
				IPs:      []net.IP{loopback},
				Validity: time.Hour,
			})
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			cert := mustParseCert(t, certPEM)
			id, err := IdentityFromCert(cert)
			if err != nil || id != tc.id {
				t.Fatalf("IdentityFromCert = %v, %v; want %v", id, err, tc.id)
			}
			if len(cert.URIs) != 1 || cert.URIs[0].String() != tc.id.URI().String() {
				t.Fatalf("URIs = %v", cert.URIs)
			}
			if cert.IsCA {
				t.Fatal("leaf is a CA")
			}
			if cert.SignatureAlgorithm != x509.ECDSAWithSHA256 {
				t.Fatalf("signature algorithm %v", cert.SignatureAlgorithm)
			}
			if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
				t.Fatalf("leaf key is not P-256: %T", cert.PublicKey)
			}
			if !equalEKU(cert.ExtKeyUsage, tc.eku) {
				t.Fatalf("EKU = %v; want %v", cert.ExtKeyUsage, tc.eku)
			}
			if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 || serials[cert.SerialNumber.String()] {
				t.Fatalf("bad or repeated serial %v", cert.SerialNumber)
			}
			serials[cert.SerialNumber.String()] = true
			if cert.NotAfter.After(time.Now().Add(time.Hour + time.Minute)) {
				t.Fatalf("NotAfter %v too late", cert.NotAfter)
			}
			if len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(loopback) || len(cert.DNSNames) != 1 {
				t.Fatalf("SANs: %v %v", cert.IPAddresses, cert.DNSNames)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: poolOf(ca), KeyUsages: tc.eku}); err != nil {
				t.Fatalf("verify: %v", err)
			}
			if tc.id.Kind == KindClient {
				// A client certificate must never be usable as a server.
				_, err := cert.Verify(x509.VerifyOptions{Roots: poolOf(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
				if err == nil {
					t.Fatal("client certificate verifies for ServerAuth")
				}
			}
			key, err := parseKeyPEM(keyPEM)
			if err != nil {
				t.Fatalf("parse key: %v", err)
			}
			if err := checkKeyMatches(cert, key); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCA_IssueRejects(t *testing.T) {
	ca := mustCA(t, "ca") // valid for 24h
	for name, req := range map[string]IssueRequest{
		"bad kind":          {Identity: Identity{"admin", "x"}},
		"bad name":          {Identity: Identity{KindNode, "a b"}},
		"empty name":        {Identity: Identity{KindNode, ""}},
		"outlives CA":       {Identity: Identity{KindNode, "n1"}, Validity: 48 * time.Hour},
		"default outlives":  {Identity: Identity{KindNode, "n1"}},
		"negative validity": {Identity: Identity{KindNode, "n1"}, Validity: -time.Hour},
	} {
		if _, _, err := ca.Issue(req); !errors.Is(err, ErrInvalidIdentity) && !errors.Is(err, ErrValidity) {
			t.Errorf("%s: Issue err = %v", name, err)
		}
	}
}

// signRaw signs an arbitrary leaf template with ca, for certificates the
// PKI itself refuses to make.
func signRaw(t *testing.T, ca *CA, uris ...string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "n1"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestIdentityFromCert(t *testing.T) {
	ca := mustCA(t, "ca")
	for _, tc := range []struct {
		name string
		uris []string
		want Identity
		err  error
	}{
		{"none", nil, Identity{}, ErrNoIdentity},
		{"only other schemes", []string{"spiffe://example.org/n1"}, Identity{}, ErrNoIdentity},
		{"two", []string{"coffer://node/n1", "coffer://node/n2"}, Identity{}, ErrInvalidIdentity},
		{"two same", []string{"coffer://node/n1", "coffer://node/n1"}, Identity{}, ErrInvalidIdentity},
		{"node and client", []string{"coffer://node/n1", "coffer://client/n1"}, Identity{}, ErrInvalidIdentity},
		{"bad name", []string{"coffer://node/n%201"}, Identity{}, ErrInvalidIdentity},
		{"long name", []string{"coffer://node/" + strings.Repeat("a", MaxNameLen+1)}, Identity{}, ErrInvalidIdentity},
		{"bad kind", []string{"coffer://admin/x"}, Identity{}, ErrInvalidIdentity},
		{"nested path", []string{"coffer://node/a/b"}, Identity{}, ErrInvalidIdentity},
		{"with port", []string{"coffer://node:1/a"}, Identity{}, ErrInvalidIdentity},
		{"ok", []string{"coffer://client/x"}, Identity{KindClient, "x"}, nil},
		{"ok beside spiffe", []string{"spiffe://example.org/x", "coffer://node/n1"}, Identity{KindNode, "n1"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := IdentityFromCert(signRaw(t, ca, tc.uris...))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v (id %v); want %v", err, id, tc.err)
				}
				return
			}
			if err != nil || id != tc.want {
				t.Fatalf("got %v, %v; want %v", id, err, tc.want)
			}
		})
	}
	if _, err := IdentityFromCert(nil); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("nil cert: %v", err)
	}
}

func TestLoadCA_Rejects(t *testing.T) {
	ca := mustCA(t, "ca")
	other := mustCA(t, "other")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caCert := write("ca.pem", ca.CertPEM)
	otherDir := t.TempDir()
	if err := other.WriteFiles(filepath.Join(otherDir, "c.pem"), filepath.Join(otherDir, "k.pem")); err != nil {
		t.Fatal(err)
	}
	leafPEM, leafKey, err := ca.Issue(IssueRequest{Identity: Identity{KindNode, "n1"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}

	if _, err := LoadCA(caCert, filepath.Join(otherDir, "k.pem")); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("mismatched key: %v", err)
	}
	if _, err := LoadCA(write("leaf.pem", leafPEM), write("leaf-key.pem", leafKey)); !errors.Is(err, ErrNotCA) {
		t.Errorf("leaf as CA: %v", err)
	}
	if _, err := LoadCA(write("junk.pem", []byte("not pem")), filepath.Join(otherDir, "k.pem")); !errors.Is(err, ErrBadPEM) {
		t.Errorf("junk cert: %v", err)
	}
	keyAsCert := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})
	if _, err := LoadCA(write("kc.pem", keyAsCert), filepath.Join(otherDir, "k.pem")); !errors.Is(err, ErrBadPEM) {
		t.Errorf("wrong block type: %v", err)
	}
	if _, err := LoadCA(caCert, write("junk-key.pem", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))); !errors.Is(err, ErrBadPEM) {
		t.Errorf("junk key: %v", err)
	}
	if _, err := LoadCA(filepath.Join(dir, "missing.pem"), caCert); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestWriteKeyPair(t *testing.T) {
	ca := mustCAOf(t, "ca", KindClient)
	certPEM, keyPEM, err := ca.Issue(IssueRequest{Identity: Identity{KindClient, "c"}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "c.pem"), filepath.Join(dir, "c-key.pem")
	if err := WriteKeyPair(certPath, keyPath, certPEM, keyPEM); err != nil {
		t.Fatalf("WriteKeyPair: %v", err)
	}
	assertMode(t, keyPath, 0o600)
	assertMode(t, certPath, 0o644)
	got, err := os.ReadFile(keyPath)
	if err != nil || string(got) != string(keyPEM) {
		t.Fatalf("key contents differ: %v", err)
	}
	if err := WriteKeyPair(certPath, filepath.Join(dir, "x-key.pem"), certPEM, keyPEM); !errors.Is(err, ErrExists) {
		t.Fatalf("overwrite: %v", err)
	}
	if err := WriteKeyPair(filepath.Join(dir, "x.pem"), keyPath, certPEM, keyPEM); !errors.Is(err, ErrExists) {
		t.Fatalf("overwrite key: %v", err)
	}
	if err := WriteKeyPair(filepath.Join(dir, "s.pem"), filepath.Join(dir, "s.pem"), certPEM, keyPEM); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("same path: %v", err)
	}
	for _, p := range []string{"x.pem", "x-key.pem", "s.pem"} {
		if _, err := os.Stat(filepath.Join(dir, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("refused write left %s behind: %v", p, err)
		}
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Fatalf("%s mode = %o; want %o", path, got, want)
	}
}

func equalEKU(a, b []x509.ExtKeyUsage) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A CA signs only the kind it was made for, and its name constraints make
// every verifier refuse a certificate of the other kind that it signed by
// other means.
func TestCA_KindIsConstrained(t *testing.T) {
	nodes, clients := mustCA(t, "nodes"), mustCAOf(t, "clients", KindClient)
	if !nodes.Signs(KindNode) || nodes.Signs(KindClient) || !clients.Signs(KindClient) || clients.Signs(KindNode) {
		t.Fatalf("Signs: nodes %v/%v clients %v/%v", nodes.Signs(KindNode), nodes.Signs(KindClient), clients.Signs(KindClient), clients.Signs(KindNode))
	}
	if _, _, err := clients.Issue(IssueRequest{Identity: Identity{KindNode, "n9"}, Validity: time.Hour}); !errors.Is(err, ErrWrongCA) {
		t.Fatalf("client CA issued a node identity: %v", err)
	}
	if _, _, err := nodes.Issue(IssueRequest{Identity: Identity{KindClient, "c"}, Validity: time.Hour}); !errors.Is(err, ErrWrongCA) {
		t.Fatalf("node CA issued a client identity: %v", err)
	}
	// Bypass Sign, as someone holding the client CA key could.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(99), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{Identity{KindNode, "n1"}.URI()}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, clients.Cert, &key.PublicKey, clients.Key)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	_, err = forged.Verify(x509.VerifyOptions{Roots: poolOf(clients), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err == nil || !strings.Contains(err.Error(), "constraint") {
		t.Fatalf("node identity under the client CA verified: %v", err)
	}
}
