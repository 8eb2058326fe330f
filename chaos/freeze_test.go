package chaos

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// TestChaos_FrozenLeader stops the leader with SIGSTOP (a hung process that
// keeps its connections open) while a client writes through the other
// nodes: writes forwarded to it are abandoned once a new leader is elected
// and succeed there, so writes stall only for the election, not for as long
// as the leader is frozen. Then the old leader thaws and catches up.
func TestChaos_FrozenLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	c, err := NewCluster(Config{Cofferd: buildCofferd(t), Dir: filepath.Join(t.TempDir(), "cluster"), Nodes: 3, BasePort: freeBase(t, 3)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	others := c.Others(l)
	// A long attempt timeout: the client does not give up on a forward by
	// itself; the node must.
	cl, err := c.Client(20*time.Second, others...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "frozen/before"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Freeze(l); err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			_ = c.Thaw(l)
		}
	}()
	start := time.Now()
	// One write, through a follower, with a 15 s budget; the leader stays
	// frozen for longer than that.
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	_, err = cl.GenerateKey(wctx, &cofferv1.GenerateKeyRequest{Resource: "frozen/during", RequestId: fmt.Sprintf("frozen-%d", start.UnixNano())})
	wcancel()
	if err != nil {
		t.Fatalf("write while the leader is frozen: %v", err)
	}
	d := time.Since(start)
	t.Logf("leader %s frozen: write acknowledged after %v", c.ID(l), d.Round(time.Millisecond))
	if d > 5*time.Second {
		t.Fatalf("the write waited %v: it waited for the frozen leader, not for an election", d)
	}
	if err := c.Thaw(l); err != nil {
		t.Fatal(err)
	}
	thawed = true
	// The thawed node rejoins as a follower and serves the new key.
	one, err := c.Client(2*time.Second, l)
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	list, err := one.ListKeys(ctx, &cofferv1.ListKeysRequest{Resource: "frozen/during"})
	if err != nil || len(list.GetKeys()) != 1 {
		t.Fatalf("the thawed node's list: %v %v", list, err)
	}
}
