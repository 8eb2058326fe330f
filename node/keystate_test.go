package node

import (
	"bytes"
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/escrow"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/internal/duration"
)

// TestNode_KeyLifecycle moves keys through their states through a
// follower; every node enforces each state for the very next request:
// deactivated and compromised keys only decrypt, a compromised key is
// flagged in responses and audit entries, a destroyed key has no material
// left in state, transitions never go back, a pre-active key becomes active
// at its activation time, and each change needs its own grant and leaves
// one audit entry naming the old and the new state.
func TestNode_KeyLifecycle(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	gen := func(req *cofferv1.GenerateKeyRequest) string {
		t.Helper()
		req.Resource = "life/a"
		r, err := admin.keys[l].GenerateKey(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return r.GetKey().GetGkid()
	}
	set := func(id string, st cofferv1.KeyState, requestID string) (*cofferv1.SetKeyStateResponse, error) {
		c := metadata.AppendToOutgoingContext(ctx, RequestIDKey, requestID)
		return admin.keys[f].SetKeyState(c, &cofferv1.SetKeyStateRequest{Gkid: id, State: st, Reason: "rotation " + requestID})
	}
	key := gen(&cofferv1.GenerateKeyRequest{})
	plaintext := []byte("lifecycle")
	enc, err := admin.crypto[l].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: key, Plaintext: plaintext})
	if err != nil {
		t.Fatal(err)
	}
	decrypts := func(want cofferv1.KeyState) {
		t.Helper()
		for i := range tc.nodes {
			r, err := admin.crypto[i].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
			if err != nil || !bytes.Equal(r.GetPlaintext(), plaintext) || r.GetKeyState() != want {
				t.Fatalf("decrypt on %s: %v, key state %v (want %v)", tc.cfgs[i].ID, err, r.GetKeyState(), want)
			}
		}
	}
	refused := func(what, msg string) {
		t.Helper()
		for i := range tc.nodes {
			_, err := admin.crypto[i].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: key, Plaintext: plaintext})
			wantCode(t, what+": encrypt on "+tc.cfgs[i].ID, err, codes.FailedPrecondition, msg)
			_, err = admin.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: key})
			wantCode(t, what+": get on "+tc.cfgs[i].ID, err, codes.FailedPrecondition, msg)
		}
	}

	r, err := set(key, cofferv1.KeyState_KEY_STATE_DEACTIVATED, "deactivate-1")
	if err != nil || r.GetKey().GetState() != cofferv1.KeyState_KEY_STATE_DEACTIVATED || r.GetKey().GetRevision() != 2 || r.GetKey().GetStateChangedAt() == nil {
		t.Fatalf("deactivate: %v %v", r, err)
	}
	refused("deactivated", "is deactivated; it only decrypts")
	decrypts(cofferv1.KeyState_KEY_STATE_DEACTIVATED)
	_, err = set(key, cofferv1.KeyState_KEY_STATE_ACTIVE, "reactivate")
	wantCode(t, "no way back", err, codes.FailedPrecondition, "is deactivated and cannot become active")

	if _, err := set(key, cofferv1.KeyState_KEY_STATE_COMPROMISED, "compromise-1"); err != nil {
		t.Fatal(err)
	}
	refused("compromised", "is compromised; it only decrypts")
	decrypts(cofferv1.KeyState_KEY_STATE_COMPROMISED)
	if _, err := admin.crypto[f].Decrypt(metadata.AppendToOutgoingContext(ctx, RequestIDKey, "decrypt-compromised"),
		&cofferv1.DecryptRequest{Ciphertext: enc.GetCiphertext()}); err != nil {
		t.Fatal(err)
	}
	d, err := admin.keys[l].DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: key})
	if err != nil || !d.GetKey().GetCompromised() {
		t.Fatalf("describe a compromised key: %v %v", d, err)
	}

	// A client granted "state" may not destroy.
	stateOnly := tc.ungrantedClient(admin, l, "keeper")
	tc.mustGrant(admin, l, "client:keeper", "life/**", "state", "describe")
	_, err = stateOnly.keys[f].SetKeyState(ctx, &cofferv1.SetKeyStateRequest{Gkid: key, State: cofferv1.KeyState_KEY_STATE_DESTROYED})
	wantCode(t, "destroy without its grant", err, codes.PermissionDenied, "holds no grant for destroy")

	if _, err := set(key, cofferv1.KeyState_KEY_STATE_DESTROYED, "destroy-1"); err != nil {
		t.Fatal(err)
	}
	for i := range tc.nodes {
		_, err := admin.crypto[i].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: enc.GetCiphertext()})
		wantCode(t, "decrypt after destroy on "+tc.cfgs[i].ID, err, codes.FailedPrecondition, "is destroyed; its material is gone")
		d, err := admin.keys[i].DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: key})
		if err != nil || d.GetKey().GetState() != cofferv1.KeyState_KEY_STATE_DESTROYED || !d.GetKey().GetCompromised() {
			t.Fatalf("describe a destroyed key on %s: %v %v", tc.cfgs[i].ID, d, err)
		}
		if rec, err := tc.nodes[i].FSM().Key(key); err != nil || len(rec.GetWrappedMaterial()) != 0 || len(rec.GetEscrow()) != 0 {
			t.Fatalf("destroyed record on %s still holds material: %v", tc.cfgs[i].ID, err)
		}
	}
	// Listing shows a destroyed key (there is nothing to verify).
	for i := range tc.nodes {
		list, err := admin.keys[i].ListKeys(ctx, &cofferv1.ListKeysRequest{Resource: "life/a"})
		if err != nil {
			t.Fatalf("list after a destroy on %s: %v", tc.cfgs[i].ID, err)
		}
		found := false
		for _, k := range list.GetKeys() {
			found = found || k.GetGkid() == key && k.GetState() == cofferv1.KeyState_KEY_STATE_DESTROYED
		}
		if !found {
			t.Fatalf("list on %s does not show the destroyed key", tc.cfgs[i].ID)
		}
	}
	// A repeated change (a retry) succeeds and changes nothing.
	again, err := set(key, cofferv1.KeyState_KEY_STATE_DESTROYED, "destroy-again")
	if err != nil || again.GetKey().GetRevision() != 4 {
		t.Fatalf("destroy twice: %v %v", again, err)
	}

	// Pre-active keys: by time, or by activation.
	soon := gen(&cofferv1.GenerateKeyRequest{ActivateAt: timestamppb.New(time.Now().Add(1500 * time.Millisecond))})
	later := gen(&cofferv1.GenerateKeyRequest{ActivateAt: timestamppb.New(time.Now().Add(time.Hour))})
	for _, id := range []string{soon, later} {
		_, err = admin.crypto[f].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: id, Plaintext: plaintext})
		wantCode(t, "pre-active", err, codes.FailedPrecondition, "is pre-active; it is used once activated")
	}
	if _, err := set(later, cofferv1.KeyState_KEY_STATE_ACTIVE, "activate-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.crypto[f].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: later, Plaintext: plaintext}); err != nil {
		t.Fatalf("encrypt after activation: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := admin.crypto[f].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: soon, Plaintext: plaintext})
		if err == nil {
			break
		}
		wantCode(t, "before its activation time", err, codes.FailedPrecondition, "pre-active")
		if time.Now().After(deadline) {
			t.Fatal("key still pre-active 10 s after its activation time")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Deactivating a key that became active by its time is a change from
	// active.
	if _, err := set(soon, cofferv1.KeyState_KEY_STATE_DEACTIVATED, "deactivate-2"); err != nil {
		t.Fatal(err)
	}

	// Bad requests change nothing.
	for _, c := range []struct {
		req  *cofferv1.SetKeyStateRequest
		want string
	}{
		{&cofferv1.SetKeyStateRequest{Gkid: later, State: cofferv1.KeyState_KEY_STATE_PRE_ACTIVE}, "not KEY_STATE_PRE_ACTIVE"},
		{&cofferv1.SetKeyStateRequest{Gkid: later, State: cofferv1.KeyState_KEY_STATE_DEACTIVATED, DestroyEscrow: true}, "destroy_escrow goes with state DESTROYED"},
		{&cofferv1.SetKeyStateRequest{Gkid: later, State: cofferv1.KeyState_KEY_STATE_DEACTIVATED, Reason: strings.Repeat("x", 300)}, "reason is 300 bytes"},
		{&cofferv1.SetKeyStateRequest{Gkid: "nope", State: cofferv1.KeyState_KEY_STATE_DEACTIVATED}, ""},
	} {
		_, err := admin.keys[f].SetKeyState(ctx, c.req)
		wantCode(t, "bad request", err, codes.InvalidArgument, c.want)
	}

	// One entry per change, naming the old and the new state.
	byID := tc.entriesByRequestID(l, fsm.AuditFilter{})
	for id, want := range map[string]string{
		"deactivate-1":  "state active -> deactivated: rotation deactivate-1",
		"compromise-1":  "state deactivated -> compromised",
		"destroy-1":     "state compromised -> destroyed",
		"activate-1":    "state pre-active -> active",
		"deactivate-2":  "state active -> deactivated",
		"reactivate":    "cannot become active",
		"destroy-again": "state destroyed, unchanged",
	} {
		es := byID[id]
		if len(es) != 1 || !strings.Contains(es[0].GetReason(), want) {
			t.Fatalf("request %s: entries %v, want one with %q", id, es, want)
		}
		op := "state"
		if strings.HasPrefix(id, "destroy") {
			op = "destroy"
		}
		if es[0].GetOperation() != op || es[0].GetGkid() == "" {
			t.Errorf("request %s: entry %v", id, es[0])
		}
	}
	if es := byID["decrypt-compromised"]; len(es) != 1 || es[0].GetReason() != authz.CompromisedKey {
		t.Errorf("decrypt under a compromised key: entries %v, want one whose reason flags the key", es)
	}
}

// TestNode_DestroyEscrowedKey: a key with escrow copies is destroyed only
// when the request says its copies go too.
func TestNode_DestroyEscrowedKey(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l := tc.waitLeader()
	officer, err := escrow.GenerateKey(3072)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&officer.PublicKey)
	if _, err := admin.policy[l].CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: "escrowed",
		EscrowKeys: []*cofferv1.EscrowKeyInfo{{PublicKey: pubDER, Label: "officer"}}}); err != nil {
		t.Fatal(err)
	}
	k, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Policy: "escrowed", Resource: "life/e"})
	if err != nil {
		t.Fatal(err)
	}
	id := k.GetKey().GetGkid()
	// Rotated: each version has its own copy, and recovery returns both.
	if _, err := admin.keys[l].RotateKey(ctx, &cofferv1.RotateKeyRequest{Gkid: id}); err != nil {
		t.Fatal(err)
	}
	rotated, err := tc.nodes[l].FSM().Key(id)
	if err != nil {
		t.Fatal(err)
	}
	got, err := escrow.Recover(func(fn func(*cofferv1.KeyRecord) error) error { return fn(rotated) }, officer, []string{id})
	if err != nil || len(got) != 2 {
		t.Fatalf("recovered %d copies of a rotated key (%v), want 2", len(got), err)
	}
	for _, r := range got {
		g, err := admin.keys[l].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: id, Version: r.Version})
		if err != nil || !bytes.Equal(g.GetMaterial(), r.Material) {
			t.Fatalf("version %d recovered from escrow differs from get --version (%v)", r.Version, err)
		}
	}
	_, err = admin.keys[l].RetireKeyVersion(ctx, &cofferv1.RetireKeyVersionRequest{Gkid: id, Version: 1})
	wantCode(t, "retire an escrowed version", err, codes.FailedPrecondition, "has 1 escrow copies")
	if _, err := admin.keys[l].RetireKeyVersion(ctx, &cofferv1.RetireKeyVersionRequest{Gkid: id, Version: 1, DestroyEscrow: true}); err != nil {
		t.Fatal(err)
	}
	_, err = admin.keys[l].SetKeyState(ctx, &cofferv1.SetKeyStateRequest{Gkid: id, State: cofferv1.KeyState_KEY_STATE_DESTROYED})
	wantCode(t, "escrowed key", err, codes.FailedPrecondition, "1 escrow copies")
	if rec, err := tc.nodes[l].FSM().Key(id); err != nil || rec.GetState() != cofferv1.KeyState_KEY_STATE_ACTIVE || len(rec.GetEscrow()) != 1 {
		t.Fatalf("a refused destroy changed the key: %v", err)
	}
	if _, err := admin.keys[l].SetKeyState(context.WithoutCancel(ctx), &cofferv1.SetKeyStateRequest{Gkid: id, State: cofferv1.KeyState_KEY_STATE_DESTROYED, DestroyEscrow: true}); err != nil {
		t.Fatal(err)
	}
	if rec, err := tc.nodes[l].FSM().Key(id); err != nil || len(rec.GetEscrow()) != 0 || len(rec.GetWrappedMaterial()) != 0 {
		t.Fatalf("destroyed with its escrow copies: %v", err)
	}
}

// TestNode_EscrowRetention: under a policy with an escrow retention, a
// version is retired and its key destroyed without destroy_escrow, the
// material goes at once, the escrow copies stay (and still recover the key)
// until their retention ends, and then the leader purges them, with an
// audit entry.
func TestNode_EscrowRetention(t *testing.T) {
	tc := mustCluster(t, 3, func(c *Config) { c.KeyRotationCheck = duration.Duration(100 * time.Millisecond) })
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	officer, err := escrow.GenerateKey(3072)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&officer.PublicKey)
	_, err = admin.policy[l].CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: "bad", EscrowRetention: durationpb.New(-time.Second)})
	wantCode(t, "a negative retention", err, codes.InvalidArgument, "escrow retention must be 0 to")
	if _, err := admin.policy[l].CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: "retained", EscrowRetention: durationpb.New(3 * time.Second),
		EscrowKeys: []*cofferv1.EscrowKeyInfo{{PublicKey: pubDER, Label: "officer"}}}); err != nil {
		t.Fatal(err)
	}
	k, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Policy: "retained", Resource: "life/r"})
	if err != nil {
		t.Fatal(err)
	}
	id := k.GetKey().GetGkid()
	if _, err := admin.keys[f].RotateKey(ctx, &cofferv1.RotateKeyRequest{Gkid: id}); err != nil {
		t.Fatal(err)
	}
	ret, err := admin.keys[f].RetireKeyVersion(ctx, &cofferv1.RetireKeyVersionRequest{Gkid: id, Version: 1})
	if err != nil || ret.GetKey().GetVersions()[0].GetEscrowPurgeAt() == nil {
		t.Fatalf("retire without destroy_escrow under a retention: %v %v", ret, err)
	}
	d, err := admin.keys[f].SetKeyState(ctx, &cofferv1.SetKeyStateRequest{Gkid: id, State: cofferv1.KeyState_KEY_STATE_DESTROYED})
	if err != nil || d.GetKey().GetEscrowPurgeAt() == nil {
		t.Fatalf("destroy without destroy_escrow under a retention: %v %v", d, err)
	}
	rec, err := tc.nodes[l].FSM().Key(id)
	if err != nil || len(rec.GetWrappedMaterial()) != 0 || len(rec.GetVersions()[0].GetWrappedMaterial()) != 0 {
		t.Fatalf("material left after destroy (%v)", err)
	}
	got, err := escrow.Recover(func(fn func(*cofferv1.KeyRecord) error) error { return fn(rec) }, officer, []string{id})
	if err != nil || len(got) != 2 {
		t.Fatalf("recovered %d versions of a destroyed key within its retention (%v), want 2", len(got), err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		rec, err := tc.nodes[f].FSM().Key(id)
		if err != nil {
			t.Fatal(err)
		}
		if escrowCopiesOf(rec) == 0 {
			if rec.GetEscrowPurgeUnixNano() != 0 || rec.GetVersions()[0].GetEscrowPurgeUnixNano() != 0 {
				t.Fatal("purged, but the purge times stay")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("escrow copies not purged after their retention: %d left", escrowCopiesOf(rec))
		}
		time.Sleep(50 * time.Millisecond)
	}
	entries, _, err := tc.nodes[l].FSM().AuditEntries(0, 100000, fsm.AuditFilter{GKID: id, Operation: "destroy"})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, e := range entries {
		reasons = append(reasons, e.GetReason())
	}
	all := strings.Join(reasons, "\n")
	for _, want := range []string{"version 1 retired; 1 escrow copies kept until", "state active -> destroyed; 2 escrow copies kept until", "automatic: "} {
		if !strings.Contains(all, want) {
			t.Fatalf("destroy entries do not say %q:\n%s", want, all)
		}
	}
}
