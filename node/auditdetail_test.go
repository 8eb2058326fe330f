package node

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/escrow"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// TestNode_AdministrativeEntriesSayWhatChanged sends every administrative
// write of clients, rules and policies through a follower, which forwards
// it to the leader, and reads the entries the leader committed: each keeps
// its authorisation operation and says in its reason what the write
// changed (registration and its update, deactivation, activation, a
// certificate revocation naming serial and holder, a grant and its
// revocation naming the rule, a policy's creation, an update listing the
// fields it changed old -> new, an update that changed nothing, a KEK
// rotation). No entry holds a wrapped KEK or escrow key bytes.
func TestNode_AdministrativeEntriesSayWhatChanged(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	with := func(id string) context.Context { return metadata.AppendToOutgoingContext(ctx, RequestIDKey, id) }
	acc, pols := admin.access[f], admin.policy[f]
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	_, err := acc.RegisterClient(with("register"), &cofferv1.RegisterClientRequest{Name: "app1", Groups: []string{"payments"}, Roles: []string{"application"}})
	must("register", err)
	_, err = acc.RegisterClient(with("reregister"), &cofferv1.RegisterClientRequest{Name: "app1", Groups: []string{"payments", "billing"}, Roles: []string{"application"}, Update: true})
	must("register update", err)
	_, err = acc.SetClientActive(with("deactivate"), &cofferv1.SetClientActiveRequest{Name: "app1", Active: false})
	must("deactivate", err)
	_, err = acc.SetClientActive(with("activate"), &cofferv1.SetClientActiveRequest{Name: "app1", Active: true})
	must("activate", err)
	_, err = acc.SetClientActive(with("activate-again"), &cofferv1.SetClientActiveRequest{Name: "app1", Active: true})
	must("activate again", err)

	certPEM, err := os.ReadFile(tc.issue(transport.Identity{Kind: transport.KindClient, Name: "app1"}).CertFile)
	must("read app1's certificate", err)
	b, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(b.Bytes)
	must("parse app1's certificate", err)
	serial := authz.FormatSerial(cert.SerialNumber)
	_, err = acc.RevokeCertificate(with("revoke-cert-mismatch"), &cofferv1.RevokeCertificateRequest{Serial: "abcd", CertificatePem: certPEM})
	wantCode(t, "revocation whose certificate has another serial", err, codes.InvalidArgument, "not abcd")
	_, err = acc.RevokeCertificate(with("revoke-cert"), &cofferv1.RevokeCertificateRequest{Serial: serial, Reason: "laptop lost", CertificatePem: certPEM})
	must("revoke certificate", err)
	_, err = acc.RevokeCertificate(with("revoke-serial"), &cofferv1.RevokeCertificateRequest{Serial: "00ABCD"})
	must("revoke by serial", err)

	rule, err := acc.Grant(with("grant"), &cofferv1.GrantRequest{Subject: "client:app1", Operations: []string{"get", "encrypt"}, ResourcePattern: "payments/**"})
	must("grant", err)
	_, err = acc.RevokeGrant(with("revoke-grant"), &cofferv1.RevokeGrantRequest{Id: rule.GetId()})
	must("revoke grant", err)
	_, err = acc.RevokeGrant(with("revoke-missing"), &cofferv1.RevokeGrantRequest{Id: "no-such-rule"})
	wantCode(t, "revoking a rule that does not exist", err, codes.NotFound, "")

	officer, err := escrow.GenerateKey(3072)
	must("escrow key", err)
	pubDER, _ := x509.MarshalPKIXPublicKey(&officer.PublicKey)
	notAfter := time.Date(2040, 1, 2, 3, 4, 5, 0, time.UTC)
	_, err = pols.CreatePolicy(with("policy-create"), &cofferv1.CreatePolicyRequest{Name: "pay",
		AllowedAlgorithms: []cofferv1.Algorithm{cofferv1.Algorithm_ALGORITHM_AES_256},
		DefaultUsePolicy:  &cofferv1.KeyUsePolicy{Operations: []string{"get"}, NotAfter: timestamppb.New(notAfter)},
		MaxLifetime:       durationpb.New(720 * time.Hour),
		EscrowKeys:        []*cofferv1.EscrowKeyInfo{{PublicKey: pubDER, Label: "officer"}}})
	must("create policy", err)
	update := &cofferv1.UpdatePolicyRequest{Name: "pay",
		DefaultUsePolicy: &cofferv1.KeyUsePolicy{Operations: []string{"get", "encrypt"}, NotAfter: timestamppb.New(notAfter)},
		CachePolicy:      &cofferv1.KeyCachePolicy{Ttl: durationpb.New(time.Hour)}}
	_, err = pols.UpdatePolicy(with("policy-update"), update)
	must("update policy", err)
	_, err = pols.UpdatePolicy(with("policy-update-same"), update)
	must("update policy again", err)
	_, err = pols.UpdatePolicy(with("policy-rotate"), &cofferv1.UpdatePolicyRequest{Name: "pay", RotateKek: true})
	must("rotate the policy's KEK", err)

	esc := escrow.KeyID(pubDER)[:16]
	byID := tc.entriesByRequestID(l, fsm.AuditFilter{})
	for _, w := range []struct {
		id, op, client, resource, policy, reason string
		outcome                                  cofferv1.AuditOutcome
	}{
		{id: "register", op: "client.manage", client: "app1", reason: "registered client app1: roles [application]; groups [payments]"},
		{id: "reregister", op: "client.manage", client: "app1", reason: "updated client app1: groups [payments] -> [payments,billing]"},
		{id: "deactivate", op: "client.manage", client: "app1", reason: "deactivated client app1: active -> inactive"},
		{id: "activate", op: "client.manage", client: "app1", reason: "activated client app1: inactive -> active"},
		{id: "activate-again", op: "client.manage", client: "app1", reason: "activated client app1: active -> active (unchanged)"},
		{id: "revoke-cert", op: "client.manage", client: "app1", reason: "revoked certificate serial " + serial + " of client app1: laptop lost"},
		{id: "revoke-serial", op: "client.manage", reason: "revoked certificate serial abcd (holder not named: revoked by serial)"},
		{id: "grant", op: "acl.manage", client: "client:app1", resource: "payments/**",
			reason: "granted rule " + rule.GetId() + ": client:app1 may get,encrypt on payments/**"},
		{id: "revoke-grant", op: "acl.manage", client: "client:app1", resource: "payments/**",
			reason: "revoked rule " + rule.GetId() + ": client:app1 may get,encrypt on payments/**"},
		{id: "revoke-missing", op: "acl.manage", reason: "fsm: acl rule not found", outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED},
		{id: "policy-create", op: "policy.create", policy: "pay", reason: "created policy pay: allowed_algorithms [aes-256]; " +
			"default_use_policy.operations [get]; default_use_policy.not_before none; default_use_policy.not_after 2040-01-02T03:04:05Z; default_use_policy.max_encryptions none; default_use_policy.rotation_period none; default_use_policy.rotate_after_encryptions none; " +
			"max_lifetime 720h0m0s; cache_policy.cacheable false; cache_policy.ttl 0s; cache_policy.max_keys 0; " +
			"escrow_keys [" + esc + "]; escrow_retention none; kek_version 1"},
		{id: "policy-update", op: "policy.update", policy: "pay", reason: "updated policy pay for keys created from now on: " +
			"default_use_policy.operations [get] -> [get,encrypt]; cache_policy.ttl 0s -> 1h0m0s"},
		{id: "policy-update-same", op: "policy.update", policy: "pay", reason: "updated policy pay: unchanged"},
		{id: "policy-rotate", op: "policy.update", policy: "pay", reason: "updated policy pay for keys created from now on: kek_version 1 -> 2"},
	} {
		es := byID[w.id]
		if len(es) != 1 {
			t.Errorf("%s: %d entries, want 1: %v", w.id, len(es), es)
			continue
		}
		e := es[0]
		outcome := w.outcome
		if outcome == cofferv1.AuditOutcome_AUDIT_OUTCOME_UNSPECIFIED {
			outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED
		}
		reasonOK := e.GetReason() == w.reason
		if outcome != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
			reasonOK = strings.HasPrefix(e.GetReason(), w.reason)
		}
		if e.GetOperation() != w.op || e.GetOutcome() != outcome || e.GetNode() != tc.cfgs[f].ID || !reasonOK ||
			e.GetClient() != w.client || e.GetResource() != w.resource || e.GetPolicy() != w.policy {
			t.Errorf("%s: entry\n  %s %v node %s client %q resource %q policy %q\n  reason %q\nwant\n  %s %v node %s client %q resource %q policy %q\n  reason %q",
				w.id, e.GetOperation(), e.GetOutcome(), e.GetNode(), e.GetClient(), e.GetResource(), e.GetPolicy(), e.GetReason(),
				w.op, outcome, tc.cfgs[f].ID, w.client, w.resource, w.policy, w.reason)
		}
	}
	if es := byID["revoke-cert-mismatch"]; len(es) != 1 || !strings.HasPrefix(es[0].GetReason(), "InvalidArgument") {
		t.Errorf("refused revocation: entries %v, want one InvalidArgument", es)
	}

	// Nothing secret: neither KEK version's wrapped bytes, nor the escrow
	// key's, appear in any entry.
	stored, err := tc.nodes[l].FSM().Policy("pay")
	must("read policy", err)
	secrets := [][]byte{pubDER}
	for _, k := range stored.GetKeks() {
		secrets = append(secrets, k.GetWrapped())
	}
	if len(secrets) != 3 {
		t.Fatalf("policy holds %d wrapped KEKs, want 2", len(secrets)-1)
	}
	for _, es := range byID {
		for _, e := range es {
			raw, err := proto.Marshal(e)
			must("marshal entry", err)
			for _, s := range secrets {
				if len(s) == 0 || bytes.Contains(raw, s) {
					t.Fatalf("entry %d (%s) holds secret bytes (or a KEK is empty)", e.GetSeq(), e.GetRequestId())
				}
			}
		}
	}
}
