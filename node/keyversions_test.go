package node

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/internal/duration"
)

// TestNode_KeyRotation rotates a key through a follower: every node then
// encrypts under the new version and still decrypts the old one (decided in
// Apply and stale), get names the version it returns and fetches a given
// one; retiring the old version stops its decrypts everywhere; each change
// leaves one audit entry naming the versions, and uses name the version
// they used.
func TestNode_KeyRotation(t *testing.T) {
	tc := mustCluster(t, 3, func(c *Config) { c.KeyRotationCheck = duration.Duration(time.Hour) })
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	gen, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "rot/a"})
	if err != nil {
		t.Fatal(err)
	}
	key := gen.GetKey().GetGkid()
	if md := gen.GetKey(); md.GetVersion() != 1 || len(md.GetVersions()) != 1 {
		t.Fatalf("a new key: version %d, versions %v", md.GetVersion(), md.GetVersions())
	}
	plaintext := []byte("rotate me")
	v1ct, err := admin.crypto[f].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: key, Plaintext: plaintext})
	if err != nil || v1ct.GetKeyVersion() != 1 {
		t.Fatalf("encrypt before rotation: version %d, %v", v1ct.GetKeyVersion(), err)
	}
	v1, err := admin.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: key})
	if err != nil || v1.GetVersion() != 1 {
		t.Fatalf("get before rotation: version %d, %v", v1.GetVersion(), err)
	}

	rc := metadata.AppendToOutgoingContext(ctx, RequestIDKey, "rotate-1")
	rot, err := admin.keys[f].RotateKey(rc, &cofferv1.RotateKeyRequest{Gkid: key, Reason: "yearly"})
	if err != nil {
		t.Fatal(err)
	}
	if md := rot.GetKey(); md.GetVersion() != 2 || len(md.GetVersions()) != 2 || md.GetVersions()[0].GetEncryptions() != 1 {
		t.Fatalf("after rotation: version %d, versions %v", md.GetVersion(), md.GetVersions())
	}
	for i := range tc.nodes {
		for _, cons := range []cofferv1.Consistency{cofferv1.Consistency_CONSISTENCY_LINEARIZABLE, cofferv1.Consistency_CONSISTENCY_STALE} {
			tc.waitApplied(i, tc.nodes[l].FSM().AppliedIndex())
			enc, err := admin.crypto[i].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: key, Plaintext: plaintext, Consistency: cons})
			if err != nil || enc.GetKeyVersion() != 2 {
				t.Fatalf("encrypt on %s (%v): version %d, %v", tc.cfgs[i].ID, cons, enc.GetKeyVersion(), err)
			}
			for _, ct := range [][]byte{v1ct.GetCiphertext(), enc.GetCiphertext()} {
				dec, err := admin.crypto[i].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: ct, Consistency: cons})
				if err != nil || !bytes.Equal(dec.GetPlaintext(), plaintext) {
					t.Fatalf("decrypt on %s (%v): %v", tc.cfgs[i].ID, cons, err)
				}
			}
		}
		newest, err := admin.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: key})
		if err != nil || newest.GetVersion() != 2 || bytes.Equal(newest.GetMaterial(), v1.GetMaterial()) {
			t.Fatalf("get on %s: version %d, %v", tc.cfgs[i].ID, newest.GetVersion(), err)
		}
		old, err := admin.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: key, Version: 1})
		if err != nil || old.GetVersion() != 1 || !bytes.Equal(old.GetMaterial(), v1.GetMaterial()) {
			t.Fatalf("get --version 1 on %s: version %d, %v", tc.cfgs[i].ID, old.GetVersion(), err)
		}
		_, err = admin.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: key, Version: 3})
		wantCode(t, "get of a version that does not exist", err, codes.FailedPrecondition, "has no version 3; its newest is 2")
	}
	// Re-encrypt moves the old ciphertext to the newest version.
	re, err := admin.crypto[l].ReEncrypt(ctx, &cofferv1.ReEncryptRequest{Ciphertext: v1ct.GetCiphertext()})
	if err != nil || re.GetSourceKeyVersion() != 1 || re.GetKeyVersion() != 2 {
		t.Fatalf("re-encrypt: %v -> %v, %v", re.GetSourceKeyVersion(), re.GetKeyVersion(), err)
	}

	_, err = admin.keys[f].RetireKeyVersion(ctx, &cofferv1.RetireKeyVersionRequest{Gkid: key, Version: 2})
	wantCode(t, "retire the newest", err, codes.FailedPrecondition, "is key "+key+"'s newest")
	_, err = admin.keys[f].RetireKeyVersion(ctx, &cofferv1.RetireKeyVersionRequest{Gkid: key, Version: 0})
	wantCode(t, "retire version 0", err, codes.InvalidArgument, "name the version to retire")
	_, err = admin.keys[f].RetireKeyVersion(ctx, &cofferv1.RetireKeyVersionRequest{Gkid: key, Version: 9})
	wantCode(t, "retire a version that does not exist", err, codes.NotFound, "has no version 9")
	retc := metadata.AppendToOutgoingContext(ctx, RequestIDKey, "retire-1")
	ret, err := admin.keys[f].RetireKeyVersion(retc, &cofferv1.RetireKeyVersionRequest{Gkid: key, Version: 1})
	if err != nil || ret.GetKey().GetVersions()[0].GetRetiredAt() == nil {
		t.Fatalf("retire version 1: %v %v", ret, err)
	}
	for i := range tc.nodes {
		_, err := admin.crypto[i].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: v1ct.GetCiphertext()})
		wantCode(t, "decrypt under a retired version on "+tc.cfgs[i].ID, err, codes.FailedPrecondition, "version 1 of key "+key+" was retired")
		_, err = admin.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: key, Version: 1})
		wantCode(t, "get of a retired version", err, codes.FailedPrecondition, "was retired")
		rec, err := tc.nodes[i].FSM().Key(key)
		if err != nil || len(rec.GetVersions()[0].GetWrappedMaterial()) != 0 {
			t.Fatalf("%s still holds version 1's material (%v)", tc.cfgs[i].ID, err)
		}
	}
	if _, err := admin.crypto[l].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: re.GetCiphertext()}); err != nil {
		t.Fatalf("the re-encrypted ciphertext: %v", err)
	}
	// Destroy removes every version's material.
	if _, err := admin.keys[f].SetKeyState(ctx, &cofferv1.SetKeyStateRequest{Gkid: key, State: cofferv1.KeyState_KEY_STATE_DESTROYED}); err != nil {
		t.Fatal(err)
	}
	_, err = admin.keys[f].RotateKey(ctx, &cofferv1.RotateKeyRequest{Gkid: key})
	wantCode(t, "rotate a destroyed key", err, codes.FailedPrecondition, "is destroyed")
	tc.waitApplied(l, tc.nodes[l].FSM().AppliedIndex())
	rec, err := tc.nodes[l].FSM().Key(key)
	if err != nil || len(rec.GetWrappedMaterial()) != 0 || len(rec.GetVersions()[0].GetWrappedMaterial()) != 0 {
		t.Fatalf("destroyed key still holds material (%v)", err)
	}

	byID := tc.entriesByRequestID(l, fsm.AuditFilter{})
	for id, want := range map[string]struct {
		op, reason string
		version    uint32
	}{
		"rotate-1": {"rotate", "version 1 -> 2: yearly", 2},
		"retire-1": {"destroy", "version 1 retired", 1},
	} {
		es := byID[id]
		if len(es) != 1 || es[0].GetOperation() != want.op || !strings.Contains(es[0].GetReason(), want.reason) || es[0].GetKeyVersion() != want.version {
			t.Fatalf("request %s: entries %v, want one %s with %q, key version %d", id, es, want.op, want.reason, want.version)
		}
	}
	uses, _, err := tc.nodes[l].FSM().AuditEntries(0, 100000, fsm.AuditFilter{GKID: key, Operation: "decrypt"})
	if err != nil {
		t.Fatal(err)
	}
	versions := map[uint32]int{}
	for _, e := range uses {
		versions[e.GetKeyVersion()]++
	}
	if versions[1] == 0 || versions[2] == 0 || versions[0] != 0 {
		t.Fatalf("decrypt entries by key version: %v", versions)
	}
}

// TestNode_EncryptionLimitAndAutomaticRotation: a use policy's limit of
// encryptions per version refuses the next one, on every node, until the
// key is rotated; a policy's rotation count makes the leader rotate its keys
// on its own, with an audit entry whose caller is the leader.
func TestNode_EncryptionLimitAndAutomaticRotation(t *testing.T) {
	tc := mustCluster(t, 3, func(c *Config) { c.KeyRotationCheck = duration.Duration(100 * time.Millisecond) })
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	for _, p := range []*cofferv1.CreatePolicyRequest{
		{Name: "limited", DefaultUsePolicy: &cofferv1.KeyUsePolicy{MaxEncryptions: 2, RotationPeriod: durationpb.New(1000 * time.Hour)}},
		{Name: "rotating", DefaultUsePolicy: &cofferv1.KeyUsePolicy{RotateAfterEncryptions: 2}},
	} {
		if _, err := admin.policy[l].CreatePolicy(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	_, err := admin.policy[l].CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: "bad",
		DefaultUsePolicy: &cofferv1.KeyUsePolicy{RotationPeriod: durationpb.New(time.Minute)}})
	wantCode(t, "a rotation period of a minute", err, codes.InvalidArgument, "rotation_period must be at least 1h0m0s")
	_, err = admin.policy[l].CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: "bad",
		DefaultUsePolicy: &cofferv1.KeyUsePolicy{MaxEncryptions: authz.NonceBound + 1}})
	wantCode(t, "a limit above 2^32", err, codes.InvalidArgument, "at most 2^32")

	rotating, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "rot/b", Policy: "rotating"})
	if err != nil {
		t.Fatal(err)
	}
	key := rotating.GetKey().GetGkid()
	for i := range 2 {
		if _, err := admin.crypto[i%len(tc.nodes)].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: key, Plaintext: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		md, err := admin.keys[f].DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: key})
		if err != nil {
			t.Fatal(err)
		}
		if md.GetKey().GetVersion() == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not rotated automatically after 2 encryptions: %v", md.GetKey().GetVersions())
		}
		time.Sleep(50 * time.Millisecond)
	}
	entries, _, err := tc.nodes[l].FSM().AuditEntries(0, 100000, fsm.AuditFilter{GKID: key, Operation: "rotate"})
	if err != nil || len(entries) != 1 || !strings.HasPrefix(entries[0].GetCaller(), "node:") ||
		!strings.Contains(entries[0].GetReason(), "automatic: version 1 did 2 encryptions") {
		t.Fatalf("automatic rotation entries: %v, %v", entries, err)
	}

	// The limit: the third encryption under one version is refused. The
	// three are decided in one Apply, before a rotation scan can rotate the
	// key at its limit.
	gen, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "rot/c", Policy: "limited"})
	if err != nil {
		t.Fatal(err)
	}
	lim := gen.GetKey().GetGkid()
	b, err := admin.crypto[f].EncryptBatch(ctx, &cofferv1.EncryptBatchRequest{Items: []*cofferv1.EncryptRequest{
		{Gkid: lim, Plaintext: []byte("1")}, {Gkid: lim, Plaintext: []byte("2")}, {Gkid: lim, Plaintext: []byte("3")}}})
	if err != nil {
		t.Fatal(err)
	}
	res := b.GetResults()
	if res[0].GetError() != nil || res[1].GetError() != nil || res[2].GetError().GetCode() != uint32(codes.FailedPrecondition) ||
		!strings.Contains(res[2].GetError().GetMessage(), "has done 2 encryptions, its limit; rotate the key") {
		t.Fatalf("batch of three under a limit of two: %v", res)
	}
}

// TestNode_AmendKeyUsePolicy: a security officer's amendment of one key's
// use policy is enforced by every node for the next request, is audited
// with what changed, and is refused to a caller without policy.update.
func TestNode_AmendKeyUsePolicy(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	gen, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "amend/a"})
	if err != nil {
		t.Fatal(err)
	}
	key := gen.GetKey().GetGkid()
	enc, err := admin.crypto[f].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: key, Plaintext: []byte("x")})
	if err != nil {
		t.Fatal(err)
	}
	app := tc.ungrantedClient(admin, l, "plainapp")
	_, err = app.keys[f].AmendKeyUsePolicy(ctx, &cofferv1.AmendKeyUsePolicyRequest{Gkid: key, UsePolicy: &cofferv1.KeyUsePolicy{}})
	wantCode(t, "amend without policy.update", err, codes.PermissionDenied, "policy.update")
	_, err = admin.keys[f].AmendKeyUsePolicy(ctx, &cofferv1.AmendKeyUsePolicyRequest{Gkid: key})
	wantCode(t, "amend without a policy", err, codes.InvalidArgument, "use_policy is required")
	_, err = admin.keys[f].AmendKeyUsePolicy(ctx, &cofferv1.AmendKeyUsePolicyRequest{Gkid: key, UsePolicy: &cofferv1.KeyUsePolicy{Operations: []string{"policy.read"}}})
	wantCode(t, "amend to an administrative operation", err, codes.InvalidArgument, "is not a key operation")

	ac := metadata.AppendToOutgoingContext(ctx, RequestIDKey, "amend-1")
	r, err := admin.keys[f].AmendKeyUsePolicy(ac, &cofferv1.AmendKeyUsePolicyRequest{Gkid: key, Reason: "decrypt only from now",
		UsePolicy: &cofferv1.KeyUsePolicy{Operations: []string{"decrypt", "describe"}}})
	if err != nil || r.GetKey().GetRevision() != 2 {
		t.Fatalf("amend: %v %v", r, err)
	}
	for i := range tc.nodes {
		_, err := admin.crypto[i].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: key, Plaintext: []byte("x")})
		wantCode(t, "encrypt after the amendment on "+tc.cfgs[i].ID, err, codes.PermissionDenied, "does not allow encrypt")
		if _, err := admin.crypto[i].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: enc.GetCiphertext()}); err != nil {
			t.Fatalf("decrypt after the amendment on %s: %v", tc.cfgs[i].ID, err)
		}
	}
	es := tc.entriesByRequestID(l, fsm.AuditFilter{})["amend-1"]
	if len(es) != 1 || es[0].GetOperation() != "policy.update" || es[0].GetGkid() != key ||
		!strings.Contains(es[0].GetReason(), "use_policy.operations any -> [decrypt,describe]: decrypt only from now") {
		t.Fatalf("amendment entries: %v", es)
	}
}
