package p11cred

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"

	"github.com/miekg/pkcs11"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/hsmwrap/hsmtest"
	"github.com/coffer-kms/coffer/msgsig"
	"github.com/coffer-kms/coffer/transport"
)

// The tests run against a real SoftHSM2 (hsmtest.StartSoftHSM); each test
// takes tokens of its own.

var softhsm *hsmtest.SoftHSM

func TestMain(m *testing.M) {
	var err error
	if softhsm, err = hsmtest.StartSoftHSM("p11cred-test", 16); err != nil {
		fmt.Fprintln(os.Stderr, "p11cred tests:", err)
		os.Exit(1)
	}
	code := m.Run()
	softhsm.Close()
	os.Exit(code)
}

// mustConfig returns a Config for a fresh token, key label "app", PIN from
// the token's file.
func mustConfig(t testing.TB) Config {
	t.Helper()
	tok := softhsm.Token(t)
	cfg := DefaultConfig()
	cfg.Module = softhsm.Module
	cfg.TokenLabel = tok.Label
	cfg.KeyLabel = "app"
	cfg.PINFile = tok.PINFile
	return cfg
}

// mustProvision generates the key and cache secret for cfg.
func mustProvision(t testing.TB, cfg Config) crypto.PublicKey {
	t.Helper()
	pub, err := GenerateKey(cfg)
	if err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	return pub
}

func mustOpen(t testing.TB, cfg Config) *Credential {
	t.Helper()
	c, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// testPKI is a deployment's node and client CAs in a temp dir.
type testPKI struct {
	dir              string
	nodes, clients   *transport.CA
	caFile, clientCA string
}

func mustPKI(t testing.TB) testPKI {
	t.Helper()
	p := testPKI{dir: t.TempDir()}
	var err error
	if p.nodes, err = transport.CreateCA("p11cred test nodes", transport.KindNode, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if p.clients, err = transport.CreateCA("p11cred test clients", transport.KindClient, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	p.caFile, p.clientCA = filepath.Join(p.dir, "node-ca.pem"), filepath.Join(p.dir, "client-ca.pem")
	if err := p.nodes.WriteFiles(p.caFile, filepath.Join(p.dir, "node-ca-key.pem")); err != nil {
		t.Fatal(err)
	}
	if err := p.clients.WriteFiles(p.clientCA, filepath.Join(p.dir, "client-ca-key.pem")); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustCertify makes a CSR in the token for name and has the client CA sign
// it, returning the certificate PEM.
func (p testPKI) mustCertify(t testing.TB, c *Credential, name string) []byte {
	t.Helper()
	csrPEM, err := c.CreateCSR(name)
	if err != nil {
		t.Fatalf("CreateCSR: %v", err)
	}
	block, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatalf("the token-signed CSR does not verify: %v", err)
	}
	certPEM, err := p.clients.Sign(transport.IssueRequest{Identity: transport.Identity{Kind: transport.KindClient, Name: name}, Validity: time.Hour}, csr.PublicKey, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return certPEM
}

// serveNode starts a loopback gRPC server (the health service) with a node
// certificate from p, requiring client certificates, and returns its
// address.
func (p testPKI) serveNode(t testing.TB) string {
	t.Helper()
	certPEM, keyPEM, err := p.nodes.Issue(transport.IssueRequest{Identity: transport.Identity{Kind: transport.KindNode, Name: "n1"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	conf := transport.TLSConfig{CAFile: p.caFile, ClientCAFile: p.clientCA,
		CertFile: filepath.Join(p.dir, "n1.pem"), KeyFile: filepath.Join(p.dir, "n1-key.pem")}
	if err := transport.WriteKeyPair(conf.CertFile, conf.KeyFile, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	serverTLS, err := conf.ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(transport.ServerOptions(serverTLS, transport.DefaultGRPCLimits()),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			id, err := transport.IdentityFromContext(ctx)
			if err != nil || id != (transport.Identity{Kind: transport.KindClient, Name: "app"}) {
				return nil, fmt.Errorf("caller %v (%v), want client:app", id, err)
			}
			return h(ctx, req)
		}))
	gs := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

func TestGenerateKey_KeyStaysInToken(t *testing.T) {
	cfg := mustConfig(t)
	pub := mustProvision(t, cfg)
	if k, ok := pub.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("GenerateKey returned %T, want an ECDSA P-256 key", pub)
	}
	mod, err := hsmwrap.OpenModule(cfg.Module)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	ctx := mod.Ctx()
	slot, err := mod.FindToken(cfg.TokenLabel)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.CloseSession(s)
	if err := hsmwrap.LoginUser(ctx, s, cfg.PINFile, ""); err != nil {
		t.Fatal(err)
	}
	for _, o := range []struct {
		class uint
		label string
	}{{pkcs11.CKO_PRIVATE_KEY, "app"}, {pkcs11.CKO_SECRET_KEY, "app-cache"}} {
		hs, err := hsmwrap.FindObjects(ctx, s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, o.class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, o.label)}, 2)
		if err != nil || len(hs) != 1 {
			t.Fatalf("%s: %d objects (%v), want 1", o.label, len(hs), err)
		}
		attrs, err := ctx.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil)})
		if err != nil {
			t.Fatal(err)
		}
		v := attrMap(attrs)
		if v[pkcs11.CKA_SENSITIVE][0] != 1 || v[pkcs11.CKA_EXTRACTABLE][0] != 0 || v[pkcs11.CKA_NEVER_EXTRACTABLE][0] != 1 {
			t.Fatalf("%s: sensitive %v, extractable %v, never extractable %v", o.label, v[pkcs11.CKA_SENSITIVE], v[pkcs11.CKA_EXTRACTABLE], v[pkcs11.CKA_NEVER_EXTRACTABLE])
		}
		if _, err := ctx.GetAttributeValue(s, hs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil {
			t.Fatalf("%s: CKA_VALUE could be read", o.label)
		}
	}
	if _, err := GenerateKey(cfg); !errors.Is(err, ErrExists) {
		t.Fatalf("GenerateKey again = %v, want ErrExists", err)
	}
	cfg.KeyLabel, cfg.CacheKeyLabel = "other", "app-cache"
	if _, err := GenerateKey(cfg); !errors.Is(err, ErrExists) {
		t.Fatalf("GenerateKey over an existing cache secret = %v, want ErrExists", err)
	}
}

func TestSigner_SignaturesVerifyWithCertificateKey(t *testing.T) {
	cfg := mustConfig(t)
	mustProvision(t, cfg)
	c := mustOpen(t, cfg)
	p := mustPKI(t)
	certPEM := p.mustCertify(t, c, "app")
	cfg.CertFile = filepath.Join(t.TempDir(), "app.pem")
	if err := os.WriteFile(cfg.CertFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	c2 := mustOpen(t, cfg)
	pair, err := c2.Certificate()
	if err != nil {
		t.Fatalf("Certificate: %v", err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		t.Fatalf("PrivateKey is %T, not a crypto.Signer", pair.PrivateKey)
	}
	pub := pair.Leaf.PublicKey.(*ecdsa.PublicKey)
	// Concurrent signers, more than the session pool holds.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				d := sha256.Sum256(fmt.Appendf(nil, "message %d/%d", g, i))
				sig, err := signer.Sign(rand.Reader, d[:], crypto.SHA256)
				if err != nil {
					errs <- err
					return
				}
				if !ecdsa.VerifyASN1(pub, d[:], sig) {
					errs <- fmt.Errorf("signature %d/%d does not verify with the certificate's key", g, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// The client library signs its requests with this key (msgsig): a
	// statement made in the token verifies as a node checks it.
	ms, err := msgsig.NewSigner(pair)
	if err != nil {
		t.Fatalf("msgsig.NewSigner: %v", err)
	}
	req := &cofferv1.GetKeyRequest{Gkid: "k1-token"}
	rs, err := ms.SignRequest(cofferv1.KeyService_GetKey_FullMethodName, "req-token", time.Now(), req)
	if err != nil {
		t.Fatalf("SignRequest: %v", err)
	}
	if _, err := msgsig.VerifyRequest(rs, pair.Leaf, cofferv1.KeyService_GetKey_FullMethodName, "req-token", req, time.Now()); err != nil {
		t.Fatalf("a request signed in the token: %v", err)
	}
	if _, err := signer.Sign(nil, []byte("short"), crypto.SHA256); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Sign of a short digest = %v, want ErrInvalidArgument", err)
	}
	c2.Close()
	d := sha256.Sum256([]byte("after close"))
	if _, err := signer.Sign(nil, d[:], crypto.SHA256); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sign after Close = %v, want ErrClosed", err)
	}
}

func TestCertificate_FromTokenObject(t *testing.T) {
	cfg := mustConfig(t)
	mustProvision(t, cfg)
	c := mustOpen(t, cfg)
	if _, err := c.Certificate(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Certificate with none stored = %v, want ErrNotFound", err)
	}
	p := mustPKI(t)
	if err := c.StoreCertificate(p.mustCertify(t, c, "app")); err != nil {
		t.Fatalf("StoreCertificate: %v", err)
	}
	renewed := p.mustCertify(t, c, "app")
	if err := c.StoreCertificate(renewed); err != nil {
		t.Fatalf("StoreCertificate (renewal): %v", err)
	}
	c2 := mustOpen(t, cfg)
	pair, err := c2.Certificate()
	if err != nil {
		t.Fatalf("Certificate: %v", err)
	}
	block, _ := pem.Decode(renewed)
	if len(pair.Certificate) != 1 || !bytes.Equal(pair.Certificate[0], block.Bytes) {
		t.Fatal("Certificate did not return the renewed certificate")
	}
	// A certificate for another key is refused.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherPEM, err := p.clients.Sign(transport.IssueRequest{Identity: transport.Identity{Kind: transport.KindClient, Name: "app"}, Validity: time.Hour}, other.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.StoreCertificate(otherPEM); !errors.Is(err, ErrMismatch) {
		t.Fatalf("StoreCertificate of another key's certificate = %v, want ErrMismatch", err)
	}
	cfg.CertFile = filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(cfg.CertFile, otherPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := mustOpen(t, cfg).Certificate(); !errors.Is(err, ErrMismatch) {
		t.Fatalf("Certificate with another key's certificate file = %v, want ErrMismatch", err)
	}
}

func TestTLS_MutualHandshakeOverGRPC(t *testing.T) {
	cfg := mustConfig(t)
	mustProvision(t, cfg)
	p := mustPKI(t)
	if err := mustOpen(t, cfg).StoreCertificate(p.mustCertify(t, mustOpen(t, cfg), "app")); err != nil {
		t.Fatal(err)
	}
	addr := p.serveNode(t)
	c := mustOpen(t, cfg)
	pair, err := c.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	tlsConf, err := transport.TLSConfig{CAFile: p.caFile, ClientCAFile: p.clientCA}.ClientTLSWithCertificate(pair)
	if err != nil {
		t.Fatalf("ClientTLSWithCertificate: %v", err)
	}
	// Several connections at once, each with its own handshake signed in
	// the token.
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := transport.Dial(addr, tlsConf.Clone())
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				errs <- fmt.Errorf("call over mTLS with the token key: %w", err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestDeriveKey_StablePerSecretAndInfo(t *testing.T) {
	cfg := mustConfig(t)
	mustProvision(t, cfg)
	cfg2 := cfg
	cfg2.KeyLabel = "app2"
	mustProvision(t, cfg2)

	c := mustOpen(t, cfg)
	k1, err := c.DeriveKey([]byte("cache-file v1"))
	if err != nil {
		t.Fatalf("DeriveKey: %v", err)
	}
	if len(k1) != DerivedKeyLen {
		t.Fatalf("DeriveKey returned %d bytes", len(k1))
	}
	c.Close()
	again, err := mustOpen(t, cfg).DeriveKey([]byte("cache-file v1"))
	if err != nil || !bytes.Equal(again, k1) {
		t.Fatalf("DeriveKey in a new session = %x (%v), want %x", again, err, k1)
	}
	otherInfo, err := mustOpen(t, cfg).DeriveKey([]byte("cache-file v2"))
	if err != nil || bytes.Equal(otherInfo, k1) {
		t.Fatalf("DeriveKey of another info = %x (%v), same as the first", otherInfo, err)
	}
	otherLabel, err := mustOpen(t, cfg2).DeriveKey([]byte("cache-file v1"))
	if err != nil || bytes.Equal(otherLabel, k1) {
		t.Fatalf("DeriveKey under another label = %x (%v), same as the first", otherLabel, err)
	}
	if _, err := mustOpen(t, cfg).DeriveKey(make([]byte, MaxInfoLen+1)); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("DeriveKey of an over-long info = %v, want ErrInvalidArgument", err)
	}
	// A key without its cache secret opens (it can still sign), but
	// DeriveKey says what is missing.
	cfg.CacheKeyLabel = "absent"
	if _, err := mustOpen(t, cfg).DeriveKey(nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeriveKey without a cache secret = %v, want ErrNotFound", err)
	}
	// The function has the shape client.Config.CacheFileKey takes.
	var ccfg client.Config
	ccfg.CacheFileKey = c.DeriveKey
}

func TestOpen_Errors(t *testing.T) {
	cfg := mustConfig(t)
	mustProvision(t, cfg)
	dir := t.TempDir()
	wrongPIN := filepath.Join(dir, "wrong")
	if err := os.WriteFile(wrongPIN, []byte("not-the-pin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   error
	}{
		{"wrong PIN", func(c *Config) { c.PINFile = wrongPIN }, hsmwrap.ErrSealed},
		{"missing PIN file", func(c *Config) { c.PINFile = filepath.Join(dir, "absent") }, ErrPIN},
		{"unset PIN variable", func(c *Config) { c.PINFile, c.PINEnv = "", "COFFER_TEST_UNSET_PIN" }, ErrPIN},
		{"no PIN source", func(c *Config) { c.PINFile, c.PINEnv = "", "" }, ErrPIN},
		{"missing key", func(c *Config) { c.KeyLabel = "nobody" }, ErrNotFound},
		{"missing module", func(c *Config) { c.Module = filepath.Join(dir, "libnothing.so") }, ErrUnavailable},
		{"not a module", func(c *Config) { c.Module = wrongPIN }, ErrUnavailable},
		{"missing token", func(c *Config) { c.TokenLabel = "no-such-token" }, ErrUnavailable},
		{"no module", func(c *Config) { c.Module = "" }, ErrInvalidConfig},
		{"no key label", func(c *Config) { c.KeyLabel = "" }, ErrInvalidConfig},
		{"same labels", func(c *Config) { c.CacheKeyLabel = c.KeyLabel }, ErrInvalidConfig},
		{"no sessions", func(c *Config) { c.Sessions = 0 }, ErrInvalidConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			tc.mutate(&c)
			cred, err := Open(c)
			if err == nil {
				cred.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open = %v, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), "not-the-pin") || strings.Contains(err.Error(), "master key") {
				t.Fatalf("Open = %q: shows the PIN or speaks of a master key", err)
			}
			t.Logf("%v", err)
		})
	}
	// The PIN from the environment.
	t.Setenv("COFFER_TEST_PIN", mustReadPIN(t, cfg.PINFile))
	c := cfg
	c.PINFile, c.PINEnv = "", "COFFER_TEST_PIN"
	mustOpen(t, c)
}

func TestCredential_RecoversLostSessions(t *testing.T) {
	cfg := mustConfig(t)
	mustProvision(t, cfg)
	c := mustOpen(t, cfg)
	d := sha256.Sum256([]byte("before"))
	if _, err := c.Signer().Sign(nil, d[:], crypto.SHA256); err != nil {
		t.Fatal(err)
	}
	before, err := c.DeriveKey([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	// Every session of the token closes (as when a device is reset), which
	// also logs the application out.
	mod, err := hsmwrap.OpenModule(cfg.Module)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	slot, err := mod.FindToken(cfg.TokenLabel)
	if err != nil {
		t.Fatal(err)
	}
	if err := mod.Ctx().CloseAllSessions(slot); err != nil {
		t.Fatal(err)
	}
	sig, err := c.Signer().Sign(nil, d[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign after the sessions were lost: %v", err)
	}
	if !ecdsa.VerifyASN1(c.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature after recovery does not verify")
	}
	if after, err := c.DeriveKey([]byte("x")); err != nil || !bytes.Equal(after, before) {
		t.Fatalf("DeriveKey after recovery = %x (%v), want %x", after, err, before)
	}
	c.mu.RLock()
	gen := c.gen
	c.mu.RUnlock()
	if gen != 1 {
		t.Fatalf("logged in again %d times, want once", gen)
	}
}

func TestCredential_RefusedPINIsNotRetried(t *testing.T) {
	cfg := mustConfig(t)
	mustProvision(t, cfg)
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(mustReadPIN(t, cfg.PINFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.PINFile = pinFile
	c := mustOpen(t, cfg)
	// The PIN file changes under the running credential, then the login
	// is lost.
	if err := os.WriteFile(pinFile, []byte("wrong-pin"), 0o600); err != nil {
		t.Fatal(err)
	}
	mod, err := hsmwrap.OpenModule(cfg.Module)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	slot, err := mod.FindToken(cfg.TokenLabel)
	if err != nil {
		t.Fatal(err)
	}
	if err := mod.Ctx().CloseAllSessions(slot); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("x"))
	for i := range 3 {
		if _, err := c.Signer().Sign(nil, d[:], crypto.SHA256); !errors.Is(err, ErrPIN) {
			t.Fatalf("Sign %d after the PIN changed = %v, want ErrPIN", i, err)
		}
	}
	c.mu.RLock()
	gen := c.gen
	c.mu.RUnlock()
	if gen != 1 {
		t.Fatalf("tried to log in %d times with a refused PIN, want once", gen)
	}
}

func mustReadPIN(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(bytes.TrimSuffix(b, []byte("\n")))
}

func TestSigner_RSAKey(t *testing.T) {
	cfg := mustConfig(t)
	cfg.KeyLabel = "rsa"
	mod, err := hsmwrap.OpenModule(cfg.Module)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	ctx := mod.Ctx()
	slot, err := mod.FindToken(cfg.TokenLabel)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.CloseSession(s)
	if err := hsmwrap.LoginUser(ctx, s, cfg.PINFile, ""); err != nil {
		t.Fatal(err)
	}
	id := []byte("rsa-key-id")
	if _, _, err := ctx.GenerateKeyPair(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "rsa"), pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, 2048), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true), pkcs11.NewAttribute(pkcs11.CKA_LABEL, "rsa"),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		}); err != nil {
		t.Fatalf("generating an RSA key pair: %v", err)
	}
	c := mustOpen(t, cfg)
	pub, ok := c.Public().(*rsa.PublicKey)
	if !ok || pub.N.BitLen() != 2048 {
		t.Fatalf("Public = %T", c.Public())
	}
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		hh := h.New()
		hh.Write([]byte("message"))
		d := hh.Sum(nil)
		pss := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h}
		sig, err := c.Signer().Sign(nil, d, pss)
		if err != nil {
			t.Fatalf("%v PSS: %v", h, err)
		}
		if err := rsa.VerifyPSS(pub, h, d, sig, pss); err != nil {
			t.Fatalf("%v PSS signature does not verify: %v", h, err)
		}
		sig, err = c.Signer().Sign(nil, d, h)
		if err != nil {
			t.Fatalf("%v PKCS #1 v1.5: %v", h, err)
		}
		if err := rsa.VerifyPKCS1v15(pub, h, d, sig); err != nil {
			t.Fatalf("%v PKCS #1 v1.5 signature does not verify: %v", h, err)
		}
	}
}

// The benchmarks compare an ECDSA P-256 signature (TLS 1.3's
// CertificateVerify, a request signature) made in SoftHSM2 with one made by
// a key in process memory, and time DeriveKey.

func BenchmarkSign_TokenP256(b *testing.B) {
	cfg := mustConfig(b)
	mustProvision(b, cfg)
	benchSign(b, mustOpen(b, cfg).Signer())
}

func BenchmarkSign_SoftwareP256(b *testing.B) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	benchSign(b, k)
}

func benchSign(b *testing.B, k crypto.Signer) {
	d := sha256.Sum256([]byte("request"))
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := k.Sign(rand.Reader, d[:], crypto.SHA256); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func BenchmarkDeriveKey_Token(b *testing.B) {
	cfg := mustConfig(b)
	mustProvision(b, cfg)
	c := mustOpen(b, cfg)
	info := []byte("coffer cache file v1")
	for b.Loop() {
		if _, err := c.DeriveKey(info); err != nil {
			b.Fatal(err)
		}
	}
}
