package chaos

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/fsm"
)

// clusterWithMaster prepares a cluster directory whose keystore is a copy
// of from's (the same master key, as the key ceremony gives), then starts
// it; from empty starts one with a master key of its own.
func clusterWithMaster(t *testing.T, cofferd, from string, nodes int) (*Cluster, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "cluster")
	c := &Cluster{}
	cfg := Config{Cofferd: cofferd, Dir: dir, Nodes: nodes, BasePort: freeBase(t, nodes)}
	if from == "" {
		var err error
		if c, err = NewCluster(cfg); err != nil {
			t.Fatal(err)
		}
		return c, dir
	}
	if err := initCluster(cfg); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"master.sealed", "master.keyfile"} {
		b, err := os.ReadFile(filepath.Join(from, "keystore", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "keystore", f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c, err := startCluster(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, dir
}

// restoreErr restores backup into c through its leader and returns the error.
func restoreErr(ctx context.Context, t *testing.T, c *Cluster, backup []byte) (*cofferv1.RestoreResponse, error) {
	t.Helper()
	l, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := c.Client(10*time.Second, l)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	seal, stream, err := fsm.ReadBackupHeader(bytes.NewReader(backup))
	if err != nil {
		t.Fatal(err)
	}
	return cl.Restore(ctx, seal, stream, nil)
}

// TestChaos_BackupRestore saves a sealed backup of a running cluster and
// restores it into a fresh cluster that shares the master key: every key
// reads back with its material, and the restore is audited, naming the
// backup. A changed, truncated or foreign backup, and a restore into a
// cluster that holds keys, are refused and change nothing.
func TestChaos_BackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	cofferd := buildCofferd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a, aDir := clusterWithMaster(t, cofferd, "", 3)
	defer a.Close()
	if _, err := a.Leader(ctx); err != nil {
		t.Fatal(err)
	}
	ca, err := a.Client(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	keys := map[string][]byte{}
	for i := range 20 {
		r, err := ca.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "backup/app", RequestId: fmt.Sprintf("b-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		g, err := ca.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: r.GetKey().GetGkid()})
		if err != nil {
			t.Fatal(err)
		}
		keys[r.GetKey().GetGkid()] = g.GetMaterial()
	}
	var stream bytes.Buffer
	seal, err := ca.Backup(ctx, &stream)
	if err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	if err := fsm.WriteBackupHeader(&file, seal); err != nil {
		t.Fatal(err)
	}
	file.Write(stream.Bytes())
	backup := file.Bytes()
	if bytes.Contains(backup, []byte("n/n1")) {
		t.Fatal("the backup carries member pins")
	}

	// A cluster with another master key cannot open the seal.
	foreign, _ := clusterWithMaster(t, cofferd, "", 1)
	defer foreign.Close()
	_, err = restoreErr(ctx, t, foreign, backup)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "not sealed by a cluster that shares") {
		t.Fatalf("foreign restore: %v", err)
	}

	b, _ := clusterWithMaster(t, cofferd, aDir, 3)
	defer b.Close()
	hdr := len(backup) - stream.Len()
	changed := bytes.Clone(backup)
	changed[hdr+stream.Len()/2] ^= 0x40
	truncated := backup[:len(backup)-100]
	for name, bad := range map[string][]byte{"changed": changed, "truncated": truncated} {
		if _, err := restoreErr(ctx, t, b, bad); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "fails its seal") {
			t.Fatalf("%s backup: %v", name, err)
		}
	}
	resp, err := restoreErr(ctx, t, b, backup)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetClusterId() != seal.GetClusterId() {
		t.Fatalf("restored cluster id %s, want the backup's %s", resp.GetClusterId(), seal.GetClusterId())
	}
	cb, err := b.Client(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()
	for gk, m := range keys {
		g, err := cb.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk})
		if err != nil || !bytes.Equal(g.GetMaterial(), m) {
			t.Fatalf("key %s after restore: %v", gk, err)
		}
	}
	// The restored cluster writes, and its audit log names the restore.
	if _, err := cb.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "backup/after"}); err != nil {
		t.Fatalf("write after restore: %v", err)
	}
	q, err := cb.AuditQuery(ctx, &cofferv1.AuditQueryRequest{Operation: "snapshot.restore"})
	if err != nil || len(q.GetEntries()) == 0 || !strings.Contains(q.GetEntries()[len(q.GetEntries())-1].GetReason(), fmt.Sprintf("%x", seal.GetSha256())) {
		t.Fatalf("restore entries %v: %v", q.GetEntries(), err)
	}
	// A cluster that holds keys takes no restore.
	if _, err := restoreErr(ctx, t, b, backup); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("restore into a cluster with keys: %v", err)
	}
}
