package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/msgsig"
	"github.com/coffer-kms/coffer/transport"
)

// TestCLI_AuditVerifyClientCerts: `audit verify --client-cert` checks the
// signed requests the entries keep against the clients' certificates, a
// file or a directory of them, and fails at the entry whose statement is
// not the named client's request.
func TestCLI_AuditVerifyClientCerts(t *testing.T) {
	f := mustVerifyFixture(t)
	ca, err := transport.CreateCA("cli-test-clients", transport.KindClient, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.Sign(transport.IssueRequest{Identity: transport.Identity{Kind: transport.KindClient, Name: "app"}, Validity: time.Hour}, key.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := msgsig.NewSigner(tls.Certificate{Certificate: [][]byte{b.Bytes}, PrivateKey: key, Leaf: leaf})
	if err != nil {
		t.Fatal(err)
	}
	// app's entries (every seq but multiples of 3, see testEntry) keep app's
	// signed statement of a get of their key and request id.
	sign := func(e *cofferv1.AuditEntry) {
		if e.GetCaller() != "client:app" {
			return
		}
		seq := strings.TrimPrefix(e.GetRequestId(), "req-")
		sig, err := signer.SignRequest(cofferv1.KeyService_GetKey_FullMethodName, e.GetRequestId(), time.Unix(0, e.GetTimeUnixNano()), &cofferv1.GetKeyRequest{Gkid: "k" + seq})
		if err != nil {
			t.Fatal(err)
		}
		e.RequestStatement, e.RequestSignature = sig.GetStatement(), sig.GetSignature()
	}
	export := buildExport(t, 6, f.cps, sign)
	file := writeTestFile(t, f.dir, "signed.jsonl", export)
	certDir := t.TempDir()
	certFile := writeTestFile(t, certDir, "app.pem", certPEM)

	for _, arg := range []string{certFile, certDir} {
		out := mustRun(t, nil, f.args("--file", file, "--client-cert", arg)...)
		if !strings.Contains(out, "signed requests:") || !strings.Contains(out, "4 verified against 1 client certificate(s); 0 signed with certificates not given") {
			t.Fatalf("--client-cert %s:\n%s", arg, out)
		}
	}
	// Without the certificate the statements are only counted.
	if out := mustRun(t, nil, f.args("--file", file)...); !strings.Contains(out, "0 verified against 0 client certificate(s); 4 signed with certificates not given") {
		t.Fatalf("without --client-cert:\n%s", out)
	}

	// Entry 2 recorded for another key than app signed for: the chain is
	// re-linked, so only the statement check can tell.
	forged := buildExport(t, 6, f.cps, func(e *cofferv1.AuditEntry) {
		sign(e)
		if e.GetRequestId() == "req-2" {
			e.Gkid = "k-other"
		}
	})
	code, _, stderr := runCLI(t, nil, f.args("--file", writeTestFile(t, f.dir, "forged.jsonl", forged), "--client-cert", certFile)...)
	if code != 1 || !strings.Contains(stderr, fmt.Sprintf("chain broken at seq 2 (%s)", "bad-request-signature")) {
		t.Fatalf("forged entry: exit %d, stderr %q", code, stderr)
	}
}
