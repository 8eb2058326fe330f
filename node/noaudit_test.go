//go:build coffer_noaudit

package node

import (
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// TestNoAudit_WritesAndReads checks that the measuring build (make
// run-noaudit) still serves what the benchmark does: several writes, whose
// commands carry an empty entry, and linearizable reads through a
// follower. make test runs it with -tags coffer_noaudit.
func TestNoAudit_WritesAndReads(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	l := tc.waitLeader()
	f := tc.follower()
	admin := tc.identity("app")
	for i := range 3 {
		k := tc.mustGenerate(l, "noaudit/"+string(rune('a'+i)), "")
		if _, err := admin.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: k.GetGkid()}); err != nil {
			t.Fatalf("get %d through a follower: %v", i, err)
		}
	}
	if seq := tc.nodes[l].FSM().AuditHeadSeq(); seq > 3 {
		t.Fatalf("the noaudit build linked %d entries; reads should add none", seq)
	}
}
