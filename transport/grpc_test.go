package transport

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// identityRecorder is a unary interceptor that records the caller identity
// of every RPC that reaches the server.
type identityRecorder struct {
	mu   sync.Mutex
	seen []string
}

func (r *identityRecorder) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id, err := IdentityFromContext(ctx)
	r.mu.Lock()
	if err != nil {
		r.seen = append(r.seen, "error: "+err.Error())
	} else {
		r.seen = append(r.seen, id.String())
	}
	r.mu.Unlock()
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return handler(ctx, req)
}

func (r *identityRecorder) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

// startHealthServer serves the standard health service over mTLS on a
// loopback port and returns its address.
func startHealthServer(t *testing.T, serverTLS *tls.Config, rec *identityRecorder) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(ServerOptions(serverTLS, DefaultGRPCLimits()), grpc.ChainUnaryInterceptor(rec.intercept))
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return ln.Addr().String()
}

func healthCheck(t *testing.T, addr string, clientTLS *tls.Config) error {
	t.Helper()
	cc, err := Dial(addr, clientTLS)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer func() { _ = cc.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health status %v", resp.GetStatus())
	}
	return nil
}

func TestGRPC_ClientCertAccepted(t *testing.T) {
	pki := mustPKI(t, "ca")
	rec := &identityRecorder{}
	addr := startHealthServer(t, mustServerTLS(t, pki.mustIssue(t, Identity{KindNode, "n1"}, loopback)), rec)

	if err := healthCheck(t, addr, mustClientTLS(t, pki.mustIssue(t, Identity{KindClient, "x"}))); err != nil {
		t.Fatalf("client:x health check: %v", err)
	}
	// A node may call another node's gRPC service too (forwarding).
	if err := healthCheck(t, addr, mustClientTLS(t, pki.mustIssue(t, Identity{KindNode, "n2"}))); err != nil {
		t.Fatalf("node:n2 health check: %v", err)
	}
	if got := rec.calls(); len(got) != 2 || got[0] != "client:x" || got[1] != "node:n2" {
		t.Fatalf("server saw %q; want [client:x node:n2]", got)
	}
}

func TestGRPC_ForeignCARefused(t *testing.T) {
	pki := mustPKI(t, "ca")
	foreign := mustPKI(t, "foreign")
	rec := &identityRecorder{}
	addr := startHealthServer(t, mustServerTLS(t, pki.mustIssue(t, Identity{KindNode, "n1"}, loopback)), rec)

	// Trusts the right CA but presents a certificate from another one.
	conf := &tls.Config{
		MinVersion:           tls.VersionTLS13,
		RootCAs:              poolOf(pki.ca),
		GetClientCertificate: alwaysPresent(mustKeyPair(t, foreign.mustIssue(t, Identity{KindClient, "x"}))),
	}
	err := healthCheck(t, addr, conf)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("foreign client cert: err = %v; want Unavailable", err)
	}
	if got := rec.calls(); len(got) != 0 {
		t.Fatalf("refused caller reached the service: %q", got)
	}
}

func TestGRPC_NoClientCertRefused(t *testing.T) {
	pki := mustPKI(t, "ca")
	rec := &identityRecorder{}
	addr := startHealthServer(t, mustServerTLS(t, pki.mustIssue(t, Identity{KindNode, "n1"}, loopback)), rec)

	conf := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: poolOf(pki.ca)}
	if err := healthCheck(t, addr, conf); status.Code(err) != codes.Unavailable {
		t.Fatalf("no client cert: err = %v; want Unavailable", err)
	}
	if got := rec.calls(); len(got) != 0 {
		t.Fatalf("refused caller reached the service: %q", got)
	}
}

func TestGRPC_ClientRefusesNonNodeServer(t *testing.T) {
	pki := mustPKI(t, "ca")
	rec := &identityRecorder{}
	// A server certificate with the right usages but no Coffer identity,
	// signed by the trusted CA.
	rogue := signRawServer(t, pki.ca, loopback)
	serverTLS := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{rogue},
		ClientCAs:    poolOf(pki.ca),
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
	addr := startHealthServer(t, serverTLS, rec)
	err := healthCheck(t, addr, mustClientTLS(t, pki.mustIssue(t, Identity{KindClient, "x"})))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("server without node identity: err = %v; want Unavailable", err)
	}
}

func TestIdentityFromContext_NoPeer(t *testing.T) {
	if _, err := IdentityFromContext(context.Background()); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("err = %v; want ErrNoIdentity", err)
	}
}

func TestTLSConfig_Checks(t *testing.T) {
	pki := mustPKI(t, "ca")
	foreign := mustPKI(t, "foreign")
	client := pki.mustIssue(t, Identity{KindClient, "c"})
	node := pki.mustIssue(t, Identity{KindNode, "n1"}, loopback)

	for name, c := range map[string]TLSConfig{
		"no CA":   {CertFile: node.CertFile, KeyFile: node.KeyFile},
		"no cert": {CAFile: node.CAFile, KeyFile: node.KeyFile},
		"no key":  {CAFile: node.CAFile, CertFile: node.CertFile},
	} {
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate = %v", name, err)
		}
		if _, err := c.ServerTLS(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: ServerTLS = %v", name, err)
		}
	}
	if err := node.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}

	// A client certificate cannot serve.
	if _, err := client.ServerTLS(); !errors.Is(err, ErrUntrusted) {
		t.Errorf("ServerTLS with client cert: %v; want ErrUntrusted", err)
	}
	// A node needs the client CA, and a different one from the node CA.
	noClients := node
	noClients.ClientCAFile = ""
	if _, err := noClients.ServerTLS(); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("ServerTLS without a client CA: %v; want ErrInvalidConfig", err)
	}
	if _, err := noClients.ClientTLS(); err != nil {
		t.Errorf("ClientTLS needs no client CA: %v", err)
	}
	sameCA := node
	sameCA.ClientCAFile = node.CAFile
	if _, err := sameCA.ServerTLS(); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "different CA") {
		t.Errorf("ServerTLS with one CA for both kinds: %v; want ErrInvalidConfig", err)
	}
	// A certificate must chain to the configured CA.
	wrongCA := TLSConfig{CAFile: foreign.caFile, ClientCAFile: pki.clientCAFile, CertFile: node.CertFile, KeyFile: node.KeyFile}
	if _, err := wrongCA.ServerTLS(); !errors.Is(err, ErrUntrusted) {
		t.Errorf("ServerTLS with foreign CA: %v; want ErrUntrusted", err)
	}
	if _, err := wrongCA.ClientTLS(); !errors.Is(err, ErrUntrusted) {
		t.Errorf("ClientTLS with foreign CA: %v; want ErrUntrusted", err)
	}
	// Key and certificate must match.
	mismatched := TLSConfig{CAFile: node.CAFile, CertFile: node.CertFile, KeyFile: client.KeyFile}
	if _, err := mismatched.ClientTLS(); !errors.Is(err, ErrBadPEM) {
		t.Errorf("mismatched pair: %v; want ErrBadPEM", err)
	}

	s := mustServerTLS(t, node)
	if s.MinVersion != tls.VersionTLS13 || s.ClientAuth != tls.RequireAndVerifyClientCert || s.ClientCAs == nil {
		t.Errorf("server config: min=%x auth=%v", s.MinVersion, s.ClientAuth)
	}
	c := mustClientTLS(t, client)
	if c.MinVersion != tls.VersionTLS13 || c.RootCAs == nil || len(c.Certificates) != 1 || c.InsecureSkipVerify {
		t.Errorf("client config: min=%x", c.MinVersion)
	}
}

func TestDial_Rejects(t *testing.T) {
	if _, err := Dial("127.0.0.1:1", nil); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("nil TLS: %v", err)
	}
	if _, err := Dial("127.0.0.1:1", &tls.Config{InsecureSkipVerify: true}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("insecure TLS: %v", err)
	}
	if _, err := Dial("", &tls.Config{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("empty target: %v", err)
	}
}

// A node identity is accepted only from the node CA, whatever the client
// CA's own certificate allows: here the client CA is an external one with
// no name constraints, which signs a certificate claiming node:n2.
func TestGRPC_NodeIdentityFromClientCARefused(t *testing.T) {
	pki := mustPKI(t, "ca")
	external := mustUnconstrainedCA(t, "external clients")
	pki.clients = external
	if err := os.Remove(pki.clientCAFile); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pki.clientCAFile, external.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	rec := &identityRecorder{}
	addr := startHealthServer(t, mustServerTLS(t, pki.mustIssue(t, Identity{KindNode, "n1"}, loopback)), rec)

	if err := healthCheck(t, addr, mustClientTLS(t, pki.mustIssueBy(t, external, Identity{KindClient, "x"}))); err != nil {
		t.Fatalf("client from the client CA: %v", err)
	}
	forged := pki.mustIssueBy(t, external, Identity{KindNode, "n2"})
	conf := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: poolOf(pki.ca),
		GetClientCertificate: alwaysPresent(mustKeyPair(t, forged))}
	if err := healthCheck(t, addr, conf); status.Code(err) != codes.Unavailable {
		t.Fatalf("node identity from the client CA: err = %v; want Unavailable", err)
	}
	// The refusal happened in the handshake, with a reason.
	srv := mustServerTLS(t, pki.mustIssue(t, Identity{KindNode, "n1"}, loopback))
	leaf := mustParseCert(t, mustReadFile(t, forged.CertFile))
	err := srv.VerifyConnection(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf},
		VerifiedChains: [][]*x509.Certificate{{leaf, external.Cert}}})
	if !errors.Is(err, ErrWrongCA) {
		t.Fatalf("VerifyConnection = %v; want ErrWrongCA", err)
	}
	if got := rec.calls(); len(got) != 1 || got[0] != "client:x" {
		t.Fatalf("server saw %q; want only client:x", got)
	}
}

// signerOnly hides a private key's type, as a key in a token is only a
// crypto.Signer.
type signerOnly struct{ crypto.Signer }

func TestClientTLSWithCertificate(t *testing.T) {
	pki := mustPKI(t, "ca")
	rec := &identityRecorder{}
	addr := startHealthServer(t, mustServerTLS(t, pki.mustIssue(t, Identity{KindNode, "n1"}, loopback)), rec)
	pair := mustKeyPair(t, pki.mustIssue(t, Identity{KindClient, "tok"}))
	pair.PrivateKey = signerOnly{pair.PrivateKey.(crypto.Signer)}

	conf, err := TLSConfig{CAFile: pki.caFile, ClientCAFile: pki.clientCAFile}.ClientTLSWithCertificate(pair)
	if err != nil {
		t.Fatalf("ClientTLSWithCertificate: %v", err)
	}
	if conf.MinVersion != tls.VersionTLS13 || conf.Certificates[0].Leaf == nil {
		t.Fatalf("config: min version %x, leaf %v", conf.MinVersion, conf.Certificates[0].Leaf)
	}
	if err := healthCheck(t, addr, conf); err != nil {
		t.Fatalf("health check with a signer-only key: %v", err)
	}
	if got := rec.calls(); len(got) != 1 || got[0] != "client:tok" {
		t.Fatalf("server saw %q; want [client:tok]", got)
	}

	// The same checks as a loaded pair: a certificate from another client
	// CA, a missing CA file, a missing certificate.
	other := mustPKI(t, "other")
	foreign := mustKeyPair(t, other.mustIssue(t, Identity{KindClient, "tok"}))
	if _, err := (TLSConfig{CAFile: pki.caFile, ClientCAFile: pki.clientCAFile}).ClientTLSWithCertificate(foreign); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("foreign certificate: %v, want ErrUntrusted", err)
	}
	if _, err := (TLSConfig{}).ClientTLSWithCertificate(pair); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("no CA file: %v, want ErrInvalidConfig", err)
	}
	if _, err := (TLSConfig{CAFile: pki.caFile}).ClientTLSWithCertificate(tls.Certificate{}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("no certificate: %v, want ErrInvalidConfig", err)
	}
}
