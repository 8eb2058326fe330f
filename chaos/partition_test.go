package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// netLab is a bridge in the root namespace and one network namespace per
// node joined to it by a veth pair, on a private /24 of the test's own: a
// node is cut off by taking its link down.
type netLab struct {
	t      *testing.T
	bridge string
	ns     []string
	veths  []string
	hosts  []string
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNetLab makes the namespaces, or skips the test where it cannot (not
// root, no iproute2).
func newNetLab(t *testing.T, nodes int) *netLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	for _, tool := range []string{"ip", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	tag := fmt.Sprintf("%04x", rng.Intn(1<<16))
	subnet := fmt.Sprintf("10.213.%d", 1+rng.Intn(250))
	l := &netLab{t: t, bridge: "cfbr" + tag}
	t.Cleanup(l.close)
	run(t, "ip", "link", "add", l.bridge, "type", "bridge")
	run(t, "ip", "addr", "add", subnet+".1/24", "dev", l.bridge)
	run(t, "ip", "link", "set", l.bridge, "up")
	for i := 0; i < nodes; i++ {
		ns, host, peer := fmt.Sprintf("cf%sn%d", tag, i+1), fmt.Sprintf("%s.%d", subnet, 11+i), fmt.Sprintf("cf%sp%d", tag, i+1)
		run(t, "ip", "netns", "add", ns)
		l.ns = append(l.ns, ns)
		veth := fmt.Sprintf("cf%sv%d", tag, i+1)
		run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
		l.veths = append(l.veths, veth)
		run(t, "ip", "link", "set", peer, "netns", ns)
		run(t, "ip", "link", "set", veth, "master", l.bridge)
		run(t, "ip", "link", "set", veth, "up")
		run(t, "ip", "netns", "exec", ns, "ip", "addr", "add", host+"/24", "dev", peer)
		run(t, "ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
		run(t, "ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
		l.hosts = append(l.hosts, host)
	}
	return l
}

func (l *netLab) close() {
	for _, ns := range l.ns {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
	for _, v := range l.veths {
		_ = exec.Command("ip", "link", "del", v).Run()
	}
	_ = exec.Command("ip", "link", "del", l.bridge).Run()
}

// cut takes node i's link down (up again with heal).
func (l *netLab) cut(i int)  { run(l.t, "ip", "link", "set", l.veths[i], "down") }
func (l *netLab) heal(i int) { run(l.t, "ip", "link", "set", l.veths[i], "up") }

// placeInLab rewrites a `cofferd dev --init-only` directory so that node i
// listens on hosts[i] (certificates reissued from the dev node CA for that
// address).
func placeInLab(t *testing.T, dir string, base int, hosts []string) {
	t.Helper()
	ca, err := transport.LoadCA(filepath.Join(dir, "ca", "node-ca.pem"), filepath.Join(dir, "ca", "node-ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	addr := func(i, off int) string { return net.JoinHostPort(hosts[i], fmt.Sprint(base+off+i+1)) }
	var peers []map[string]string
	var join []string
	for i := range hosts {
		peers = append(peers, map[string]string{"id": fmt.Sprintf("n%d", i+1), "site": string(rune('a' + i%3)), "api_addr": addr(i, 0), "raft_addr": addr(i, 100)})
		join = append(join, addr(i, 300))
	}
	for i := range hosts {
		id := fmt.Sprintf("n%d", i+1)
		certPEM, keyPEM, err := ca.Issue(transport.IssueRequest{Identity: transport.Identity{Kind: transport.KindNode, Name: id},
			IPs: []net.IP{net.ParseIP(hosts[i])}, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		tlsDir := filepath.Join(dir, id, "tls")
		_ = os.Remove(filepath.Join(tlsDir, "node.pem"))
		_ = os.Remove(filepath.Join(tlsDir, "node-key.pem"))
		if err := transport.WriteKeyPair(filepath.Join(tlsDir, "node.pem"), filepath.Join(tlsDir, "node-key.pem"), certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, id, "config.json")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := json.Unmarshal(data, &cfg); err != nil {
			t.Fatal(err)
		}
		cfg["api_addr"], cfg["raft_addr"], cfg["metrics_addr"] = addr(i, 0), addr(i, 100), addr(i, 200)
		cfg["peers"] = peers
		g := cfg["gossip"].(map[string]any)
		g["bind_addr"], g["join"] = addr(i, 300), join
		if data, err = json.MarshalIndent(cfg, "", "  "); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestChaos_PartitionedLeader cuts the leader's network link (a minority of
// one, alive): within a bounded time it stops leading and acknowledges no
// write, while the majority elects a leader and writes; when the link
// returns, the node catches up with everything the majority acknowledged.
func TestChaos_PartitionedLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	lab := newNetLab(t, 3)
	bin := testenv.Build(t, "../cmd/cofferd", "../cmd/coffer")
	dir := filepath.Join(t.TempDir(), "cluster")
	base := 7100
	cfg := Config{Cofferd: filepath.Join(bin, "cofferd"), Dir: dir, Nodes: 3, BasePort: base, Netns: lab.ns, Hosts: lab.hosts}
	if err := initCluster(cfg); err != nil {
		t.Fatal(err)
	}
	placeInLab(t, dir, base, lab.hosts)
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
		cmd := exec.Command("ip", append([]string{"netns", "exec", lab.ns[l], filepath.Join(bin, "coffer"), "--addr", c.Addr(l),
			"--ca", filepath.Join(dir, "ca", "node-ca.pem"), "--cert", filepath.Join(dir, "client", "admin.pem"),
			"--key", filepath.Join(dir, "client", "admin-key.pem"), "--timeout", "6s"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	metrics := fmt.Sprintf("http://%s:%d/metrics", lab.hosts[l], base+200+l+1)
	role := func() string {
		out, _ := exec.Command("ip", "netns", "exec", lab.ns[l], "curl", "-s", "--max-time", "1", metrics).Output()
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
	lab.cut(l)
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
	lab.heal(l)
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
