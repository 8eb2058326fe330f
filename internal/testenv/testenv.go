// Package testenv holds helpers shared by the tests that run real cofferd
// processes (e2e, chaos), and by the in-memory fake servers of the client
// and CLI tests (SealReply).
package testenv

import (
	"fmt"
	"math/rand"
	"net"
	"os/exec"
	"testing"
	"time"
)

// FreeBase finds a port base for a `cofferd dev --base-port` cluster of the
// given size whose API, Raft, metrics and gossip ports (base+i, base+100+i,
// base+200+i, base+300+i, the last TCP and UDP) are all free right now.
func FreeBase(t testing.TB, nodes int) int {
	t.Helper()
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	for attempt := 0; attempt < 50; attempt++ {
		// Below Linux's ephemeral range (32768 and up), where in-process
		// tests take their ports and outgoing connections get theirs.
		base := 10000 + rng.Intn(22000)
		if portsFree(base, nodes) {
			return base
		}
	}
	t.Fatal("no free port range")
	return 0
}

func portsFree(base, nodes int) bool {
	for i := 1; i <= nodes; i++ {
		for _, off := range []int{0, 100, 200, 300} {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+off+i))
			if err != nil {
				return false
			}
			_ = l.Close()
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", base+300+i))
		if err != nil {
			return false
		}
		_ = u.Close()
	}
	return true
}

// Build compiles the packages (paths relative to the calling test's
// directory) into a temporary directory and returns it.
func Build(t testing.TB, pkgs ...string) string {
	t.Helper()
	bin := t.TempDir()
	args := append([]string{"build", "-o", bin + "/"}, pkgs...)
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", pkgs, err, out)
	}
	return bin
}
