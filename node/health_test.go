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
)

// failingKeystore wraps a real keystore and fails like a lost HSM while
// broken is set. It is fault injection next to the real thing.
type failingKeystore struct {
	hsmwrap.Keystore
	broken *atomic.Bool
}

func (f failingKeystore) err() error {
	if f.broken.Load() {
		return hsmwrap.ErrUnavailable
	}
	return nil
}

func (f failingKeystore) SelfTest() error {
	if err := f.err(); err != nil {
		return err
	}
	return f.Keystore.SelfTest()
}

func (f failingKeystore) Open(id hsmwrap.KEKID, ct, aad []byte) ([]byte, error) {
	if err := f.err(); err != nil {
		return nil, err
	}
	return f.Keystore.Open(id, ct, aad)
}

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
		return failingKeystore{Keystore: ks, broken: broken[i]}
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
