package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// identity is a client certificate and connections from it to every node.
type identity struct {
	serial string
	keys   []cofferv1.KeyServiceClient
	access []cofferv1.AccessServiceClient
	policy []cofferv1.PolicyServiceClient
	audit  []cofferv1.AuditServiceClient
	crypto []cofferv1.CryptoServiceClient
}

func (tc *testCluster) identity(name string) *identity {
	tc.t.Helper()
	conf := tc.issue(transport.Identity{Kind: transport.KindClient, Name: name})
	tlsConf, err := conf.ClientTLS()
	if err != nil {
		tc.t.Fatal(err)
	}
	return tc.identityFrom(conf, tlsConf)
}

func (tc *testCluster) identityFrom(conf transport.TLSConfig, tlsConf *tls.Config) *identity {
	tc.t.Helper()
	pemBytes, err := os.ReadFile(conf.CertFile)
	if err != nil {
		tc.t.Fatal(err)
	}
	b, _ := pem.Decode(pemBytes)
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		tc.t.Fatal(err)
	}
	id := &identity{serial: authz.FormatSerial(cert.SerialNumber)}
	for _, c := range tc.cfgs {
		conn, err := transport.Dial(c.APIAddr, tlsConf, testenv.Signing(tc.t, tlsConf))
		if err != nil {
			tc.t.Fatal(err)
		}
		tc.t.Cleanup(func() { _ = conn.Close() })
		id.keys = append(id.keys, cofferv1.NewKeyServiceClient(conn))
		id.access = append(id.access, cofferv1.NewAccessServiceClient(conn))
		id.policy = append(id.policy, cofferv1.NewPolicyServiceClient(conn))
		id.audit = append(id.audit, cofferv1.NewAuditServiceClient(conn))
		id.crypto = append(id.crypto, cofferv1.NewCryptoServiceClient(conn))
	}
	return id
}

// mustRegisterApp has admin register an application client called name
// through node i.
func (tc *testCluster) mustRegisterApp(admin *identity, i int, name string) {
	tc.t.Helper()
	if _, err := admin.access[i].RegisterClient(ctxT(tc.t), &cofferv1.RegisterClientRequest{Name: name, Roles: []string{"application"}}); err != nil {
		tc.t.Fatalf("register %s: %v", name, err)
	}
}

// mustGrant has admin grant subject ops on pattern through node i and
// returns the rule's id.
func (tc *testCluster) mustGrant(admin *identity, i int, subject, pattern string, ops ...string) string {
	tc.t.Helper()
	rule, err := admin.access[i].Grant(ctxT(tc.t), &cofferv1.GrantRequest{Subject: subject, Operations: ops, ResourcePattern: pattern})
	if err != nil {
		tc.t.Fatalf("grant %v on %s to %s: %v", ops, pattern, subject, err)
	}
	return rule.GetId()
}

func wantCode(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: %v, want %v", what, err, code)
	}
	if msg != "" && !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("%s: message %q lacks %q", what, status.Convert(err).Message(), msg)
	}
}

// TestNode_AccessControl registers a client with a narrow grant and sends
// every refused case to the leader and to a follower: each gets the right
// code and an explanatory message and changes nothing. Then deactivation,
// reactivation and certificate revocation, made through a follower, bind
// every node for the very next request.
func TestNode_AccessControl(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app") // the bootstrap admin (same name as tc's client)
	l, f := tc.waitLeader(), tc.follower()

	if _, err := admin.access[f].RegisterClient(ctx, &cofferv1.RegisterClientRequest{Name: "bob", Groups: []string{"payments"}, Roles: []string{"application"}}); err != nil {
		t.Fatal(err)
	}
	tc.mustGrant(admin, l, "group:payments", "pay/**", "generate", "get")
	bob := tc.identity("bob")
	eve := tc.identity("eve") // valid certificate, never registered

	pay, err := bob.keys[f].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "pay/eu"})
	if err != nil {
		t.Fatalf("granted generate: %v", err)
	}
	other, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "hr/payroll"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range tc.nodes {
		if _, err := bob.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: pay.GetKey().GetGkid()}); err != nil {
			t.Fatalf("granted get on node %d: %v", i, err)
		}
	}
	countKeys := func() int {
		list, err := admin.keys[l].ListKeys(ctx, &cofferv1.ListKeysRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return len(list.GetKeys())
	}
	before := countKeys()

	for _, i := range []int{l, f} {
		cases := []struct {
			name string
			call func() error
			code codes.Code
			msg  string
		}{
			{"unregistered client", func() error {
				_, err := eve.keys[i].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "pay/eu"})
				return err
			}, codes.PermissionDenied, "not registered"},
			{"missing resource grant (generate)", func() error {
				_, err := bob.keys[i].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "hr/payroll"})
				return err
			}, codes.PermissionDenied, "bob"},
			{"missing resource grant (get)", func() error {
				_, err := bob.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: other.GetKey().GetGkid()})
				return err
			}, codes.PermissionDenied, "get"},
			{"missing operation grant", func() error {
				_, err := bob.keys[i].DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: pay.GetKey().GetGkid()})
				return err
			}, codes.PermissionDenied, "describe"},
			{"import without put grant", func() error {
				_, err := bob.keys[i].PutKey(ctx, &cofferv1.PutKeyRequest{Resource: "pay/eu", Material: make([]byte, 32)})
				return err
			}, codes.PermissionDenied, "put"},
			{"admin op without role", func() error {
				_, err := bob.policy[i].CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: "bobs"})
				return err
			}, codes.PermissionDenied, "policy.create"},
			{"grant without role", func() error {
				_, err := bob.access[i].Grant(ctx, &cofferv1.GrantRequest{Subject: "client:bob", Operations: []string{"*"}, ResourcePattern: "**"})
				return err
			}, codes.PermissionDenied, "acl.manage"},
			{"wrong policy", func() error {
				_, err := bob.keys[i].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "pay/eu", Policy: "nope"})
				return err
			}, codes.NotFound, "nope"},
			{"malformed gkid", func() error {
				_, err := bob.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "x"})
				return err
			}, codes.InvalidArgument, "gkid"},
			{"malformed grant", func() error {
				_, err := admin.access[i].Grant(ctx, &cofferv1.GrantRequest{Subject: "nobody", Operations: []string{"get"}, ResourcePattern: "x"})
				return err
			}, codes.InvalidArgument, ""},
			{"unknown operation", func() error {
				_, err := admin.access[i].Grant(ctx, &cofferv1.GrantRequest{Subject: "client:bob", Operations: []string{"fly"}, ResourcePattern: "x"})
				return err
			}, codes.InvalidArgument, "fly"},
		}
		for _, c := range cases {
			wantCode(t, c.name, c.call(), c.code, c.msg)
		}
	}
	if got := countKeys(); got != before {
		t.Fatalf("refused requests changed state: %d keys, was %d", got, before)
	}

	// Deactivation through a follower binds every node at once.
	if _, err := admin.access[f].SetClientActive(ctx, &cofferv1.SetClientActiveRequest{Name: "bob", Active: false}); err != nil {
		t.Fatal(err)
	}
	for i := range tc.nodes {
		_, err := bob.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: pay.GetKey().GetGkid()})
		wantCode(t, "deactivated client", err, codes.PermissionDenied, "deactivated")
	}
	if _, err := admin.access[l].SetClientActive(ctx, &cofferv1.SetClientActiveRequest{Name: "bob", Active: true}); err != nil {
		t.Fatal(err)
	}
	for i := range tc.nodes {
		if _, err := bob.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: pay.GetKey().GetGkid()}); err != nil {
			t.Fatalf("reactivated client on node %d: %v", i, err)
		}
	}
	// Revoking the certificate (not the client) refuses it everywhere.
	if _, err := admin.access[f].RevokeCertificate(ctx, &cofferv1.RevokeCertificateRequest{Serial: bob.serial, Reason: "laptop lost"}); err != nil {
		t.Fatal(err)
	}
	for i := range tc.nodes {
		_, err := bob.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: pay.GetKey().GetGkid()})
		wantCode(t, "revoked certificate", err, codes.Unauthenticated, "revoked")
	}
	// A new certificate for the same client works again.
	bob2 := tc.identity("bob")
	if _, err := bob2.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: pay.GetKey().GetGkid()}); err != nil {
		t.Fatalf("new certificate: %v", err)
	}
	// acl check explains a decision.
	chk, err := admin.access[f].Check(ctx, &cofferv1.CheckRequest{Client: "bob", Operation: "describe", Resource: "pay/eu"})
	if err != nil || chk.GetAllowed() || !strings.Contains(chk.GetExplanation(), "no certificate named") {
		t.Fatalf("check: %+v %v", chk, err)
	}
	// Naming bob's revoked certificate checks it against the deny list.
	chk, err = admin.access[f].Check(ctx, &cofferv1.CheckRequest{Client: "bob", Operation: "get", Resource: "pay/eu", CertSerial: bob.serial})
	if err != nil || chk.GetAllowed() || !strings.Contains(chk.GetExplanation(), "is revoked") {
		t.Fatalf("check of a revoked certificate: %+v %v", chk, err)
	}
	// Listing without a filter shows only what the caller may list.
	tc.mustGrant(admin, l, "client:bob", "pay/**", "list")
	list, err := bob2.keys[f].ListKeys(ctx, &cofferv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range list.GetKeys() {
		if !strings.HasPrefix(k.GetResource(), "pay/") {
			t.Fatalf("list showed %s on %s", k.GetGkid(), k.GetResource())
		}
	}
	if len(list.GetKeys()) != 1 {
		t.Fatalf("list: %d keys, want 1", len(list.GetKeys()))
	}
}

// TestNode_RefusalHidesKeys: a caller without a grant on a key is told
// neither whether the key exists nor its resource, for linearizable and
// stale reads alike; a caller granted get everywhere is told NotFound.
func TestNode_RefusalHidesKeys(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	l, f := tc.waitLeader(), tc.follower()
	admin := tc.identity("app")
	eve := tc.ungrantedClient(admin, l, "eve")
	key := tc.mustGenerate(l, "secret-project/payroll", "")
	missing := key.GetGkid()[:20] + strings.Repeat("a", len(key.GetGkid())-20)
	tc.waitApplied(f, tc.nodes[l].FSM().AppliedIndex())
	for _, cons := range []cofferv1.Consistency{cofferv1.Consistency_CONSISTENCY_LINEARIZABLE, cofferv1.Consistency_CONSISTENCY_STALE} {
		_, errKey := eve.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: key.GetGkid(), Consistency: cons})
		_, errMissing := eve.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: missing, Consistency: cons})
		for what, err := range map[string]error{"existing key": errKey, "missing key": errMissing} {
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("%v get of a %s without a grant: %v, want PermissionDenied", cons, what, err)
			}
			if strings.Contains(status.Convert(err).Message(), "secret-project") {
				t.Errorf("%v refusal names the key's resource: %v", cons, err)
			}
		}
		gkidFree := func(err error, id string) string {
			return strings.ReplaceAll(status.Convert(err).Message(), id, "GKID")
		}
		if a, b := gkidFree(errKey, key.GetGkid()), gkidFree(errMissing, missing); a != b {
			t.Errorf("%v: the refusals differ, telling the keys apart: %q and %q", cons, a, b)
		}
		_, err := admin.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: missing, Consistency: cons})
		wantCode(t, "missing key asked by a caller granted get everywhere", err, codes.NotFound, "")
	}
}

// waitApplied waits until node i has applied index idx.
func (tc *testCluster) waitApplied(i int, idx uint64) {
	tc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tc.nodes[i].FSM().WaitApplied(ctx, idx); err != nil {
		tc.t.Fatalf("node %d did not apply index %d: %v", i, idx, err)
	}
}
