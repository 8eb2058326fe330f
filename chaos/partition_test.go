package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/internal/testenv"
)

// newTestLab makes a lab with one node per site and no WAN delay, or skips
// the test where it cannot (not root, no iproute2 or curl).
func newTestLab(t *testing.T, nodes int) *Lab {
	t.Helper()
	if err := LabAvailable(); err != nil {
		t.Skip(err)
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	var sites []string
	for i := 0; i < nodes; i++ {
		sites = append(sites, string(rune('a'+i%3)))
	}
	lab, err := NewLab(sites, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	return lab
}

// TestChaos_PartitionedLeader cuts the leader's network link (a minority of
// one, alive): within a bounded time it stops leading and acknowledges no
// write, while the majority elects a leader and writes; when the link
// returns, the node catches up with everything the majority acknowledged.
func TestChaos_PartitionedLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	lab := newTestLab(t, 3)
	bin := testenv.Build(t, "../cmd/cofferd", "../cmd/coffer")
	dir := filepath.Join(t.TempDir(), "cluster")
	base := 7100
	cfg := Config{Cofferd: filepath.Join(bin, "cofferd"), Dir: dir, Nodes: 3, BasePort: base, Netns: lab.Netns(), Hosts: lab.Hosts()}
	if err := initCluster(cfg); err != nil {
		t.Fatal(err)
	}
	if err := PlaceInLab(dir, base, lab.Hosts()); err != nil {
		t.Fatal(err)
	}
	c, err := startCluster(cfg)
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
	cl, err := c.Client(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "part/before"}); err != nil {
		t.Fatal(err)
	}

	// The CLI inside the cut-off node's namespace, talking to it alone.
	inside := func(args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", lab.Netns()[l], filepath.Join(bin, "coffer"), "--addr", c.Addr(l),
			"--ca", filepath.Join(dir, "ca", "node-ca.pem"), "--cert", filepath.Join(dir, "client", "admin.pem"),
			"--key", filepath.Join(dir, "client", "admin-key.pem"), "--timeout", "6s"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	metrics := fmt.Sprintf("http://%s:%d/metrics", lab.Hosts()[l], base+200+l+1)
	role := func() string {
		out, _ := exec.Command("ip", "netns", "exec", lab.Netns()[l], "curl", "-s", "--max-time", "1", metrics).Output()
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "coffer_raft_role{") && strings.HasSuffix(line, " 1") {
				return line
			}
		}
		return ""
	}
	if r := role(); !strings.Contains(r, `"leader"`) {
		t.Fatalf("node %s's metrics do not say it leads: %q", c.ID(l), r)
	}
	cut := time.Now()
	if err := lab.Partition([]int{l}, c.Others(l)); err != nil {
		t.Fatal(err)
	}
	// The cut-off leader steps down within a bounded time: its lease runs
	// out without a quorum's contact.
	var stepped time.Duration
	for {
		if r := role(); r != "" && !strings.Contains(r, `"leader"`) {
			stepped = time.Since(cut)
			break
		}
		if time.Since(cut) > 10*time.Second {
			t.Fatalf("the cut-off leader still leads after 10 s: %q", role())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Its status says it knows no leader.
	out, _ := inside("cluster", "status", "-o", "json")
	var st clusterStatusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Authoritative {
		t.Fatalf("status on the cut-off node: %v %s", err, out)
	}
	// It acknowledges no write, and no audited read.
	if out, err := inside("key", "generate", "--resource", "part/minority"); err == nil {
		t.Fatalf("the cut-off node acknowledged a write: %s", out)
	}
	// The majority writes.
	others := c.Others(l)
	maj, err := c.Client(2*time.Second, others...)
	if err != nil {
		t.Fatal(err)
	}
	defer maj.Close()
	var gks []string
	for i := range 5 {
		r, err := maj.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "part/majority", RequestId: fmt.Sprintf("maj-%d", i)})
		if err != nil {
			t.Fatalf("the majority could not write: %v", err)
		}
		gks = append(gks, r.GetKey().GetGkid())
	}
	t.Logf("leader %s cut off: it stopped leading %v after the cut; the majority wrote", c.ID(l), stepped.Round(time.Millisecond))

	healed := time.Now()
	if err := lab.Heal(); err != nil {
		t.Fatal(err)
	}
	one, err := c.Client(2*time.Second, l)
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	for _, gk := range gks {
		for {
			if _, err := one.DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: gk}); err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("the healed node never served %s", gk)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Logf("link back: the node served every key the majority wrote %v after the heal", time.Since(healed).Round(time.Millisecond))
}

// clusterStatusJSON is the part of `coffer cluster status -o json` the
// test reads.
type clusterStatusJSON struct {
	Authoritative bool `json:"authoritative"`
}
