package chaos

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/coffer-kms/coffer/transport"
)

// ErrNoLab is returned where network namespaces cannot be made (not root,
// no iproute2): the harness then runs on loopback with process faults only.
var ErrNoLab = errors.New("chaos: no network lab")

// Lab is the network of a harness cluster: one network namespace per node,
// each joined to the root namespace by a veth pair on a /24 of its own, the
// root namespace routing between them. Everything between two nodes crosses
// the root namespace's routing, so:
//   - a partition is a pair of blackhole rules per pair of nodes (ip rule):
//     the nodes cannot reach each other, while clients in the root
//     namespace still reach every node, as in a real split where
//     applications sit on both sides;
//   - inter-site packets are routed through a delaying TUN device
//     (wanDelay), which gives the sites WAN latency without tc netem.
type Lab struct {
	tag   string
	ns    []string
	veths []string
	hosts []string
	sites []string
	wan   *wanDelay

	mu     sync.Mutex
	cuts   map[[2]int]bool
	sysct  map[string]string
	closed sync.Once
}

// Rule priorities in the root namespace: partitions first, then packets
// coming back from the delay device (routed normally), then the WAN.
const (
	prioCut     = 100
	prioFromWAN = 150
	prioWAN     = 200
	wanTable    = 4242
)

// LabAvailable reports why a lab cannot be made here, or nil.
func LabAvailable() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: network namespaces need root", ErrNoLab)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("%w: no iproute2 (ip)", ErrNoLab)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("%w: no /dev/net/tun for the WAN delay: %v", ErrNoLab, err)
	}
	return nil
}

func sh(args ...string) error {
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("chaos: %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NewLab makes the namespaces of nodes in the given sites (one entry per
// node) and, when delay is positive, delays every packet between two sites
// by it (each way).
func NewLab(sites []string, delay time.Duration) (_ *Lab, err error) {
	if err := LabAvailable(); err != nil {
		return nil, err
	}
	tag := fmt.Sprintf("%04x", rand.IntN(1<<16))
	subnet := 100 + rand.IntN(100)
	l := &Lab{tag: tag, sites: sites, cuts: map[[2]int]bool{}, sysct: map[string]string{}}
	defer func() {
		if err != nil {
			l.Close() // whatever was made before the failure
		}
	}()
	// The root namespace routes between the nodes' networks; strict
	// reverse-path filtering would drop packets re-entering from the TUN.
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"} {
		out, err := exec.Command("sysctl", "-n", k).Output()
		if err != nil {
			return nil, fmt.Errorf("chaos: sysctl %s: %w", k, err)
		}
		l.sysct[k] = strings.TrimSpace(string(out))
	}
	for k, v := range map[string]string{"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"} {
		if err := sh("sysctl", "-q", "-w", k+"="+v); err != nil {
			return nil, err
		}
	}
	for i := range sites {
		ns, veth, peer := fmt.Sprintf("cf%sn%d", tag, i+1), fmt.Sprintf("cf%sv%d", tag, i+1), fmt.Sprintf("cf%sp%d", tag, i+1)
		gw, host := fmt.Sprintf("10.%d.%d.1", subnet, i+1), fmt.Sprintf("10.%d.%d.2", subnet, i+1)
		if err := sh("ip", "netns", "add", ns); err != nil {
			return nil, err
		}
		l.ns = append(l.ns, ns)
		if err := sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer); err != nil {
			return nil, err
		}
		l.veths = append(l.veths, veth)
		for _, c := range [][]string{
			{"ip", "link", "set", peer, "netns", ns},
			{"ip", "addr", "add", gw + "/24", "dev", veth},
			{"ip", "link", "set", veth, "up"},
			{"ip", "netns", "exec", ns, "ip", "addr", "add", host + "/24", "dev", peer},
			{"ip", "netns", "exec", ns, "ip", "link", "set", peer, "up"},
			{"ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"},
			{"ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", gw},
		} {
			if err := sh(c...); err != nil {
				return nil, err
			}
		}
		l.hosts = append(l.hosts, host)
	}
	if delay > 0 {
		if err := l.startWAN(delay); err != nil {
			return nil, err
		}
	}
	return l, nil
}

func (l *Lab) startWAN(delay time.Duration) error {
	name := "cf" + l.tag + "wan"
	w, err := startWANDelay(name, delay)
	if err != nil {
		return err
	}
	l.wan = w
	cmds := [][]string{
		{"ip", "link", "set", name, "up"},
		{"sysctl", "-q", "-w", "net.ipv4.conf." + name + ".rp_filter=0"},
		{"ip", "route", "add", "default", "dev", name, "table", fmt.Sprint(wanTable)},
		{"ip", "rule", "add", "prio", fmt.Sprint(prioFromWAN), "iif", name, "lookup", "main"},
	}
	for i := range l.hosts {
		for j := range l.hosts {
			if l.sites[i] != l.sites[j] {
				cmds = append(cmds, []string{"ip", "rule", "add", "prio", fmt.Sprint(prioWAN), "from", l.hosts[i], "to", l.hosts[j], "lookup", fmt.Sprint(wanTable)})
			}
		}
	}
	for _, c := range cmds {
		if err := sh(c...); err != nil {
			return err
		}
	}
	return nil
}

// Netns returns the namespace of each node.
func (l *Lab) Netns() []string { return l.ns }

// Hosts returns the address of each node.
func (l *Lab) Hosts() []string { return l.hosts }

// Partition cuts every node of a off from every node of b, both ways.
// Clients still reach every node.
func (l *Lab) Partition(a, b []int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, i := range a {
		for _, j := range b {
			for _, p := range [][2]int{{i, j}, {j, i}} {
				if i == j || l.cuts[p] {
					continue
				}
				if err := sh("ip", "rule", "add", "prio", fmt.Sprint(prioCut), "from", l.hosts[p[0]], "to", l.hosts[p[1]], "blackhole"); err != nil {
					return err
				}
				l.cuts[p] = true
			}
		}
	}
	return nil
}

// Heal removes every partition.
func (l *Lab) Heal() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for p := range l.cuts {
		if err := sh("ip", "rule", "del", "prio", fmt.Sprint(prioCut), "from", l.hosts[p[0]], "to", l.hosts[p[1]], "blackhole"); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(l.cuts, p)
	}
	return errors.Join(errs...)
}

// Close removes everything the lab made and restores the sysctls.
func (l *Lab) Close() { l.closed.Do(l.close) }

func (l *Lab) close() {
	_ = l.Heal()
	if l.wan != nil {
		for i := range l.hosts {
			for j := range l.hosts {
				if l.sites[i] != l.sites[j] {
					_ = sh("ip", "rule", "del", "prio", fmt.Sprint(prioWAN), "from", l.hosts[i], "to", l.hosts[j], "lookup", fmt.Sprint(wanTable))
				}
			}
		}
		_ = sh("ip", "rule", "del", "prio", fmt.Sprint(prioFromWAN), "iif", l.wan.name, "lookup", "main")
		_ = sh("ip", "route", "flush", "table", fmt.Sprint(wanTable))
		_ = l.wan.Close()
	}
	for _, ns := range l.ns {
		_ = sh("ip", "netns", "del", ns)
	}
	for _, v := range l.veths {
		_ = exec.Command("ip", "link", "del", v).Run()
	}
	for k, v := range l.sysct {
		_ = sh("sysctl", "-q", "-w", k+"="+v)
	}
}

// PlaceInLab rewrites a `cofferd dev --init-only` directory made with
// --host 127.0.0.1 so that node i listens on hosts[i] (same ports), and
// reissues each node's certificate from the dev node CA for its address.
func PlaceInLab(dir string, base int, hosts []string) error {
	ca, err := transport.LoadCA(filepath.Join(dir, "ca", "node-ca.pem"), filepath.Join(dir, "ca", "node-ca-key.pem"))
	if err != nil {
		return err
	}
	for i := range hosts {
		id := fmt.Sprintf("n%d", i+1)
		path := filepath.Join(dir, id, "config.json")
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		text := string(data)
		for j, h := range hosts {
			for _, off := range []int{0, 100, 200, 300} {
				port := base + off + j + 1
				text = strings.ReplaceAll(text, fmt.Sprintf(`"127.0.0.1:%d"`, port), fmt.Sprintf(`"%s"`, net.JoinHostPort(h, fmt.Sprint(port))))
			}
		}
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			return err
		}
		certPEM, keyPEM, err := ca.Issue(transport.IssueRequest{Identity: transport.Identity{Kind: transport.KindNode, Name: id},
			IPs: []net.IP{net.ParseIP(hosts[i])}, Validity: 24 * time.Hour})
		if err != nil {
			return err
		}
		tlsDir := filepath.Join(dir, id, "tls")
		_ = os.Remove(filepath.Join(tlsDir, "node.pem"))
		_ = os.Remove(filepath.Join(tlsDir, "node-key.pem"))
		if err := transport.WriteKeyPair(filepath.Join(tlsDir, "node.pem"), filepath.Join(tlsDir, "node-key.pem"), certPEM, keyPEM); err != nil {
			return err
		}
	}
	return nil
}

// InNetns runs f on an OS thread switched into node i's namespace: a socket
// f opens belongs to that namespace for good.
func (l *Lab) InNetns(i int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is not returned to the runtime's pool (no Unlock):
		// it dies with the goroutine instead of serving others from the
		// wrong namespace.
		runtime.LockOSThread()
		ns, err := os.Open(filepath.Join("/var/run/netns", l.ns[i]))
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("chaos: enter %s: %w", l.ns[i], err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
