package msgsig

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/transport"
)

// party is a certificate and its key from a test CA.
type party struct {
	cert   tls.Certificate
	leaf   *x509.Certificate
	signer *Signer
}

func newCA(t testing.TB, kind transport.Kind) *transport.CA {
	t.Helper()
	ca, err := transport.CreateCA("msgsig-test-"+string(kind), kind, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newParty(t testing.TB, ca *transport.CA, id transport.Identity, key crypto.Signer) party {
	t.Helper()
	certPEM, err := ca.Sign(transport.IssueRequest{Identity: id, Validity: time.Hour}, key.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key, Leaf: leaf}
	s, err := NewSigner(cert)
	if err != nil {
		t.Fatal(err)
	}
	return party{cert: cert, leaf: leaf, signer: s}
}

func p256(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const getKey = cofferv1.KeyService_GetKey_FullMethodName

func getRequest() *cofferv1.GetKeyRequest {
	return &cofferv1.GetKeyRequest{Gkid: "k1-abc", SealTo: &cofferv1.SealTo{KemId: 32, PublicKey: []byte("pk")}}
}

func TestRequest_RoundTripEveryKeyType(t *testing.T) {
	ca := newCA(t, transport.KindClient)
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"ecdsa-p256": p256(t), "ed25519": ed, "rsa-2048": rk} {
		t.Run(name, func(t *testing.T) {
			c := newParty(t, ca, transport.Identity{Kind: transport.KindClient, Name: "app"}, key)
			now := time.Now()
			sig, err := c.signer.SignRequest(getKey, "req-1", now, getRequest())
			if err != nil {
				t.Fatal(err)
			}
			st, err := VerifyRequest(sig, c.leaf, getKey, "req-1", getRequest(), now.Add(time.Second))
			if err != nil {
				t.Fatalf("VerifyRequest: %v", err)
			}
			if st.GetGkid() != "k1-abc" || st.GetMethod() != getKey || len(st.GetSealToSha256()) != 32 {
				t.Fatalf("statement %v", st)
			}
			// The offline check needs only the statement, the signature
			// and the certificate.
			if _, err := VerifyStatement(sig.GetStatement(), sig.GetSignature(), c.leaf); err != nil {
				t.Fatalf("VerifyStatement: %v", err)
			}
		})
	}
}

func TestRequest_Refusals(t *testing.T) {
	ca := newCA(t, transport.KindClient)
	app := newParty(t, ca, transport.Identity{Kind: transport.KindClient, Name: "app"}, p256(t))
	eve := newParty(t, ca, transport.Identity{Kind: transport.KindClient, Name: "eve"}, p256(t))
	now := time.Now()
	sig, err := app.signer.SignRequest(getKey, "req-1", now, getRequest())
	if err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte, i int) []byte {
		c := append([]byte(nil), b...)
		c[i%len(c)] ^= 1
		return c
	}
	other := func(f func(*cofferv1.GetKeyRequest)) *cofferv1.GetKeyRequest {
		r := getRequest()
		f(r)
		return r
	}
	cases := []struct {
		name   string
		sig    *cofferv1.RequestSignature
		cert   *x509.Certificate
		method string
		id     string
		req    proto.Message
		at     time.Time
		want   error
	}{
		{"another method", sig, app.leaf, cofferv1.CryptoService_GenerateDataKey_FullMethodName, "req-1", getRequest(), now, ErrMismatch},
		{"another request id", sig, app.leaf, getKey, "req-2", getRequest(), now, ErrMismatch},
		{"too late", sig, app.leaf, getKey, "req-1", getRequest(), now.Add(MaxSkew + time.Second), ErrMismatch},
		{"too early", sig, app.leaf, getKey, "req-1", getRequest(), now.Add(-MaxSkew - time.Second), ErrMismatch},
		{"another key", sig, app.leaf, getKey, "req-1", other(func(r *cofferv1.GetKeyRequest) { r.Gkid = "k1-other" }), now, ErrMismatch},
		{"another HPKE key", sig, app.leaf, getKey, "req-1", other(func(r *cofferv1.GetKeyRequest) { r.SealTo.PublicKey = []byte("attacker") }), now, ErrMismatch},
		{"another argument", sig, app.leaf, getKey, "req-1", other(func(r *cofferv1.GetKeyRequest) { r.Version = 2 }), now, ErrMismatch},
		{"another client's certificate", sig, eve.leaf, getKey, "req-1", getRequest(), now, ErrMismatch},
		{"statement altered", &cofferv1.RequestSignature{Statement: flip(sig.GetStatement(), 40), Signature: sig.GetSignature(), BodyNonce: sig.GetBodyNonce()}, app.leaf, getKey, "req-1", getRequest(), now, nil},
		{"signature altered", &cofferv1.RequestSignature{Statement: sig.GetStatement(), Signature: flip(sig.GetSignature(), 20), BodyNonce: sig.GetBodyNonce()}, app.leaf, getKey, "req-1", getRequest(), now, ErrBadSignature},
		{"nonce altered", &cofferv1.RequestSignature{Statement: sig.GetStatement(), Signature: sig.GetSignature(), BodyNonce: flip(sig.GetBodyNonce(), 3)}, app.leaf, getKey, "req-1", getRequest(), now, ErrMismatch},
		{"nonce missing", &cofferv1.RequestSignature{Statement: sig.GetStatement(), Signature: sig.GetSignature()}, app.leaf, getKey, "req-1", getRequest(), now, ErrMalformed},
		{"unsigned", &cofferv1.RequestSignature{}, app.leaf, getKey, "req-1", getRequest(), now, ErrUnsigned},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := VerifyRequest(c.sig, c.cert, c.method, c.id, c.req, c.at)
			if err == nil {
				t.Fatal("accepted")
			}
			if c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
	// Signing eve's statement with app's key does not pass as eve's.
	forged, err := app.signer.SignRequest(getKey, "req-1", now, getRequest())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyStatement(forged.GetStatement(), forged.GetSignature(), eve.leaf); err == nil {
		t.Fatal("app's statement verified as eve's")
	}
}

func TestRequest_ResponseContextIsNotARequest(t *testing.T) {
	ca := newCA(t, transport.KindNode)
	n := newParty(t, ca, transport.Identity{Kind: transport.KindNode, Name: "n1"}, p256(t))
	rs, err := n.signer.SignResponse("node:n1", getKey, "req-1", nil, time.Now(), &cofferv1.GetKeyResponse{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyStatement(rs.GetStatement(), rs.GetSignature(), n.leaf); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a response statement checked as a request's: %v", err)
	}
}

func TestResponse_RoundTripAndRefusals(t *testing.T) {
	nodeCA := newCA(t, transport.KindNode)
	roots := x509.NewCertPool()
	roots.AddCert(nodeCA.Cert)
	n1 := newParty(t, nodeCA, transport.Identity{Kind: transport.KindNode, Name: "n1"}, p256(t))
	rogueCA := newCA(t, transport.KindNode)
	rogue := newParty(t, rogueCA, transport.Identity{Kind: transport.KindNode, Name: "n1"}, p256(t))
	clientCA := newCA(t, transport.KindClient)
	app := newParty(t, clientCA, transport.Identity{Kind: transport.KindClient, Name: "app"}, p256(t))

	req, err := app.signer.SignRequest(getKey, "req-1", time.Now(), getRequest())
	if err != nil {
		t.Fatal(err)
	}
	resp := &cofferv1.GetKeyResponse{Key: &cofferv1.KeyMetadata{Gkid: "k1-abc"}, SealedMaterial: []byte("sealed"), Version: 1}
	verifier := NodeCertVerifier(roots)
	sig, err := n1.signer.SignResponse("node:n1", getKey, "req-1", req.GetStatement(), time.Now(), resp)
	if err != nil {
		t.Fatal(err)
	}
	st, err := VerifyResponse(sig, verifier, getKey, "req-1", req.GetStatement(), resp)
	if err != nil {
		t.Fatalf("VerifyResponse: %v", err)
	}
	if st.GetNode() != "node:n1" {
		t.Fatalf("node %q", st.GetNode())
	}

	tampered := proto.CloneOf(resp)
	tampered.Version = 2
	if _, err := VerifyResponse(sig, verifier, getKey, "req-1", req.GetStatement(), tampered); !errors.Is(err, ErrMismatch) {
		t.Fatalf("altered response: %v", err)
	}
	other, err := app.signer.SignRequest(getKey, "req-1", time.Now(), getRequest())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyResponse(sig, verifier, getKey, "req-1", other.GetStatement(), resp); !errors.Is(err, ErrMismatch) {
		t.Fatalf("answer to another request statement: %v", err)
	}
	if _, err := VerifyResponse(sig, verifier, getKey, "req-2", req.GetStatement(), resp); !errors.Is(err, ErrMismatch) {
		t.Fatalf("answer to another request id: %v", err)
	}
	asOther, err := n1.signer.SignResponse("node:n2", getKey, "req-1", req.GetStatement(), time.Now(), resp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyResponse(asOther, verifier, getKey, "req-1", req.GetStatement(), resp); !errors.Is(err, ErrMismatch) {
		t.Fatalf("signed as another node: %v", err)
	}
	forged, err := rogue.signer.SignResponse("node:n1", getKey, "req-1", req.GetStatement(), time.Now(), resp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyResponse(forged, verifier, getKey, "req-1", req.GetStatement(), resp); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("signed by a certificate from another CA: %v", err)
	}
	byClient, err := app.signer.SignResponse("client:app", getKey, "req-1", req.GetStatement(), time.Now(), resp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyResponse(byClient, verifier, getKey, "req-1", req.GetStatement(), resp); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("signed by a client: %v", err)
	}
	if _, err := VerifyResponse(nil, verifier, getKey, "req-1", req.GetStatement(), resp); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("unsigned: %v", err)
	}
}

func TestMethods_SignedSets(t *testing.T) {
	for _, m := range []string{getKey, cofferv1.KeyService_GenerateKey_FullMethodName, cofferv1.CacheService_FlushCaches_FullMethodName} {
		if !RequestSigned(m) || !ResponseSigned(m) {
			t.Errorf("%s: want requests and responses signed", m)
		}
	}
	for _, m := range []string{cofferv1.AccessService_Check_FullMethodName, cofferv1.CacheService_GetCachePolicy_FullMethodName} {
		if RequestSigned(m) || !ResponseSigned(m) {
			t.Errorf("%s: a decision: want only the response signed", m)
		}
	}
	for _, m := range []string{cofferv1.KeyService_DescribeKey_FullMethodName, cofferv1.CryptoService_Encrypt_FullMethodName, cofferv1.ClusterService_Status_FullMethodName} {
		if RequestSigned(m) || ResponseSigned(m) {
			t.Errorf("%s: releases nothing, changes nothing: want unsigned", m)
		}
	}
}

// An implementation other than this package's (OpenSSL) verifies a request
// signature from the statement bytes, the signature and the public key
// alone (FORMAT.md).
func TestRequest_OpenSSLVerifies(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	ca := newCA(t, transport.KindClient)
	c := newParty(t, ca, transport.Identity{Kind: transport.KindClient, Name: "app"}, p256(t))
	sig, err := c.signer.SignRequest(getKey, "req-1", time.Now(), getRequest())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pub, err := x509.MarshalPKIXPublicKey(c.leaf.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"pub.pem":       pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
		"signature.der": sig.GetSignature(),
		"statement.bin": sig.GetStatement(),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := func() ([]byte, error) {
		cmd := exec.Command(bin, "dgst", "-sha256", "-verify", "pub.pem", "-signature", "signature.der", "statement.bin")
		cmd.Dir = dir
		return cmd.CombinedOutput()
	}
	if out, err := run(); err != nil || !strings.Contains(string(out), "Verified OK") {
		t.Fatalf("openssl: %v: %s", err, out)
	}
	st := sig.GetStatement()
	st[len(st)-1] ^= 1
	if err := os.WriteFile(filepath.Join(dir, "statement.bin"), st, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := run(); err == nil {
		t.Fatalf("openssl verified an altered statement: %s", out)
	}
}
