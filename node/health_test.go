package node

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/hsmwrap/hsmtest"
)

// TestNode_KeystoreFailureAndRecovery breaks one follower's keystore: it
// reports itself unhealthy in cluster status, refuses key operations with
// Unavailable (the other nodes keep serving), and serves again on its own
// once the keystore is back.
func TestNode_KeystoreFailureAndRecovery(t *testing.T) {
	broken := make([]*atomic.Bool, 3)
	for i := range broken {
		broken[i] = &atomic.Bool{}
	}
	tc := mustClusterWith(t, 3, nil, func(i int, ks hsmwrap.Keystore) hsmwrap.Keystore {
		return hsmtest.Failing{Keystore: ks, Broken: broken[i]}
	})
	ctx := ctxT(t)
	md := tc.mustGenerate(tc.waitLeader(), "hsm", "")
	f := tc.follower()
	broken[f].Store(true)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := tc.keys(f).GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: md.GetGkid()})
		if status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "keystore") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("broken keystore not refused: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for st := tc.nodes[f].localStatus(); st.GetHealthy() || !strings.Contains(st.GetError(), "keystore"); st = tc.nodes[f].localStatus() {
		if time.Now().After(deadline) {
			t.Fatalf("status with a broken keystore: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The other nodes keep serving.
	for i := range tc.nodes {
		if i != f {
			tc.mustGet(i, md.GetGkid())
		}
	}
	broken[f].Store(false)
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, err := tc.keys(f).GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: md.GetGkid()})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after the keystore came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := tc.nodes[f].localStatus(); !st.GetHealthy() {
		t.Fatalf("still unhealthy after recovery: %+v", st)
	}
}
