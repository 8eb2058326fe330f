package audit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/msgsig"
	"github.com/coffer-kms/coffer/transport"
)

func clientCred(t *testing.T, ca *transport.CA, name string) (*x509.Certificate, *msgsig.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.Sign(transport.IssueRequest{Identity: transport.Identity{Kind: transport.KindClient, Name: name}, Validity: time.Hour}, key.Public(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	s, err := msgsig.NewSigner(tls.Certificate{Certificate: [][]byte{b.Bytes}, PrivateKey: key, Leaf: leaf})
	if err != nil {
		t.Fatal(err)
	}
	return leaf, s
}

// An entry's signed request statement verifies offline against the client
// certificates the auditor gives, and must describe the entry.
func TestVerifier_RequestSignatures(t *testing.T) {
	ca, err := transport.CreateCA("audit-test-clients", transport.KindClient, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	app, appSigner := clientCred(t, ca, "app")
	eve, _ := clientCred(t, ca, "eve")
	sig, err := appSigner.SignRequest(cofferv1.KeyService_GetKey_FullMethodName, "r1", time.Now(), &cofferv1.GetKeyRequest{Gkid: "k1"})
	if err != nil {
		t.Fatal(err)
	}
	entry := func(f func(e *cofferv1.AuditEntry)) *cofferv1.AuditEntry {
		e := &cofferv1.AuditEntry{TimeUnixNano: time.Now().UnixNano(), Node: "n1", Caller: "client:app", Operation: "get",
			Gkid: "k1", RequestId: "r1", Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED,
			RequestStatement: sig.GetStatement(), RequestSignature: sig.GetSignature()}
		if f != nil {
			f(e)
		}
		Link(GenesisHash(), 1, e)
		return e
	}
	verify := func(e *cofferv1.AuditEntry, certs ...*x509.Certificate) (Report, error) {
		v, err := NewVerifier(TrustedKeys{}, VerifyOptions{ClientCerts: certs})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.AddEntry(e); err != nil {
			return Report{}, err
		}
		return v.Finish()
	}

	rep, err := verify(entry(nil), app, eve)
	if err != nil || rep.RequestsVerified != 1 || rep.RequestsUnchecked != 0 {
		t.Fatalf("genuine entry: %+v, %v", rep, err)
	}
	rep, err = verify(entry(nil), eve)
	if err != nil || rep.RequestsVerified != 0 || rep.RequestsUnchecked != 1 {
		t.Fatalf("certificate not given: %+v, %v", rep, err)
	}
	flipped := append([]byte(nil), sig.GetSignature()...)
	flipped[10] ^= 1
	for name, f := range map[string]func(*cofferv1.AuditEntry){
		"recorded as another caller":  func(e *cofferv1.AuditEntry) { e.Caller = "client:eve" },
		"recorded as another request": func(e *cofferv1.AuditEntry) { e.RequestId = "r2" },
		"recorded for another key":    func(e *cofferv1.AuditEntry) { e.Gkid = "k2" },
		"signature altered":           func(e *cofferv1.AuditEntry) { e.RequestSignature = flipped },
		"recorded long after signing": func(e *cofferv1.AuditEntry) { e.TimeUnixNano += int64(msgsig.MaxSkew + 2*time.Minute) },
	} {
		_, err := verify(entry(f), app)
		var ve *VerifyError
		if !errors.As(err, &ve) || ve.Kind != KindBadRequest || ve.Seq != 1 {
			t.Errorf("%s: %v, want %s at seq 1", name, err, KindBadRequest)
		}
	}
}
