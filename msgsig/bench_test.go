package msgsig

import (
	"crypto/x509"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/transport"
)

// What one signed get costs on each side (go test ./msgsig -run XX -bench .).
func BenchmarkGetSignatures(b *testing.B) {
	clientCA, nodeCA := newCA(b, transport.KindClient), newCA(b, transport.KindNode)
	app := newParty(b, clientCA, transport.Identity{Kind: transport.KindClient, Name: "app"}, p256(b))
	n1 := newParty(b, nodeCA, transport.Identity{Kind: transport.KindNode, Name: "n1"}, p256(b))
	roots := x509.NewCertPool()
	roots.AddCert(nodeCA.Cert)
	verifier := NodeCertVerifier(roots)
	req := getRequest()
	resp := &cofferv1.GetKeyResponse{Key: &cofferv1.KeyMetadata{Gkid: "k1-abc", Policy: "default", Resource: "r"}, SealedMaterial: make([]byte, 80), Version: 1}
	sig, err := app.signer.SignRequest(getKey, "req-1", time.Now(), req)
	if err != nil {
		b.Fatal(err)
	}
	rs, err := n1.signer.SignResponse("node:n1", getKey, "req-1", sig.GetStatement(), time.Now(), resp)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("client-sign-request", func(b *testing.B) {
		for b.Loop() {
			if _, err := app.signer.SignRequest(getKey, "req-1", time.Now(), req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("node-verify-request", func(b *testing.B) {
		for b.Loop() {
			if _, err := VerifyRequest(sig, app.leaf, getKey, "req-1", req, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("node-sign-response", func(b *testing.B) {
		for b.Loop() {
			if _, err := n1.signer.SignResponse("node:n1", getKey, "req-1", sig.GetStatement(), time.Now(), resp); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("client-verify-response", func(b *testing.B) {
		for b.Loop() {
			if _, err := VerifyResponse(rs, verifier, getKey, "req-1", sig.GetStatement(), resp); err != nil {
				b.Fatal(err)
			}
		}
	})
}
