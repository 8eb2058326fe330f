package transport

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

const testTimeout = 10 * time.Second

var loopback = net.ParseIP("127.0.0.1")

// mustCA creates a node CA (name-constrained to node identities).
func mustCA(t *testing.T, name string) *CA { return mustCAOf(t, name, KindNode) }

func mustCAOf(t *testing.T, name string, kind Kind) *CA {
	t.Helper()
	ca, err := CreateCA(name, kind, 24*time.Hour)
	if err != nil {
		t.Fatalf("CreateCA: %v", err)
	}
	return ca
}

// testPKI is a deployment's two CAs (node and client) written to a temp
// dir, from which key pairs are issued and written next to them.
type testPKI struct {
	ca           *CA // the node CA
	clients      *CA // the client CA
	dir          string
	caFile       string
	clientCAFile string
	issued       int
}

func mustPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	dir := t.TempDir()
	p := &testPKI{ca: mustCAOf(t, name+" nodes", KindNode), clients: mustCAOf(t, name+" clients", KindClient), dir: dir,
		caFile: filepath.Join(dir, "node-ca.pem"), clientCAFile: filepath.Join(dir, "client-ca.pem")}
	if err := p.ca.WriteFiles(p.caFile, filepath.Join(dir, "node-ca-key.pem")); err != nil {
		t.Fatalf("WriteFiles: %v", err)
	}
	if err := p.clients.WriteFiles(p.clientCAFile, filepath.Join(dir, "client-ca-key.pem")); err != nil {
		t.Fatalf("WriteFiles: %v", err)
	}
	return p
}

// mustIssue issues a certificate for id from the CA of its kind with the
// given IPs, writes it to the PKI's directory and returns a TLSConfig for
// it that trusts the PKI's CAs.
func (p *testPKI) mustIssue(t *testing.T, id Identity, ips ...net.IP) TLSConfig {
	t.Helper()
	ca := p.ca
	if id.Kind == KindClient {
		ca = p.clients
	}
	return p.mustIssueBy(t, ca, id, ips...)
}

// mustIssueBy is mustIssue with the issuing CA given.
func (p *testPKI) mustIssueBy(t *testing.T, ca *CA, id Identity, ips ...net.IP) TLSConfig {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(IssueRequest{Identity: id, IPs: ips, Validity: time.Hour})
	if err != nil {
		t.Fatalf("Issue %s: %v", id, err)
	}
	p.issued++
	base := filepath.Join(p.dir, fmt.Sprintf("%s-%s-%d", id.Kind, id.Name, p.issued))
	c := TLSConfig{CAFile: p.caFile, ClientCAFile: p.clientCAFile, CertFile: base + ".pem", KeyFile: base + "-key.pem"}
	if err := WriteKeyPair(c.CertFile, c.KeyFile, certPEM, keyPEM); err != nil {
		t.Fatalf("WriteKeyPair: %v", err)
	}
	return c
}

func mustServerTLS(t *testing.T, c TLSConfig) *tls.Config {
	t.Helper()
	conf, err := c.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS: %v", err)
	}
	return conf
}

func mustClientTLS(t *testing.T, c TLSConfig) *tls.Config {
	t.Helper()
	conf, err := c.ClientTLS()
	if err != nil {
		t.Fatalf("ClientTLS: %v", err)
	}
	return conf
}

// mustKeyPair loads a TLSConfig's certificate without any trust checks, for
// building deliberately mismatched configurations.
func mustKeyPair(t *testing.T, c TLSConfig) tls.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatalf("LoadX509KeyPair: %v", err)
	}
	return pair
}

func poolOf(ca *CA) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

func mustParseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	certs, err := parseCertsPEM(certPEM)
	if err != nil || len(certs) != 1 {
		t.Fatalf("parse certificate: %v (%d certs)", err, len(certs))
	}
	return certs[0]
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // signalled (without blocking) after each write
}

func newLogBuffer() *logBuffer { return &logBuffer{changed: make(chan struct{}, 1)} }

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	n, err := b.buf.Write(p)
	b.mu.Unlock()
	select {
	case b.changed <- struct{}{}:
	default:
	}
	return n, err
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor waits until the log contains every substring, failing the test
// at the deadline.
func (b *logBuffer) waitFor(t *testing.T, substrs ...string) {
	t.Helper()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	for {
		s := b.String()
		ok := true
		for _, sub := range substrs {
			if !strings.Contains(s, sub) {
				ok = false
				break
			}
		}
		if ok {
			return
		}
		select {
		case <-b.changed:
		case <-deadline.C:
			t.Fatalf("log never contained %q; log:\n%s", substrs, b.String())
		}
	}
}

func testLogger(name string, out *logBuffer) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Output: out, Level: hclog.Debug})
}

// signRawServer signs a server certificate for ips with no Coffer identity.
func signRawServer(t *testing.T, ca *CA, ips ...net.IP) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "rogue"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// alwaysPresent makes a client send pair whatever CAs the server asks for
// (by default Go only sends a certificate issued by an acceptable CA).
func alwaysPresent(pair tls.Certificate) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
}

// mustUnconstrainedCA makes a CA with no name constraints, as an external
// PKI's may be.
func mustUnconstrainedCA(t *testing.T, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(42), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: pemTypeCert, Bytes: der})}
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
