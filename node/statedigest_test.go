package node

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// waitSameDigest asks cluster status with digests through node via until
// every member reports a digest, all at one index no lower than atLeast
// and all equal, and returns that index and digest.
func (tc *testCluster) waitSameDigest(via int, atLeast uint64) (uint64, []byte) {
	tc.t.Helper()
	ctx := ctxT(tc.t)
	cs := cofferv1.NewClusterServiceClient(tc.connTo(via))
	deadline := time.Now().Add(15 * time.Second)
	last := ""
	for {
		st, err := cs.Status(ctx, &cofferv1.ClusterStatusRequest{Digest: true})
		if err == nil && len(st.GetNodes()) == len(tc.nodes) {
			first := st.GetNodes()[0]
			same := len(first.GetStateDigest()) == 32 && first.GetStateDigestIndex() >= atLeast
			for _, n := range st.GetNodes()[1:] {
				same = same && n.GetStateDigestIndex() == first.GetStateDigestIndex() && bytes.Equal(n.GetStateDigest(), first.GetStateDigest())
			}
			if same {
				return first.GetStateDigestIndex(), first.GetStateDigest()
			}
			last = ""
			for _, n := range st.GetNodes() {
				last += fmt.Sprintf(" %s@%d=%x(%s)", n.GetId(), n.GetStateDigestIndex(), n.GetStateDigest(), n.GetError())
			}
		} else {
			last = fmt.Sprintf("%d nodes, %v", len(st.GetNodes()), err)
		}
		if time.Now().After(deadline) {
			tc.t.Fatalf("members report no common digest at or past index %d:%s", atLeast, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNode_StateDigestAgrees writes keys through the leader and a
// follower, then asks a follower for the cluster status with digests: once
// they have caught up, every member reports the same digest at the same
// index, which is the digest of the leader's own store at that index. Without the flag no digest is computed.
// More writes move every member to a new index with a new digest.
func TestNode_StateDigestAgrees(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	l, f := tc.waitLeader(), tc.follower()
	for i := range 6 {
		tc.mustGenerate([]int{l, f}[i%2], fmt.Sprintf("digest/%d", i), "")
	}
	idx1, d1 := tc.waitSameDigest(f, tc.nodes[l].FSM().AppliedIndex())

	st, err := cofferv1.NewClusterServiceClient(tc.connTo(f)).Status(ctx, &cofferv1.ClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.GetNodes() {
		if len(n.GetStateDigest()) != 0 || n.GetStateDigestIndex() != 0 {
			t.Fatalf("%s computed a digest unasked: %d %x", n.GetId(), n.GetStateDigestIndex(), n.GetStateDigest())
		}
	}
	local, err := cofferv1.NewClusterServiceClient(tc.connTo(l)).LocalStatus(ctx, &cofferv1.NodeStatusRequest{Digest: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(local.GetStateDigest()) != 32 || local.GetStateDigestIndex() < idx1 {
		t.Fatalf("the leader's own status: index %d digest %x", local.GetStateDigestIndex(), local.GetStateDigest())
	}

	tc.mustGenerate(f, "digest/more", "")
	idx2, d2 := tc.waitSameDigest(l, tc.nodes[l].FSM().AppliedIndex())
	if idx2 <= idx1 || bytes.Equal(d1, d2) {
		t.Fatalf("after another write: index %d -> %d, digest %x -> %x", idx1, idx2, d1, d2)
	}
}
