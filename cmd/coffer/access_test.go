package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// accessNode is an in-memory AccessService: clients, rules and revocations
// in maps, Check answered by authz over them.
type accessNode struct {
	cofferv1.UnimplementedAccessServiceServer

	mu       sync.Mutex
	clients  map[string]*cofferv1.ClientInfo
	rules    []*cofferv1.AclRuleInfo
	revoked  []*cofferv1.RevokeCertificateRequest
	register []*cofferv1.RegisterClientRequest
	nextRule int
}

// mustAccessNode starts an accessNode over mTLS. The returned environment
// reaches it as client "cli" and also names the client CA and its key, so
// the signing commands work with it; dir holds the CA files.
func mustAccessNode(t *testing.T) (*accessNode, envMap, string) {
	t.Helper()
	pki := newTestPKI(t, "access-test-ca")
	dir, caFile, issue := pki.dir, pki.caFile, pki.issue
	serverTLS, err := issue(transport.Identity{Kind: transport.KindNode, Name: "n1"}).ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &accessNode{clients: map[string]*cofferv1.ClientInfo{}}
	gs := grpc.NewServer(testenv.ServerOptions(t, serverTLS)...)
	cofferv1.RegisterAccessServiceServer(gs, n)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cli := issue(transport.Identity{Kind: transport.KindClient, Name: "cli"})
	return n, envMap{envAddr: lis.Addr().String(), envCA: caFile, envCert: cli.CertFile, envKey: cli.KeyFile,
		envClientCA: pki.clientCA, envClientCAKey: pki.clientCK}, dir
}

func (n *accessNode) RegisterClient(_ context.Context, req *cofferv1.RegisterClientRequest) (*cofferv1.ClientInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.register = append(n.register, req)
	c, ok := n.clients[req.GetName()]
	switch {
	case ok && !req.GetUpdate():
		return nil, status.Errorf(codes.AlreadyExists, "client %s is already registered", req.GetName())
	case !ok:
		c = &cofferv1.ClientInfo{Name: req.GetName(), Active: true}
		n.clients[req.GetName()] = c
	}
	c.Groups, c.Roles = req.GetGroups(), req.GetRoles()
	c.Revision++
	return c, nil
}

func (n *accessNode) SetClientActive(_ context.Context, req *cofferv1.SetClientActiveRequest) (*cofferv1.ClientInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.clients[req.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "client %s is not registered", req.GetName())
	}
	c.Active = req.GetActive()
	c.Revision++
	return c, nil
}

func (n *accessNode) GetClient(_ context.Context, req *cofferv1.GetClientRequest) (*cofferv1.ClientInfo, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	c, ok := n.clients[req.GetName()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "client %s is not registered", req.GetName())
	}
	return c, nil
}

func (n *accessNode) ListClients(context.Context, *cofferv1.ListClientsRequest) (*cofferv1.ListClientsResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	resp := &cofferv1.ListClientsResponse{}
	for _, c := range n.clients {
		resp.Clients = append(resp.Clients, c)
	}
	sort.Slice(resp.Clients, func(i, j int) bool { return resp.Clients[i].GetName() < resp.Clients[j].GetName() })
	return resp, nil
}

func (n *accessNode) RevokeCertificate(_ context.Context, req *cofferv1.RevokeCertificateRequest) (*cofferv1.RevokeCertificateResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.revoked = append(n.revoked, req)
	return &cofferv1.RevokeCertificateResponse{Serial: req.GetSerial()}, nil
}

func (n *accessNode) Grant(ctx context.Context, req *cofferv1.GrantRequest) (*cofferv1.AclRuleInfo, error) {
	caller, err := transport.IdentityFromContext(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	id := req.GetId()
	if id == "" {
		n.nextRule++
		id = fmt.Sprintf("rule-%d", n.nextRule)
	}
	for _, r := range n.rules {
		if r.GetId() == id {
			return nil, status.Errorf(codes.AlreadyExists, "rule %s exists", id)
		}
	}
	r := &cofferv1.AclRuleInfo{Id: id, Subject: req.GetSubject(), Operations: req.GetOperations(),
		ResourcePattern: req.GetResourcePattern(), CreatedBy: caller.String()}
	n.rules = append(n.rules, r)
	return r, nil
}

func (n *accessNode) RevokeGrant(_ context.Context, req *cofferv1.RevokeGrantRequest) (*cofferv1.RevokeGrantResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, r := range n.rules {
		if r.GetId() == req.GetId() {
			n.rules = slices.Delete(n.rules, i, i+1)
			return &cofferv1.RevokeGrantResponse{Id: req.GetId()}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "rule %s not found", req.GetId())
}

func (n *accessNode) ListGrants(_ context.Context, req *cofferv1.ListGrantsRequest) (*cofferv1.ListGrantsResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	resp := &cofferv1.ListGrantsResponse{}
	for _, r := range n.rules {
		if req.GetSubject() == "" || r.GetSubject() == req.GetSubject() {
			resp.Rules = append(resp.Rules, r)
		}
	}
	return resp, nil
}

func (n *accessNode) Check(_ context.Context, req *cofferv1.CheckRequest) (*cofferv1.CheckResponse, error) {
	n.mu.Lock()
	var clients []*cofferv1.ClientRecord
	for _, c := range n.clients {
		clients = append(clients, &cofferv1.ClientRecord{Name: c.GetName(), Active: c.GetActive(), Groups: c.GetGroups(), Roles: c.GetRoles()})
	}
	var rules []*cofferv1.AclRule
	for _, r := range n.rules {
		rules = append(rules, &cofferv1.AclRule{Id: r.GetId(), Subject: r.GetSubject(), Operations: r.GetOperations(), ResourcePattern: r.GetResourcePattern()})
	}
	var revoked []*cofferv1.RevokedCertificate
	for _, r := range n.revoked {
		revoked = append(revoked, &cofferv1.RevokedCertificate{Serial: r.GetSerial()})
	}
	n.mu.Unlock()
	snap, err := authz.NewSnapshot(clients, rules, revoked)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	serial := "1"
	if req.GetCertSerial() != "" {
		serial = req.GetCertSerial()
	}
	e := snap.Explain(authz.Request{Identity: authz.ClientSubject(req.GetClient()), CertSerial: serial,
		Op: authz.Op(req.GetOperation()), Resource: req.GetResource()})
	return &cofferv1.CheckResponse{Allowed: e.Decision.Allowed, Reason: e.Decision.Reason, Rule: e.Decision.Rule,
		Explanation: e.String()}, nil
}

func (n *accessNode) registrations() []*cofferv1.RegisterClientRequest {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.register)
}

func (n *accessNode) revocations() []*cofferv1.RevokeCertificateRequest {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.revoked)
}

// mustReadCert reads a PEM certificate file.
func mustReadCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := readCertFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// mustLoadCACert reads the CA certificate of dir.
func mustLoadCACert(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	return mustReadCert(t, filepath.Join(dir, "client-ca.pem"))
}

// checkClientCert checks that cert chains to ca for client authentication,
// maps to client:name and is not usable as a server or CA certificate.
func checkClientCert(t *testing.T, cert, ca *x509.Certificate, name string) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("certificate does not chain to the CA for client auth: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("client certificate verifies for server auth")
	}
	id, err := transport.IdentityFromCert(cert)
	if err != nil {
		t.Fatalf("IdentityFromCert: %v", err)
	}
	if want := (transport.Identity{Kind: transport.KindClient, Name: name}); id != want {
		t.Fatalf("identity %s, want %s", id, want)
	}
	if cert.IsCA || cert.KeyUsage != x509.KeyUsageDigitalSignature || len(cert.URIs) != 1 ||
		len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
		t.Fatalf("unexpected profile: CA %v, key usage %v, URIs %v, DNS %v, IPs %v", cert.IsCA, cert.KeyUsage, cert.URIs, cert.DNSNames, cert.IPAddresses)
	}
	if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
		t.Fatalf("serial %v is not a positive 128-bit number", cert.SerialNumber)
	}
	if cert.NotAfter.After(ca.NotAfter) {
		t.Fatalf("certificate outlives the CA: %v > %v", cert.NotAfter, ca.NotAfter)
	}
	if cert.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Fatalf("signature algorithm %v", cert.SignatureAlgorithm)
	}
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestCLI_AccessUsageErrors(t *testing.T) {
	dir := t.TempDir()
	caOnly := envMap{envClientCA: filepath.Join(dir, "client-ca.pem"), envClientCAKey: filepath.Join(dir, "client-ca-key.pem")}
	tests := []struct {
		name    string
		env     envMap
		args    []string
		wantErr string
	}{
		{"ca init without out", nil, []string{"ca", "init"}, "--out is required"},
		{"ca init zero days", nil, []string{"ca", "init", "--out", dir, "--days", "0"}, "--days"},
		{"ca init empty name", nil, []string{"ca", "init", "--out", dir, "--name", " "}, "--name"},
		{"issue without name", nil, []string{"client", "issue", "--out", dir}, "NAME"},
		{"issue bad name", nil, []string{"client", "issue", "bad/name", "--out", dir}, "client name"},
		{"issue without out", caOnly, []string{"client", "issue", "app"}, "--out is required"},
		{"issue without CA key", envMap{envClientCA: "ca.pem"}, []string{"client", "issue", "app", "--out", dir, "--no-register"}, "COFFER_CLIENT_CA_KEY"},
		{"issue without CA cert", envMap{envClientCAKey: "k.pem"}, []string{"client", "issue", "app", "--out", dir, "--no-register"}, "--ca-cert"},
		{"issue-node without out", nil, []string{"ca", "issue-node", "n4", "--ip", "127.0.0.1"}, "--out is required"},
		{"issue-node without address", nil, []string{"ca", "issue-node", "n4", "--out", dir}, "--ip or --dns"},
		{"issue-node bad ip", nil, []string{"ca", "issue-node", "n4", "--out", dir, "--ip", "nope"}, "not an IP"},
		{"issue-node bad name", nil, []string{"ca", "issue-node", "a/b", "--out", dir, "--ip", "127.0.0.1"}, "invalid"},
		{"issue-node without CA", nil, []string{"ca", "issue-node", "n4", "--out", dir, "--ip", "127.0.0.1"}, "COFFER_NODE_CA_KEY"},
		{"pin without cert", nil, []string{"cluster", "pin", "n2"}, "--cert-file is required"},
		{"issue bad role", caOnly, []string{"client", "issue", "app", "--out", dir, "--role", "admin"}, "--role"},
		{"issue bad group", caOnly, []string{"client", "issue", "app", "--out", dir, "--group", "a b"}, "--group"},
		{"issue groups without registering", caOnly, []string{"client", "issue", "app", "--out", dir, "--no-register", "--group", "g"}, "--no-register"},
		{"issue registering without cluster", caOnly, []string{"client", "issue", "app", "--out", dir}, "set --addr or COFFER_ADDR"},
		{"issue too long", caOnly, []string{"client", "issue", "app", "--out", dir, "--days", "99999"}, "--days"},
		{"sign without csr", caOnly, []string{"client", "sign", "--out", "x.pem"}, "--csr is required"},
		{"sign without out", caOnly, []string{"client", "sign", "--csr", "x.csr"}, "--out is required"},
		{"sign groups without register", caOnly, []string{"client", "sign", "--csr", "x.csr", "--out", "x.pem", "--group", "g"}, "--register"},
		{"register bad name", nil, []string{"client", "register", ".."}, "client name"},
		{"register bad role", nil, []string{"client", "register", "app", "--role", "root"}, "--role"},
		{"register bad group", nil, []string{"client", "register", "app", "--group", "a:b"}, "--group"},
		{"activate two names", nil, []string{"client", "activate", "a", "b"}, "NAME"},
		{"deactivate bad name", nil, []string{"client", "deactivate", "a b"}, "client name"},
		{"get bad consistency", nil, []string{"client", "get", "app", "--consistency", "eventual"}, "consistency"},
		{"list with argument", nil, []string{"client", "list", "x"}, "takes 0 argument"},
		{"revoke-cert nothing", nil, []string{"client", "revoke-cert"}, "exactly one of --serial or --cert-file"},
		{"revoke-cert both", nil, []string{"client", "revoke-cert", "--serial", "ab", "--cert-file", "c.pem"}, "exactly one"},
		{"revoke-cert bad serial", nil, []string{"client", "revoke-cert", "--serial", "xyz"}, "--serial"},
		{"revoke-cert long reason", nil, []string{"client", "revoke-cert", "--serial", "ab", "--reason", strings.Repeat("r", 600)}, "--reason"},
		{"grant without subject", nil, []string{"acl", "grant", "--ops", "get", "--resource", "db/**"}, "give --client or --group"},
		{"grant two subjects", nil, []string{"acl", "grant", "--client", "a", "--group", "g", "--ops", "get", "--resource", "db/**"}, "not both"},
		{"grant bad client", nil, []string{"acl", "grant", "--client", "a:b", "--ops", "get", "--resource", "db/**"}, "--client"},
		{"grant without ops", nil, []string{"acl", "grant", "--client", "a", "--resource", "db/**"}, "--ops is required"},
		{"grant unknown op", nil, []string{"acl", "grant", "--client", "a", "--ops", "get,fly", "--resource", "db/**"}, "unknown operation"},
		{"grant empty op", nil, []string{"acl", "grant", "--client", "a", "--ops", "get,,put", "--resource", "db/**"}, "--ops"},
		{"grant without resource", nil, []string{"acl", "grant", "--client", "a", "--ops", "get"}, "--resource is required"},
		{"grant bad pattern", nil, []string{"acl", "grant", "--client", "a", "--ops", "get", "--resource", "db/card-*"}, "--resource"},
		{"grant admin op narrow", nil, []string{"acl", "grant", "--group", "g", "--ops", "acl.manage", "--resource", "db/**"}, "not resource-scoped"},
		{"grant bad id", nil, []string{"acl", "grant", "--client", "a", "--ops", "get", "--resource", "db/**", "--id", "role:x"}, "--id"},
		{"revoke bad id", nil, []string{"acl", "revoke", "a:b"}, "rule id"},
		{"revoke without id", nil, []string{"acl", "revoke"}, "ID"},
		{"list two subjects", nil, []string{"acl", "list", "--client", "a", "--group", "g"}, "not both"},
		{"list bad group", nil, []string{"acl", "list", "--group", "."}, "--group"},
		{"check without client", nil, []string{"acl", "check", "--op", "get"}, "--client is required"},
		{"check without op", nil, []string{"acl", "check", "--client", "a"}, "--op is required"},
		{"check unknown op", nil, []string{"acl", "check", "--client", "a", "--op", "fly"}, "--op"},
		{"check wildcard op", nil, []string{"acl", "check", "--client", "a", "--op", "*"}, "rules only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, tc.env, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d (stderr %q)", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tc.wantErr)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Fatalf("usage errors left files behind: %v, %v", entries, err)
	}
}

func TestCLI_CAInitAndIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	out := mustRun(t, nil, "ca", "init", "--out", dir, "--name", "Test CA", "--days", "30")
	caCert, caKey := filepath.Join(dir, "client-ca.pem"), filepath.Join(dir, "client-ca-key.pem")
	nodeCert, nodeKey := filepath.Join(dir, "node-ca.pem"), filepath.Join(dir, "node-ca-key.pem")
	for _, f := range []string{caCert, caKey, nodeCert, nodeKey} {
		if !strings.Contains(out, f) {
			t.Fatalf("ca init output lacks %s:\n%s", f, out)
		}
	}
	if m := fileMode(t, nodeKey); m != 0o600 {
		t.Fatalf("node CA key mode %v, want 0600", m)
	}
	// Each CA signs its own kind only, and the CLI says which one to use.
	if code, _, stderr := runCLI(t, envMap{envClientCA: nodeCert, envClientCAKey: nodeKey}, "client", "issue", "x", "--out", t.TempDir(), "--no-register"); code != exitFailure ||
		!strings.Contains(stderr, "is not a client CA") {
		t.Fatalf("client issue with the node CA: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, envMap{envCA: caCert, envNodeCAKey: caKey}, "ca", "issue-node", "n4", "--out", t.TempDir(), "--ip", "127.0.0.1"); code != exitFailure ||
		!strings.Contains(stderr, "is not a node CA") {
		t.Fatalf("issue-node with the client CA: exit %d, stderr %q", code, stderr)
	}
	nodes := filepath.Join(t.TempDir(), "nodes")
	out = mustRun(t, envMap{envCA: nodeCert, envNodeCAKey: nodeKey}, "ca", "issue-node", "n4", "--out", nodes, "--ip", "10.0.0.4", "--dns", "n4.example")
	nodeLeaf := mustReadCert(t, filepath.Join(nodes, "n4.pem"))
	if id, err := transport.IdentityFromCert(nodeLeaf); err != nil || id.String() != "node:n4" || len(nodeLeaf.IPAddresses) != 1 ||
		nodeLeaf.DNSNames[0] != "n4.example" || !strings.Contains(out, "node:n4") {
		t.Fatalf("issue-node: %v %v %v\n%s", id, err, nodeLeaf.IPAddresses, out)
	}
	if m := fileMode(t, filepath.Join(nodes, "n4-key.pem")); m != 0o600 {
		t.Fatalf("node key mode %v", m)
	}
	if _, err := (transport.TLSConfig{CAFile: nodeCert, ClientCAFile: caCert, CertFile: filepath.Join(nodes, "n4.pem"),
		KeyFile: filepath.Join(nodes, "n4-key.pem")}).ServerTLS(); err != nil {
		t.Fatalf("the issued node pair cannot serve: %v", err)
	}
	if m := fileMode(t, caKey); m != 0o600 {
		t.Fatalf("CA key mode %v, want 0600", m)
	}
	ca, err := transport.LoadCA(caCert, caKey)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if ca.Cert.Subject.CommonName != "Test CA (clients)" || time.Until(ca.Cert.NotAfter) > 31*24*time.Hour {
		t.Fatalf("CA subject %s, not after %v", ca.Cert.Subject, ca.Cert.NotAfter)
	}
	before, _ := os.ReadFile(caKey)
	if code, _, stderr := runCLI(t, nil, "ca", "init", "--out", dir); code != exitFailure || !strings.Contains(stderr, "already exists") {
		t.Fatalf("second ca init: exit %d, stderr %q", code, stderr)
	}
	if after, _ := os.ReadFile(caKey); !bytes.Equal(before, after) {
		t.Fatal("second ca init changed the CA key")
	}

	// The CA files come from the environment, as a dev cluster exports them.
	env := envMap{envClientCA: caCert, envClientCAKey: caKey}
	certs := filepath.Join(t.TempDir(), "certs")
	out = mustRun(t, env, "client", "issue", "app-1", "--out", certs, "--no-register", "--days", "7")
	certFile, keyFile := filepath.Join(certs, "app-1.pem"), filepath.Join(certs, "app-1-key.pem")
	if m := fileMode(t, keyFile); m != 0o600 {
		t.Fatalf("client key mode %v, want 0600", m)
	}
	cert := mustReadCert(t, certFile)
	checkClientCert(t, cert, ca.Cert, "app-1")
	if want := "serial:      " + authz.FormatSerial(cert.SerialNumber) + "\n"; !strings.Contains(out, want) {
		t.Fatalf("issue output lacks %q:\n%s", want, out)
	}
	if !strings.Contains(out, "registered:  no") {
		t.Fatalf("issue output:\n%s", out)
	}
	if d := cert.NotAfter.Sub(cert.NotBefore); d < 7*24*time.Hour || d > 7*24*time.Hour+10*time.Minute {
		t.Fatalf("validity %v, want 7 days", d)
	}
	// The pair is usable as the CLI's own credentials.
	if _, err := (transport.TLSConfig{CAFile: nodeCert, CertFile: certFile, KeyFile: keyFile}).ClientTLS(); err != nil {
		t.Fatalf("ClientTLS with the issued pair: %v", err)
	}

	// Never overwrite.
	keyBefore, _ := os.ReadFile(keyFile)
	if code, _, stderr := runCLI(t, env, "client", "issue", "app-1", "--out", certs, "--no-register"); code != exitFailure || !strings.Contains(stderr, "already exists") {
		t.Fatalf("issue over existing files: exit %d, stderr %q", code, stderr)
	}
	if keyAfter, _ := os.ReadFile(keyFile); !bytes.Equal(keyBefore, keyAfter) {
		t.Fatal("issue replaced an existing key")
	}

	// Flags beat the environment, and -o json reports the same facts.
	var got issued
	out = mustRun(t, envMap{envClientCA: "/nonexistent", envClientCAKey: "/nonexistent"}, "-o", "json", "client", "issue", "app-2",
		"--out", certs, "--no-register", "--ca-cert", caCert, "--ca-key", caKey)
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("issue -o json = %q: %v", out, err)
	}
	cert2 := mustReadCert(t, got.Certificate)
	checkClientCert(t, cert2, ca.Cert, "app-2")
	if got.Identity != "client:app-2" || got.Serial != authz.FormatSerial(cert2.SerialNumber) || got.Registered ||
		got.PrivateKey != filepath.Join(certs, "app-2-key.pem") {
		t.Fatalf("issue -o json = %+v", got)
	}

	// A validity beyond the CA's is refused and leaves nothing behind.
	code, _, stderr := runCLI(t, env, "client", "issue", "app-3", "--out", certs, "--no-register", "--days", "60")
	if code != exitFailure || !strings.Contains(stderr, "after the CA") {
		t.Fatalf("issue beyond the CA: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(certs, "app-3-key.pem")); !os.IsNotExist(err) {
		t.Fatalf("failed issue left a key: %v", err)
	}
}

// csrOptions describe a test certificate request.
type csrOptions struct {
	cn   string
	uris []string
	dns  []string
	key  crypto.Signer
}

func mustCSR(t *testing.T, o csrOptions) []byte {
	t.Helper()
	if o.key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		o.key = k
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: o.cn}, DNSNames: o.dns}
	for _, s := range o.uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, o.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func writeCSR(t *testing.T, dir, name string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCLI_ClientSign(t *testing.T) {
	pki := t.TempDir()
	mustRun(t, nil, "ca", "init", "--out", pki)
	caCert := mustLoadCACert(t, pki)
	env := envMap{envCA: filepath.Join(pki, "node-ca.pem"), envClientCA: filepath.Join(pki, "client-ca.pem"), envClientCAKey: filepath.Join(pki, "client-ca-key.pem")}
	dir := t.TempDir()

	// A request with the URI SAN: the identity comes from it, the key is
	// the requester's, and requested DNS names are dropped.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr := writeCSR(t, dir, "web.csr", mustCSR(t, csrOptions{cn: "whatever", uris: []string{"coffer://client/web-app"},
		dns: []string{"web.example"}, key: key}))
	certFile := filepath.Join(dir, "web.pem")
	code, out, stderr := runCLI(t, env, "client", "sign", "--csr", csr, "--out", certFile, "--days", "3")
	if code != exitOK {
		t.Fatalf("sign: exit %d, stderr %q", code, stderr)
	}
	if !strings.Contains(stderr, "DNS names are not copied") {
		t.Errorf("no note about dropped DNS names: %q", stderr)
	}
	cert := mustReadCert(t, certFile)
	checkClientCert(t, cert, caCert, "web-app")
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Fatal("certificate is not for the request's key")
	}
	if cert.Subject.CommonName != "web-app" {
		t.Fatalf("subject %s", cert.Subject)
	}
	if want := "serial:      " + authz.FormatSerial(cert.SerialNumber); !strings.Contains(out, want) {
		t.Fatalf("sign output lacks %q:\n%s", want, out)
	}
	if m := fileMode(t, certFile); m != certFileMode {
		t.Fatalf("certificate mode %v", m)
	}
	// The certificate and the requester's key work as TLS credentials.
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "web-key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (transport.TLSConfig{CAFile: env[envCA], CertFile: certFile, KeyFile: keyFile}).ClientTLS(); err != nil {
		t.Fatalf("ClientTLS with the signed certificate: %v", err)
	}

	// A request with only a common name, in DER, with an RSA key.
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	derFile := filepath.Join(dir, "batch.der")
	if err := os.WriteFile(derFile, mustCSR(t, csrOptions{cn: "batch_job.1", key: rsaKey}), 0o644); err != nil {
		t.Fatal(err)
	}
	var got issued
	out = mustRun(t, env, "-o", "json", "client", "sign", "--csr", derFile, "--out", filepath.Join(dir, "batch.pem"))
	if err := json.Unmarshal([]byte(out), &got); err != nil || got.Identity != "client:batch_job.1" || got.PrivateKey != "" {
		t.Fatalf("sign -o json = %q (%v)", out, err)
	}
	checkClientCert(t, mustReadCert(t, filepath.Join(dir, "batch.pem")), caCert, "batch_job.1")

	// Refused requests write nothing.
	tampered := mustCSR(t, csrOptions{cn: "tamper-me"})
	i := bytes.Index(tampered, []byte("tamper-me"))
	tampered[i+len("tamper-m")] = 'f'
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, wantErr string
		der           []byte
	}{
		{"node identity", "node:n1", mustCSR(t, csrOptions{cn: "n1", uris: []string{"coffer://node/n1"}})},
		{"bad signature", "bad signature", tampered},
		{"two URIs", "2 URI SANs", mustCSR(t, csrOptions{uris: []string{"coffer://client/a", "https://example.com/a"}})},
		{"foreign URI", "scheme", mustCSR(t, csrOptions{cn: "a", uris: []string{"spiffe://example.org/a"}})},
		{"malformed URI", "invalid coffer identity", mustCSR(t, csrOptions{uris: []string{"coffer://client/a/b"}})},
		{"no identity", "neither", mustCSR(t, csrOptions{})},
		{"bad common name", "common name", mustCSR(t, csrOptions{cn: "Alice Smith"})},
		{"node-like common name", "common name", mustCSR(t, csrOptions{cn: "node:n1"})},
		{"weak key", "too small", mustCSR(t, csrOptions{cn: "weak", key: weak})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			csr := writeCSR(t, dir, strings.ReplaceAll(tc.name, " ", "-")+".csr", tc.der)
			outFile := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".pem")
			code, out, stderr := runCLI(t, env, "client", "sign", "--csr", csr, "--out", outFile)
			if code != exitFailure || !strings.Contains(stderr, tc.wantErr) || out != "" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 mentioning %q", code, out, stderr, tc.wantErr)
			}
			if _, err := os.Stat(outFile); !os.IsNotExist(err) {
				t.Fatalf("refused request left %s: %v", outFile, err)
			}
		})
	}

	// An existing output file is never replaced.
	if code, _, stderr := runCLI(t, env, "client", "sign", "--csr", csr, "--out", certFile); code != exitFailure || !strings.Contains(stderr, "already exists") {
		t.Fatalf("sign over an existing file: exit %d, stderr %q", code, stderr)
	}
	// Not a request at all.
	if code, _, stderr := runCLI(t, env, "client", "sign", "--csr", certFile, "--out", filepath.Join(dir, "x.pem")); code != exitFailure || !strings.Contains(stderr, "CERTIFICATE REQUEST") {
		t.Fatalf("sign of a certificate: exit %d, stderr %q", code, stderr)
	}
}

func TestSignClientCSR_Limits(t *testing.T) {
	ca, err := transport.CreateCA("limits-ca", transport.KindClient, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(mustCSR(t, csrOptions{cn: "app"}))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	id := transport.Identity{Kind: transport.KindClient, Name: "app"}
	if _, _, err := signClientCSR(ca, csr, id, 72*time.Hour, now); err == nil || !strings.Contains(err.Error(), "after the CA") {
		t.Fatalf("validity beyond the CA: %v", err)
	}
	if _, _, err := signClientCSR(ca, csr, transport.Identity{Kind: transport.KindNode, Name: "app"}, time.Hour, now); err == nil {
		t.Fatal("signed a node identity")
	}
	_, cert, err := signClientCSR(ca, csr, id, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	// NotBefore is backdated for clock skew but never before the CA's.
	if cert.NotBefore.Before(ca.Cert.NotBefore) || cert.NotBefore.After(now) {
		t.Fatalf("NotBefore %v (CA %v, now %v)", cert.NotBefore, ca.Cert.NotBefore, now)
	}
	if !bytes.Equal(cert.AuthorityKeyId, ca.Cert.SubjectKeyId) || len(cert.SubjectKeyId) != 20 {
		t.Fatalf("key ids: authority %x (CA %x), subject %x", cert.AuthorityKeyId, ca.Cert.SubjectKeyId, cert.SubjectKeyId)
	}
}

func TestCLI_AccessCommands(t *testing.T) {
	node, env, pki := mustAccessNode(t)

	out := mustRun(t, env, "client", "register", "app", "--group", "payments,batch", "--role", "application", "--group", "payments")
	for _, want := range []string{"name:     app\n", "active:   yes\n", "groups:   payments,batch\n", "roles:    application\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("register output lacks %q:\n%s", want, out)
		}
	}
	if code, _, stderr := runCLI(t, env, "client", "register", "app"); code != exitFailure || !strings.Contains(stderr, "AlreadyExists") {
		t.Fatalf("second register: exit %d, stderr %q", code, stderr)
	}
	mustRun(t, env, "client", "register", "app", "--update", "--group", "payments", "--role", "application")
	mustRun(t, env, "client", "register", "officer", "--role", "security-officer")
	if regs := node.registrations(); len(regs) != 4 || !regs[2].GetUpdate() || !slices.Equal(regs[0].GetGroups(), []string{"payments", "batch"}) {
		t.Fatalf("registrations %v", regs)
	}

	out = mustRun(t, env, "client", "deactivate", "officer")
	if !strings.Contains(out, "active:   no") {
		t.Fatalf("deactivate output:\n%s", out)
	}
	var info map[string]any
	out = mustRun(t, env, "-o", "json", "client", "activate", "officer")
	if err := json.Unmarshal([]byte(out), &info); err != nil || info["active"] != true || info["name"] != "officer" {
		t.Fatalf("activate -o json = %q (%v)", out, err)
	}
	out = mustRun(t, env, "client", "get", "app", "--consistency", "stale")
	if !strings.Contains(out, "groups:   payments\n") {
		t.Fatalf("get output:\n%s", out)
	}
	if code, _, stderr := runCLI(t, env, "client", "get", "ghost"); code != exitFailure || !strings.Contains(stderr, "NotFound") {
		t.Fatalf("get ghost: exit %d, stderr %q", code, stderr)
	}
	out = mustRun(t, env, "client", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[0], "CREATED") ||
		!strings.HasPrefix(lines[1], "app ") || !strings.Contains(lines[2], "security-officer") || !strings.Contains(lines[2], " - ") {
		t.Fatalf("client list:\n%s", out)
	}
	var clients struct{ Clients []map[string]any }
	if err := json.Unmarshal([]byte(mustRun(t, env, "-o", "json", "client", "list")), &clients); err != nil || len(clients.Clients) != 2 {
		t.Fatalf("client list -o json: %v %v", clients, err)
	}

	// Rules.
	out = mustRun(t, env, "acl", "grant", "--client", "app", "--ops", "generate, describe,generate", "--resource", "payments/**")
	if !strings.Contains(out, "id:         rule-1\n") || !strings.Contains(out, "operations: generate,describe\n") ||
		!strings.Contains(out, "created by: client:cli\n") {
		t.Fatalf("grant output:\n%s", out)
	}
	var rule map[string]any
	out = mustRun(t, env, "-o", "json", "acl", "grant", "--group", "payments", "--ops", "get,encrypt", "--resource", "payments/eu/*", "--id", "r-pay")
	if err := json.Unmarshal([]byte(out), &rule); err != nil || rule["id"] != "r-pay" || rule["resource_pattern"] != "payments/eu/*" {
		t.Fatalf("grant -o json = %q (%v)", out, err)
	}
	mustRun(t, env, "acl", "grant", "--group", "secops", "--ops", "acl.manage", "--resource", "**", "--id", "admins")
	out = mustRun(t, env, "acl", "list")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || lines[0] != "ID      SUBJECT         OPERATIONS         RESOURCE       CREATED-BY" ||
		!strings.HasPrefix(lines[2], "r-pay   group:payments  get,encrypt        payments/eu/*  client:cli") {
		t.Fatalf("acl list:\n%s", out)
	}
	out = mustRun(t, env, "acl", "list", "--group", "payments")
	if n := len(strings.Split(strings.TrimSpace(out), "\n")); n != 2 {
		t.Fatalf("acl list --group payments:\n%s", out)
	}

	// Check: allowed through the group rule, denied without a single rule
	// granting both, exit 0 either way.
	out = mustRun(t, env, "acl", "check", "--client", "app", "--op", "get", "--resource", "payments/eu/cards")
	if !strings.HasPrefix(out, "ALLOWED\n") || !strings.Contains(out, "rule:   r-pay\n") || !strings.Contains(out, "request:  client:app get on payments/eu/cards") {
		t.Fatalf("check allowed:\n%s", out)
	}
	out = mustRun(t, env, "acl", "check", "--client", "app", "--op", "get", "--resource", "payments/us/cards")
	if !strings.HasPrefix(out, "DENIED\n") || !strings.Contains(out, "reason: client app has no grant for get on payments/us/cards") ||
		!strings.Contains(out, "rules:") {
		t.Fatalf("check denied:\n%s", out)
	}
	var check map[string]any
	out = mustRun(t, env, "-o", "json", "acl", "check", "--client", "officer", "--op", "acl.manage")
	if err := json.Unmarshal([]byte(out), &check); err != nil || check["allowed"] != true || check["rule"] != "role:security-officer" {
		t.Fatalf("check -o json = %q (%v)", out, err)
	}

	out = mustRun(t, env, "acl", "revoke", "rule-1")
	if out != "revoked rule rule-1\n" {
		t.Fatalf("acl revoke printed %q", out)
	}
	if code, _, stderr := runCLI(t, env, "acl", "revoke", "rule-1"); code != exitFailure || !strings.Contains(stderr, "NotFound") {
		t.Fatalf("second acl revoke: exit %d, stderr %q", code, stderr)
	}

	// Certificate revocation by serial (any accepted spelling) and by file.
	out = mustRun(t, env, "client", "revoke-cert", "--serial", "0x00:AB:cd", "--reason", "key lost")
	if out != "revoked certificate abcd\n" {
		t.Fatalf("revoke-cert printed %q", out)
	}
	out = mustRun(t, env, "acl", "check", "--client", "app", "--op", "get", "--resource", "payments/eu/cards", "--cert-serial", "abcd")
	if !strings.HasPrefix(out, "DENIED\n") || !strings.Contains(out, "certificate abcd is revoked") {
		t.Fatalf("check of a revoked certificate:\n%s", out)
	}
	appCert := filepath.Join(pki, "cli.pem")
	serial := authz.FormatSerial(mustReadCert(t, appCert).SerialNumber)
	out = mustRun(t, env, "client", "revoke-cert", "--cert-file", appCert)
	if out != "revoked certificate "+serial+" (client:cli)\n" {
		t.Fatalf("revoke-cert --cert-file printed %q", out)
	}
	if revs := node.revocations(); len(revs) != 2 || revs[0].GetSerial() != "abcd" || revs[0].GetReason() != "key lost" || revs[1].GetSerial() != serial {
		t.Fatalf("revocations %v", revs)
	} else if b, _ := pem.Decode(revs[1].GetCertificatePem()); len(revs[0].GetCertificatePem()) != 0 || b == nil || !bytes.Equal(b.Bytes, mustReadCert(t, appCert).Raw) {
		t.Fatalf("revocations by serial and by file sent certificates %q and %q; want none, then the file's", revs[0].GetCertificatePem(), revs[1].GetCertificatePem())
	}
}

func TestCLI_IssueAndSignRegister(t *testing.T) {
	node, env, pki := mustAccessNode(t)
	caCert := mustLoadCACert(t, pki)
	dir := t.TempDir()

	out := mustRun(t, env, "client", "issue", "svc", "--out", dir, "--group", "payments", "--role", "application")
	checkClientCert(t, mustReadCert(t, filepath.Join(dir, "svc.pem")), caCert, "svc")
	if !strings.Contains(out, "registered:  yes (groups: payments; roles: application)") {
		t.Fatalf("issue output:\n%s", out)
	}
	regs := node.registrations()
	if len(regs) != 1 || regs[0].GetName() != "svc" || !slices.Equal(regs[0].GetGroups(), []string{"payments"}) ||
		!slices.Equal(regs[0].GetRoles(), []string{"application"}) || regs[0].GetUpdate() {
		t.Fatalf("registrations %v", regs)
	}

	// Registration failing after the files are written says how to finish.
	renew := t.TempDir()
	code, _, stderr := runCLI(t, env, "client", "issue", "svc", "--out", renew)
	if code != exitFailure || !strings.Contains(stderr, "AlreadyExists") || !strings.Contains(stderr, "coffer client register svc") {
		t.Fatalf("issue for a registered client: exit %d, stderr %q", code, stderr)
	}
	if m := fileMode(t, filepath.Join(renew, "svc-key.pem")); m != 0o600 {
		t.Fatalf("key mode %v", m)
	}

	csr := writeCSR(t, dir, "edge.csr", mustCSR(t, csrOptions{uris: []string{"coffer://client/edge"}}))
	var got issued
	out = mustRun(t, env, "-o", "json", "client", "sign", "--csr", csr, "--out", filepath.Join(dir, "edge.pem"),
		"--register", "--group", "edge")
	if err := json.Unmarshal([]byte(out), &got); err != nil || !got.Registered || got.Identity != "client:edge" {
		t.Fatalf("sign --register -o json = %q (%v)", out, err)
	}
	var info map[string]any
	if err := json.Unmarshal(got.Client, &info); err != nil || info["name"] != "edge" {
		t.Fatalf("registered client %s (%v)", got.Client, err)
	}
	if regs := node.registrations(); len(regs) != 3 || regs[2].GetName() != "edge" || !slices.Equal(regs[2].GetGroups(), []string{"edge"}) {
		t.Fatalf("registrations %v", regs)
	}
}
