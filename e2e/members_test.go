package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/transport"
)

// nodeTLS is a TLS configuration for a node certificate in dir.
func (e *env) nodeTLS(dir, name string) transport.TLSConfig {
	return transport.TLSConfig{CAFile: filepath.Join(e.dir, "ca", "node-ca.pem"), ClientCAFile: filepath.Join(e.dir, "ca", "client-ca.pem"),
		CertFile: filepath.Join(dir, name+".pem"), KeyFile: filepath.Join(dir, name+"-key.pem")}
}

// internalCalls calls Forward, ReadIndex and AppendAudit on the node at addr
// presenting conf's certificate and returns their errors by name.
func internalCalls(t *testing.T, conf transport.TLSConfig, addr string) map[string]error {
	t.Helper()
	tlsConf, err := conf.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	return internalCallsTLS(t, tlsConf, addr)
}

func internalCallsTLS(t *testing.T, tlsConf *tls.Config, addr string) map[string]error {
	t.Helper()
	conn, err := transport.Dial(addr, tlsConf)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	in := cofferv1.NewInternalServiceClient(conn)
	out := map[string]error{}
	_, out["internal.forward"] = in.Forward(ctx, &cofferv1.ForwardRequest{
		Caller: &cofferv1.Caller{Identity: "client:admin", CertSerial: "01", Node: "n1"},
		Op:     &cofferv1.ForwardRequest_GenerateKey{GenerateKey: &cofferv1.GenerateKeyRequest{Resource: "forged/key"}}})
	_, out["internal.read_index"] = in.ReadIndex(ctx, &cofferv1.ReadIndexRequest{})
	_, out["internal.append_audit"] = in.AppendAudit(ctx, &cofferv1.AppendAuditRequest{Entries: []*cofferv1.AuditEntry{{
		TimeUnixNano: time.Now().UnixNano(), Node: "n1", Caller: "client:admin", Operation: "get", Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED}}})
	return out
}

// raftKnock sends one AppendEntries to a Raft port presenting conf's
// certificate.
func raftKnock(t *testing.T, conf transport.TLSConfig, id, addr string) error {
	t.Helper()
	srv, err := conf.PeerServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := conf.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	trans, err := transport.NewRaftTransport(transport.RaftTransportConfig{BindAddr: "127.0.0.1:0", Server: srv, Client: cli,
		Timeout: 3 * time.Second, Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer trans.Close()
	req := &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("rogue"),
		Addr: trans.EncodePeer("rogue", trans.LocalAddr())}, Term: 1 << 40}
	var resp raft.AppendEntriesResponse
	return trans.AppendEntries(raft.ServerID(id), raft.ServerAddress(addr), req, &resp)
}

// waitAudit waits until `coffer audit query` finds a denied entry of op by
// caller whose reason mentions reason.
func (e *env) waitAudit(op, caller, reason string) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		out := e.mustCoffer("audit", "query", "--op", op, "--outcome", "denied", "--caller", caller, "-o", "json")
		if strings.Contains(out, reason) {
			return
		}
		last = out
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("no denied %s entry of %s mentioning %q:\n%s", op, caller, reason, last)
}

// TestE2E_OnlyMembersAreNodes runs real processes: a node certificate that
// the node CA issued to a non-member, a second certificate minted for a
// member, and a member whose certificate was revoked are refused on every
// internal door and on the Raft port, each refusal audited; the client CA
// cannot mint a node identity at all.
func TestE2E_OnlyMembersAreNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and starts processes")
	}
	e := &env{t: t, bin: buildBinaries(t), dir: filepath.Join(t.TempDir(), "dev"), base: freeBase(t, 3)}
	e.startDev()
	e.loadEnv()
	api := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", e.base+i) }
	raftAddr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", e.base+100+i) }
	leader := func() int {
		var st struct {
			Nodes []struct {
				ID   string `json:"id"`
				Role string `json:"role"`
				Pin  string `json:"pinned_cert_sha256"`
			} `json:"nodes"`
		}
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if err := json.Unmarshal([]byte(e.mustCoffer("cluster", "status", "-o", "json")), &st); err != nil {
				t.Fatal(err)
			}
			for _, n := range st.Nodes {
				if n.Role == "leader" && len(n.Pin) == 64 {
					var i int
					fmt.Sscanf(n.ID, "n%d", &i)
					return i
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("no admitted leader: %+v", st)
		return 0
	}
	l := leader()
	if out := e.mustCoffer("cluster", "status"); !strings.Contains(out, "CERT-PIN") {
		t.Fatalf("cluster status shows no pins:\n%s", out)
	}

	// The node CA issues a certificate to a node that is not a member, and
	// a second one for member n2 (as a stolen node CA key could).
	work := t.TempDir()
	nodeCA := []string{"--ca-key", filepath.Join(e.dir, "ca", "node-ca-key.pem")}
	e.mustCoffer(append([]string{"ca", "issue-node", "n9", "--out", filepath.Join(work, "rogue"), "--ip", "127.0.0.1"}, nodeCA...)...)
	e.mustCoffer(append([]string{"ca", "issue-node", "n2", "--out", filepath.Join(work, "minted"), "--ip", "127.0.0.1"}, nodeCA...)...)
	// The client CA refuses to sign a node identity.
	if _, errs, code := e.coffer("ca", "issue-node", "n8", "--out", filepath.Join(work, "x"), "--ip", "127.0.0.1",
		"--ca-cert", filepath.Join(e.dir, "ca", "client-ca.pem"), "--ca-key", filepath.Join(e.dir, "ca", "client-ca-key.pem")); code == 0 || !strings.Contains(errs, "not a node CA") {
		t.Fatalf("the client CA issued a node certificate: exit %d, %s", code, errs)
	}

	for _, c := range []struct {
		name, caller, msg string
		conf              transport.TLSConfig
	}{
		{"non-member", "node:n9", "not in the Raft configuration", e.nodeTLS(filepath.Join(work, "rogue"), "n9")},
		{"minted for n2", "node:n2", "pinned at its admission", e.nodeTLS(filepath.Join(work, "minted"), "n2")},
	} {
		for door, err := range internalCalls(t, c.conf, api(l)) {
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("%s on %s: %v; want PermissionDenied naming %q", c.name, door, err, c.msg)
			}
			e.waitAudit(door, c.caller, c.msg)
		}
		if err := raftKnock(t, c.conf, fmt.Sprintf("n%d", l), raftAddr(l)); err == nil {
			t.Fatalf("%s: the Raft port accepted it", c.name)
		}
		e.waitAudit("raft.connect", c.caller, c.msg)
	}
	if out := e.mustCoffer("key", "list", "--resource", "forged/key"); strings.Contains(out, "k1-") {
		t.Fatalf("a refused forward created a key:\n%s", out)
	}

	// Someone holding only the client CA key signs a certificate claiming
	// node:n1 by hand: refused in the TLS handshake.
	forged := forgeNodeCert(t, e.dir, work, "n1")
	pair, err := tls.LoadX509KeyPair(forged.CertFile, forged.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	nodeCAPEM, err := os.ReadFile(forged.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(nodeCAPEM)
	forgedTLS := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }}
	if err := internalCallsTLS(t, forgedTLS, api(l))["internal.read_index"]; status.Code(err) != codes.Unavailable {
		t.Fatalf("node identity from the client CA: %v; want a failed handshake (Unavailable)", err)
	}

	// A member whose certificate is revoked is cut off everywhere.
	victim := l%3 + 1
	victimTLS := devNodeTLS(e.dir, victim)
	e.mustCoffer("client", "revoke-cert", "--cert-file", victimTLS.CertFile, "--reason", "e2e")
	for door, err := range internalCalls(t, victimTLS, api(l)) {
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "is revoked") {
			t.Fatalf("revoked member on %s: %v; want Unauthenticated", door, err)
		}
		e.waitAudit(door, fmt.Sprintf("node:n%d", victim), "is revoked")
	}
	if err := raftKnock(t, victimTLS, fmt.Sprintf("n%d", l), raftAddr(l)); err == nil {
		t.Fatal("the Raft port accepted a revoked member")
	}
	e.waitAudit("raft.connect", fmt.Sprintf("node:n%d", victim), "is revoked")
	// The other two still serve writes.
	e.mustCoffer("--addr", api(l), "key", "generate", "--resource", "after/revoke")
}

// devNodeTLS is node i's own TLS configuration in a dev directory.
func devNodeTLS(dir string, i int) transport.TLSConfig {
	nd := filepath.Join(dir, fmt.Sprintf("n%d", i), "tls")
	return transport.TLSConfig{CAFile: filepath.Join(dir, "ca", "node-ca.pem"), ClientCAFile: filepath.Join(dir, "ca", "client-ca.pem"),
		CertFile: filepath.Join(nd, "node.pem"), KeyFile: filepath.Join(nd, "node-key.pem")}
}

// forgeNodeCert signs, with the client CA's key and without the CLI's
// checks, a certificate claiming node:name, and returns its TLS files.
func forgeNodeCert(t *testing.T, devDir, work, name string) transport.TLSConfig {
	t.Helper()
	ca, err := transport.LoadCA(filepath.Join(devDir, "ca", "client-ca.pem"), filepath.Join(devDir, "ca", "client-ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(4242), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{transport.Identity{Kind: transport.KindNode, Name: name}.URI()}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	conf := transport.TLSConfig{CAFile: filepath.Join(devDir, "ca", "node-ca.pem"),
		CertFile: filepath.Join(work, "forged.pem"), KeyFile: filepath.Join(work, "forged-key.pem")}
	if err := os.WriteFile(conf.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return conf
}

// TestE2E_DevDirMigratesToTwoCAs: a dev directory from before nodes and
// clients had separate CAs (one ca/ca.pem signed both, configs in the old
// field names) is migrated on start: the cluster comes up on the new CAs,
// the old ones are kept aside, and the CLI works with the new env file.
func TestE2E_DevDirMigratesToTwoCAs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and starts processes")
	}
	e := &env{t: t, bin: buildBinaries(t), dir: filepath.Join(t.TempDir(), "dev"), base: freeBase(t, 3)}
	init := exec.Command(filepath.Join(e.bin, "cofferd"), "dev", "--init-only", "--nodes", "3", "--dir", e.dir, "--base-port", fmt.Sprint(e.base))
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	// Rewrite it into the single-CA layout.
	if err := os.RemoveAll(filepath.Join(e.dir, "ca")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(e.dir, "ca"), 0o700); err != nil {
		t.Fatal(err)
	}
	ca := singleCA(t, filepath.Join(e.dir, "ca", "ca.pem"), filepath.Join(e.dir, "ca", "ca-key.pem"))
	reissue := func(id transport.Identity, cert, key string) {
		_ = os.Remove(cert)
		_ = os.Remove(key)
		c, k, err := ca.Issue(transport.IssueRequest{Identity: id, IPs: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if err := transport.WriteKeyPair(cert, key, c, k); err != nil {
			t.Fatal(err)
		}
	}
	reissue(transport.Identity{Kind: transport.KindClient, Name: "admin"}, filepath.Join(e.dir, "client", "admin.pem"), filepath.Join(e.dir, "client", "admin-key.pem"))
	for i := 1; i <= 3; i++ {
		tlsc := devNodeTLS(e.dir, i)
		reissue(transport.Identity{Kind: transport.KindNode, Name: fmt.Sprintf("n%d", i)}, tlsc.CertFile, tlsc.KeyFile)
		path := filepath.Join(e.dir, fmt.Sprintf("n%d", i), "config.json")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(data, &raw); err != nil {
			t.Fatal(err)
		}
		raw["tls"], _ = json.Marshal(map[string]string{"CAFile": filepath.Join(e.dir, "ca", "ca.pem"), "CertFile": tlsc.CertFile, "KeyFile": tlsc.KeyFile})
		// That layout wrote durations as nanoseconds, and had no gossip.
		raw["raft"], _ = json.Marshal(map[string]int64{"heartbeat_timeout": 250e6, "election_timeout": 250e6, "leader_lease_timeout": 125e6,
			"commit_timeout": 5e6, "snapshot_interval": 30e9, "snapshot_threshold": 16384, "trailing_logs": 10240, "max_append_entries": 512})
		delete(raw, "gossip")
		delete(raw, "membership")
		data, _ = json.Marshal(raw)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	d := e.startDev()
	if out := d.output(); !strings.Contains(out, "Migrating") || !strings.Contains(out, "single-ca-old") {
		t.Fatalf("no migration message:\n%s", out)
	}
	for _, f := range []string{"single-ca-old/ca/ca.pem", "ca/node-ca.pem", "ca/client-ca.pem"} {
		if _, err := os.Stat(filepath.Join(e.dir, f)); err != nil {
			t.Fatalf("after migration: %v", err)
		}
	}
	e.loadEnv()
	if out := e.mustCoffer("key", "generate", "--resource", "migrated/app"); !strings.HasPrefix(out, "k1-") {
		t.Fatalf("generate after migration: %q", out)
	}
	e.stop(d)
	// The next start reuses the migrated directory as it is.
	d = e.startDev()
	if strings.Contains(d.output(), "Migrating") {
		t.Fatalf("migrated twice:\n%s", d.output())
	}
}

// singleCA makes an unconstrained CA, as the single-CA layout had.
func singleCA(t *testing.T, certPath, keyPath string) *transport.CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Coffer dev CA"},
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
	ca := &transport.CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	if err := ca.WriteFiles(certPath, keyPath); err != nil {
		t.Fatal(err)
	}
	return ca
}
