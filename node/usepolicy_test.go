package node

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// TestNode_UsePoliciesAndKEKRotation enforces key use policies (allowed
// operations, validity window) on leader and follower, returns them with
// the key, and rotates a policy's KEK: new keys use the new version, old
// keys still open everywhere.
func TestNode_UsePoliciesAndKEKRotation(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	now := time.Now()
	create := func(name string, u *cofferv1.KeyUsePolicy) {
		t.Helper()
		if _, err := admin.policy[f].CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: name, DefaultUsePolicy: u}); err != nil {
			t.Fatal(err)
		}
	}
	create("describe-only", &cofferv1.KeyUsePolicy{Operations: []string{"describe"}})
	create("later", &cofferv1.KeyUsePolicy{NotBefore: timestamppb.New(now.Add(time.Hour))})
	create("short", &cofferv1.KeyUsePolicy{NotAfter: timestamppb.New(now.Add(2 * time.Second))})
	gen := func(pol string) string {
		t.Helper()
		r, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Policy: pol, Resource: "use"})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetKey().GetGkid()
	}
	dOnly, later, short := gen("describe-only"), gen("later"), gen("short")
	for _, i := range []int{l, f} {
		_, err := admin.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: dOnly})
		wantCode(t, "operation not in use policy", err, codes.PermissionDenied, "use policy")
		d, err := admin.keys[i].DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: dOnly})
		if err != nil || len(d.GetKey().GetUsePolicy().GetOperations()) != 1 {
			t.Fatalf("describe returns the use policy: %+v %v", d, err)
		}
		_, err = admin.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: later})
		wantCode(t, "not yet valid", err, codes.FailedPrecondition, "may be used from")
		if _, err := admin.keys[i].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: short}); err != nil {
			t.Fatalf("key within its window: %v", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := admin.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: short})
		if err != nil {
			wantCode(t, "expired", err, codes.FailedPrecondition, "could be used until")
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("key still served after its not_after")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// KEK rotation.
	oldKey := gen("default")
	up, err := admin.policy[f].UpdatePolicy(ctx, &cofferv1.UpdatePolicyRequest{Name: "default", RotateKek: true})
	if err != nil {
		t.Fatal(err)
	}
	if up.GetPolicy().GetKekVersion() != 2 || up.GetPolicy().GetRevision() != 2 {
		t.Fatalf("after rotation: %+v", up.GetPolicy())
	}
	newKey, err := admin.keys[f].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "use"})
	if err != nil {
		t.Fatal(err)
	}
	if newKey.GetKey().GetKekVersion() != 2 {
		t.Fatalf("new key under kek version %d", newKey.GetKey().GetKekVersion())
	}
	for i := range tc.nodes {
		tc.mustGet(i, oldKey)
		tc.mustGet(i, newKey.GetKey().GetGkid())
	}
	_, err = admin.policy[l].UpdatePolicy(ctx, &cofferv1.UpdatePolicyRequest{Name: "default", DefaultUsePolicy: &cofferv1.KeyUsePolicy{Operations: []string{"fly"}}})
	wantCode(t, "bad use policy", err, codes.InvalidArgument, "fly")
}
