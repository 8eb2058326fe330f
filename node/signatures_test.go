package node

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/msgsig"
	"github.com/coffer-kms/coffer/transport"
)

// clientTLS returns the client TLS configuration of a new client name.
func (tc *testCluster) clientTLSOf(name string) (transport.TLSConfig, *tls.Config) {
	tc.t.Helper()
	conf := tc.issue(transport.Identity{Kind: transport.KindClient, Name: name})
	tlsConf, err := conf.ClientTLS()
	if err != nil {
		tc.t.Fatal(err)
	}
	return conf, tlsConf
}

func mustSigner(t *testing.T, tlsConf *tls.Config) *msgsig.Signer {
	t.Helper()
	s, err := msgsig.NewSigner(tlsConf.Certificates[0])
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wantUnauthenticated(t *testing.T, what string, err error, says string) {
	t.Helper()
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), says) {
		t.Fatalf("%s: %v, want Unauthenticated saying %q", what, err, says)
	}
}

// Requests that release key material or change state must be signed by the
// caller's certificate key; the node that decides checks the signature (the
// leader, for a forwarded write, so no member can act as a client that did
// not ask), and the entries keep the statements, which verify offline with
// the client's certificate.
func TestNode_SignedRequests(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	l, f := tc.waitLeader(), tc.follower()
	appConf, appTLS := tc.clientTLSOf("app")
	app := tc.identityFrom(appConf, appTLS)
	_, eveTLS := tc.clientTLSOf("eve")

	// Signed by the client's interceptor: a write through a follower
	// (forwarded to the leader) and a read.
	gen, err := app.keys[f].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "sig/r", RequestId: "sig-gen-1"})
	if err != nil {
		t.Fatal(err)
	}
	gk := gen.GetKey().GetGkid()
	if _, err := app.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk}); err != nil {
		t.Fatal(err)
	}

	// Unsigned, the same calls are refused and say why; calls that
	// release and change nothing need no signature.
	raw, err := transport.Dial(tc.cfgs[f].APIAddr, appTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, err = cofferv1.NewKeyServiceClient(raw).GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk})
	wantUnauthenticated(t, "unsigned get", err, "must be signed")
	_, err = cofferv1.NewKeyServiceClient(raw).GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "sig/r", RequestId: "sig-unsigned"})
	wantUnauthenticated(t, "unsigned generate", err, "must be signed")
	if _, err := cofferv1.NewKeyServiceClient(raw).DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: gk}); err != nil {
		t.Fatalf("describe needs no signature: %v", err)
	}

	// A member forwarding a write to the leader must carry the client's
	// own signature of that very write.
	appSigner, eveSigner := mustSigner(t, appTLS), mustSigner(t, eveTLS)
	appCert, eveCert := appTLS.Certificates[0].Certificate[0], eveTLS.Certificates[0].Certificate[0]
	in := cofferv1.NewInternalServiceClient(tc.dialAs(tc.cfgs[f].TLS, l))
	asApp := &cofferv1.Caller{Identity: "client:app", CertSerial: app.serial, Node: tc.cfgs[f].ID}
	forward := func(req *cofferv1.GenerateKeyRequest, sig *cofferv1.RequestSignature, cert []byte) error {
		_, err := in.Forward(ctx, &cofferv1.ForwardRequest{Caller: asApp, RequestId: req.GetRequestId(),
			Op:               &cofferv1.ForwardRequest_GenerateKey{GenerateKey: req},
			RequestSignature: sig, ClientCertificate: cert})
		return err
	}
	sign := func(s *msgsig.Signer, method string, req proto.Message, id string) *cofferv1.RequestSignature {
		sig, err := s.SignRequest(method, id, time.Now(), req)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	genMethod := cofferv1.KeyService_GenerateKey_FullMethodName
	req := &cofferv1.GenerateKeyRequest{Resource: "sig/forwarded", RequestId: "sig-fwd-1"}
	wantUnauthenticated(t, "forward without the client's signature", forward(req, nil, nil), "must be signed")
	changed := proto.CloneOf(req)
	changed.Resource = "sig/elsewhere"
	wantUnauthenticated(t, "forward of arguments the client did not sign",
		forward(changed, sign(appSigner, genMethod, req, req.GetRequestId()), appCert), "arguments differ")
	wantUnauthenticated(t, "forward signed by another client",
		forward(req, sign(eveSigner, genMethod, req, req.GetRequestId()), eveCert), "names client:eve")
	wantUnauthenticated(t, "forward of a signature made for another call",
		forward(req, sign(appSigner, cofferv1.KeyService_PutKey_FullMethodName, req, req.GetRequestId()), appCert), "does not take")
	if err := forward(req, sign(appSigner, genMethod, req, req.GetRequestId()), appCert); err != nil {
		t.Fatalf("forward of the client's signed write: %v", err)
	}

	// Every entry of app's granted generates and gets keeps its
	// statement, which verifies offline with app's certificate alone.
	entries, _, err := tc.nodes[l].FSM().AuditEntries(0, 10000, fsm.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	appLeaf := mustCertFile(t, appConf.CertFile)
	v, err := audit.NewVerifier(audit.TrustedKeys{}, audit.VerifyOptions{ClientCerts: []*x509.Certificate{appLeaf}})
	if err != nil {
		t.Fatal(err)
	}
	signedGrants := 0
	for _, e := range entries {
		if err := v.AddEntry(e); err != nil {
			t.Fatal(err)
		}
		if e.GetCaller() == "client:app" && e.GetOutcome() == cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED &&
			(e.GetOperation() == "generate" || e.GetOperation() == "get") {
			if len(e.GetRequestStatement()) == 0 {
				t.Fatalf("entry %d (%s %s) keeps no request statement", e.GetSeq(), e.GetOperation(), e.GetRequestId())
			}
			signedGrants++
		}
	}
	rep, err := v.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if signedGrants != 3 || rep.RequestsVerified < 3 || rep.RequestsUnchecked != 0 {
		t.Fatalf("%d signed grants; report verified %d, unchecked %d", signedGrants, rep.RequestsVerified, rep.RequestsUnchecked)
	}
}

// A cluster configured to allow unsigned requests serves them, and their
// entries keep no statement.
func TestNode_UnsignedRequestsAllowed(t *testing.T) {
	tc := mustCluster(t, 1, func(c *Config) { c.AllowUnsignedRequests = true })
	ctx := ctxT(t)
	l := tc.waitLeader()
	_, appTLS := tc.clientTLSOf("app")
	raw, err := transport.Dial(tc.cfgs[l].APIAddr, appTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	gen, err := cofferv1.NewKeyServiceClient(raw).GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "sig/r", RequestId: "unsigned-1"})
	if err != nil {
		t.Fatalf("unsigned generate on a cluster that allows it: %v", err)
	}
	entries, _, err := tc.nodes[l].FSM().AuditEntries(0, 10000, fsm.AuditFilter{GKID: gen.GetKey().GetGkid()})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 || len(entries[0].GetRequestStatement()) != 0 {
		t.Fatalf("entries %v: want one without a statement", entries)
	}
}
