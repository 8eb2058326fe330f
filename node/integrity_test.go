package node

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/fsm"
)

// TestNode_TamperedRecordsRefused edits key records inside a stopped node's
// real Pebble store (a changed field, a flipped bit in the material, a record
// swapped with another, a truncated record, material pasted from another
// key) and proves the node refuses each with DataLoss while still serving the
// untouched key, and while the other nodes still serve every key.
func TestNode_TamperedRecordsRefused(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	var gkids []string
	materials := map[string][]byte{}
	for i := 0; i < 6; i++ {
		md := tc.mustGenerate(tc.waitLeader(), "tamper", "")
		gkids = append(gkids, md.GetGkid())
		materials[md.GetGkid()] = tc.mustGet(0, md.GetGkid())
	}
	f := tc.follower()
	tc.mustGet(f, gkids[5]) // the follower has applied everything
	tc.stop(f)

	db, err := pebble.Open(filepath.Join(tc.cfgs[f].DataDir, "state"), &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	raw := func(gk string) []byte {
		v, closer, err := db.Get([]byte("k/" + gk))
		if err != nil {
			t.Fatal(err)
		}
		defer closer.Close()
		return append([]byte(nil), v...)
	}
	rec := func(gk string) *cofferv1.KeyRecord {
		var r cofferv1.KeyRecord
		if err := proto.Unmarshal(raw(gk), &r); err != nil {
			t.Fatal(err)
		}
		return &r
	}
	put := func(gk string, v []byte) {
		if err := db.Set([]byte("k/"+gk), v, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	marshal := func(r *cofferv1.KeyRecord) []byte {
		b, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := map[string]string{}
	// 0: a metadata field changed (the key moved to another resource).
	r0 := rec(gkids[0])
	r0.Resource = "other"
	put(gkids[0], marshal(r0))
	cases[gkids[0]] = "changed resource"
	// 1: one bit of the wrapped material flipped.
	r1 := rec(gkids[1])
	r1.WrappedMaterial[len(r1.WrappedMaterial)/2] ^= 0x01
	put(gkids[1], marshal(r1))
	cases[gkids[1]] = "flipped material bit"
	// 2: another key's whole record stored under this GKID.
	put(gkids[2], raw(gkids[3]))
	cases[gkids[2]] = "swapped record"
	// 3: the record truncated.
	b3 := raw(gkids[3])
	put(gkids[3], b3[:len(b3)*2/3])
	cases[gkids[3]] = "truncated record"
	// 4: another key's wrapped material pasted into this record.
	r4 := rec(gkids[4])
	r4.WrappedMaterial = rec(gkids[5]).WrappedMaterial
	put(gkids[4], marshal(r4))
	cases[gkids[4]] = "pasted material"
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	tc.start(f)
	tc.mustGet(f, gkids[5]) // untouched key still served (waits for the node)
	ctx := ctxT(t)
	start := tc.nodes[tc.waitLeader()].FSM().AuditHeadSeq()
	for gk, what := range cases {
		_, err := tc.keys(f).GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk})
		if status.Code(err) != codes.DataLoss {
			t.Errorf("%s: get = %v, want DataLoss", what, err)
		}
		_, err = tc.keys(f).DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: gk})
		if status.Code(err) != codes.DataLoss {
			t.Errorf("%s: describe = %v, want DataLoss", what, err)
		}
		// The untampered replicas still serve the key.
		for i := range tc.nodes {
			if i != f {
				if got := tc.mustGet(i, gk); string(got) != string(materials[gk]) {
					t.Fatalf("%s: node %d lost the key", what, i)
				}
			}
		}
	}
	_, err = tc.keys(f).ListKeys(ctx, &cofferv1.ListKeysRequest{Resource: "tamper"})
	if status.Code(err) != codes.DataLoss {
		t.Errorf("list over tampered records = %v, want DataLoss", err)
	}
	// The log records those reads as what they were: failures on that node.
	// (The leader has applied every entry it acknowledged.)
	l := tc.waitLeader()
	for gk, what := range cases {
		entries, _, err := tc.nodes[l].FSM().AuditEntries(start, 100000, fsm.AuditFilter{GKID: gk})
		if err != nil {
			t.Fatal(err)
		}
		seen := 0
		for _, e := range entries {
			if e.GetNode() != tc.cfgs[f].ID || (e.GetOperation() != "get" && e.GetOperation() != "describe") {
				continue
			}
			seen++
			if e.GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED || !strings.HasPrefix(e.GetReason(), "DataLoss") {
				t.Errorf("%s: %s on the tampered node logged as %v %q", what, e.GetOperation(), e.GetOutcome(), e.GetReason())
			}
		}
		if seen != 2 {
			t.Errorf("%s: %d entries for the tampered node's reads, want 2", what, seen)
		}
	}
}

// TestNode_TamperedAccessRecordsRefused edits access-governing records in a
// stopped follower's store, keeping their old integrity tags: a deactivated
// client switched back to active, an ACL rule widened, and a policy given
// an attacker's escrow key. The follower refuses each: the client and rule
// grant nothing, and the policy reads fail with DataLoss.
func TestNode_TamperedAccessRecordsRefused(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l := tc.waitLeader()
	tc.mustRegisterApp(admin, l, "bob")
	ruleID := tc.mustGrant(admin, l, "client:bob", "bob/**", "get")
	tc.mustRegisterApp(admin, l, "carol")
	if _, err := admin.access[l].SetClientActive(ctx, &cofferv1.SetClientActiveRequest{Name: "carol", Active: false}); err != nil {
		t.Fatal(err)
	}
	tc.mustGrant(admin, l, "client:carol", "**", "get")
	bobKey := tc.mustGenerate(l, "bob/a", "")
	otherKey := tc.mustGenerate(l, "other/a", "")
	bob, carol := tc.identity("bob"), tc.identity("carol")
	f := tc.follower()
	if _, err := bob.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: bobKey.GetGkid()}); err != nil {
		t.Fatalf("bob before tampering: %v", err)
	}
	tc.stop(f)

	db, err := pebble.Open(filepath.Join(tc.cfgs[f].DataDir, "state"), &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	edit := func(key string, m proto.Message, change func()) {
		t.Helper()
		v, closer, err := db.Get([]byte(key))
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if err := proto.Unmarshal(v, m); err != nil {
			t.Fatal(err)
		}
		closer.Close()
		change()
		b, _ := proto.Marshal(m)
		if err := db.Set([]byte(key), b, pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	var carolRec cofferv1.ClientRecord
	edit("c/carol", &carolRec, func() { carolRec.Active = true })
	var r cofferv1.AclRule
	edit("a/"+ruleID, &r, func() { r.ResourcePattern = "**" })
	var pol cofferv1.PolicyRecord
	edit("p/default", &pol, func() {
		pol.EscrowKeys = append(pol.EscrowKeys, &cofferv1.EscrowKey{Id: "attacker", PublicKey: []byte("x")})
	})
	_ = db.Close()
	tc.start(f)
	l = tc.waitLeader()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, id := tc.nodes[f].Raft().LeaderWithID()
		if id != "" && tc.nodes[f].FSM().AppliedIndex() >= tc.nodes[l].FSM().AppliedIndex() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("restarted follower did not catch up")
		}
		time.Sleep(10 * time.Millisecond)
	}

	_, err = carol.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: bobKey.GetGkid()})
	wantCode(t, "re-activated client", err, codes.PermissionDenied, "")
	_, err = bob.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: otherKey.GetGkid()})
	wantCode(t, "widened rule", err, codes.PermissionDenied, "")
	_, err = admin.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: otherKey.GetGkid()})
	wantCode(t, "policy with an added escrow key", err, codes.DataLoss, "integrity")
	_, err = admin.policy[f].GetPolicy(ctx, &cofferv1.GetPolicyRequest{Name: "default"})
	wantCode(t, "policy read", err, codes.DataLoss, "integrity")
	// The untouched replicas are unaffected.
	if _, err := admin.keys[l].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: otherKey.GetGkid()}); err != nil {
		t.Fatalf("leader: %v", err)
	}
}
