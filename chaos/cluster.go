package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/transport"
)

// ErrTimeout is returned when the cluster does not reach a state in time.
var ErrTimeout = errors.New("chaos: timed out")

// Config describes a harness cluster.
type Config struct {
	// Cofferd is the path of the cofferd binary.
	Cofferd string
	// Dir holds the cluster (created by `cofferd dev --init-only`).
	Dir string
	// Nodes is the cluster size.
	Nodes int
	// BasePort as in `cofferd dev --base-port`.
	BasePort int
	// Sites is `cofferd dev --sites` (empty: a, b, c in turn).
	Sites string
	// Netns, when set, names the network namespace each node runs in, and
	// Hosts the address it is reached at there (netns.go).
	Netns, Hosts []string
}

// Validate reports an unusable Config.
func (c Config) Validate() error {
	if c.Cofferd == "" || c.Dir == "" || c.Nodes < 1 || c.BasePort < 1024 {
		return fmt.Errorf("chaos: config needs cofferd, dir, nodes >= 1 and base port >= 1024: %+v", c)
	}
	return nil
}

// Cluster is a set of real cofferd processes under the harness's control.
type Cluster struct {
	cfg   Config
	mu    sync.Mutex
	procs []*exec.Cmd
	done  []chan struct{}
	tls   transport.TLSConfig
}

// NewCluster prepares the cluster directory and starts every node.
func NewCluster(cfg Config) (*Cluster, error) {
	if err := initCluster(cfg); err != nil {
		return nil, err
	}
	return startCluster(cfg)
}

// initCluster creates the cluster directory (cofferd dev --init-only).
func initCluster(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	args := []string{"dev", "--init-only", "--nodes", fmt.Sprint(cfg.Nodes), "--dir", cfg.Dir, "--base-port", fmt.Sprint(cfg.BasePort)}
	if cfg.Sites != "" {
		args = append(args, "--sites", cfg.Sites)
	}
	init := exec.Command(cfg.Cofferd, args...)
	if out, err := init.CombinedOutput(); err != nil {
		return fmt.Errorf("chaos: init cluster: %w\n%s", err, out)
	}
	return nil
}

// startCluster starts every node of a prepared cluster directory.
func startCluster(cfg Config) (*Cluster, error) {
	c := &Cluster{
		cfg:   cfg,
		procs: make([]*exec.Cmd, cfg.Nodes),
		done:  make([]chan struct{}, cfg.Nodes),
		tls: transport.TLSConfig{
			CAFile:   filepath.Join(cfg.Dir, "ca", "node-ca.pem"),
			CertFile: filepath.Join(cfg.Dir, "client", "admin.pem"),
			KeyFile:  filepath.Join(cfg.Dir, "client", "admin-key.pem"),
		},
	}
	for i := 0; i < cfg.Nodes; i++ {
		if err := c.Start(i); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// ID returns node i's id.
func (c *Cluster) ID(i int) string { return fmt.Sprintf("n%d", i+1) }

// Addr returns node i's client address.
func (c *Cluster) Addr(i int) string {
	host := "127.0.0.1"
	if len(c.cfg.Hosts) > i {
		host = c.cfg.Hosts[i]
	}
	return fmt.Sprintf("%s:%d", host, c.cfg.BasePort+i+1)
}

// Others returns the index of every node but i.
func (c *Cluster) Others(i int) []int {
	var out []int
	for j := 0; j < c.cfg.Nodes; j++ {
		if j != i {
			out = append(out, j)
		}
	}
	return out
}

// Addrs returns every node's client address.
func (c *Cluster) Addrs() []string {
	var out []string
	for i := 0; i < c.cfg.Nodes; i++ {
		out = append(out, c.Addr(i))
	}
	return out
}

// Start starts node i (again).
func (c *Cluster) Start(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.procs[i] != nil {
		return fmt.Errorf("chaos: node %s is running", c.ID(i))
	}
	logf, err := os.OpenFile(filepath.Join(c.cfg.Dir, c.ID(i), "cofferd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	p := exec.Command(c.cfg.Cofferd, "serve", "--config", filepath.Join(c.cfg.Dir, c.ID(i), "config.json"))
	if len(c.cfg.Netns) > i {
		// ip netns exec execs the command: the process is cofferd's.
		p = exec.Command("ip", "netns", "exec", c.cfg.Netns[i], c.cfg.Cofferd, "serve", "--config", filepath.Join(c.cfg.Dir, c.ID(i), "config.json"))
	}
	p.Stdout, p.Stderr = logf, logf
	// A harness that dies (a test timeout's panic) takes its nodes with
	// it instead of leaving a cluster running. (ip netns exec execs
	// cofferd, which keeps the setting.)
	p.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("chaos: start %s: %w", c.ID(i), err)
	}
	done := make(chan struct{})
	go func() {
		_ = p.Wait()
		_ = logf.Close()
		close(done)
	}()
	c.procs[i], c.done[i] = p, done
	return nil
}

// Kill sends SIGKILL to node i and waits for it to exit.
func (c *Cluster) Kill(i int) error { return c.signal(i, syscall.SIGKILL) }

// Freeze stops node i with SIGSTOP (a hung process: it keeps its sockets
// and answers nothing); Thaw resumes it with SIGCONT.
func (c *Cluster) Freeze(i int) error { return c.pause(i, syscall.SIGSTOP) }

// Thaw resumes a frozen node.
func (c *Cluster) Thaw(i int) error { return c.pause(i, syscall.SIGCONT) }

func (c *Cluster) pause(i int, sig syscall.Signal) error {
	c.mu.Lock()
	p := c.procs[i]
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("chaos: node %s is not running", c.ID(i))
	}
	return p.Process.Signal(sig)
}

// Stop sends SIGTERM to node i and waits for a clean exit.
func (c *Cluster) Stop(i int) error { return c.signal(i, syscall.SIGTERM) }

func (c *Cluster) signal(i int, sig syscall.Signal) error {
	c.mu.Lock()
	p, done := c.procs[i], c.done[i]
	c.procs[i] = nil
	c.mu.Unlock()
	if p == nil {
		return nil
	}
	_ = p.Process.Signal(sig)
	select {
	case <-done:
		return nil
	case <-time.After(20 * time.Second):
		_ = p.Process.Kill()
		<-done
		return fmt.Errorf("%w: node %s did not exit on %v", ErrTimeout, c.ID(i), sig)
	}
}

// Close stops every node.
func (c *Cluster) Close() {
	for i := range c.procs {
		_ = c.Stop(i)
	}
}

// Client returns a client over the given nodes (every node if none given).
func (c *Cluster) Client(timeout time.Duration, nodes ...int) (*client.Client, error) {
	return c.client(func(cfg *client.Config) { cfg.RequestTimeout = timeout }, nodes...)
}

// Probe returns a client that makes one attempt per call, with no backoff
// and no endpoint cool-down, for measuring when the cluster answers again.
func (c *Cluster) Probe(timeout time.Duration, nodes ...int) (*client.Client, error) {
	return c.client(func(cfg *client.Config) {
		cfg.RequestTimeout, cfg.MaxAttempts, cfg.Backoff, cfg.Cooldown = timeout, 1, 0, 0
	}, nodes...)
}

func (c *Cluster) client(tweak func(*client.Config), nodes ...int) (*client.Client, error) {
	tlsConf, err := c.tls.ClientTLS()
	if err != nil {
		return nil, err
	}
	cfg := client.DefaultConfig()
	cfg.TLS = tlsConf
	tweak(&cfg)
	if len(nodes) == 0 {
		cfg.Endpoints = c.Addrs()
	}
	for _, i := range nodes {
		cfg.Endpoints = append(cfg.Endpoints, c.Addr(i))
	}
	return client.New(cfg)
}

// Leader asks the running nodes who leads and returns its index, waiting
// until one is elected and the cluster is initialised.
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	cl, err := c.Client(time.Second)
	if err != nil {
		return -1, err
	}
	defer cl.Close()
	for {
		st, err := cl.ClusterStatus(ctx, &cofferv1.ClusterStatusRequest{})
		if err == nil && st.GetClusterId() != "" {
			for _, n := range st.GetNodes() {
				if n.GetRole() == cofferv1.NodeRole_NODE_ROLE_LEADER {
					var idx int
					if _, err := fmt.Sscanf(strings.TrimPrefix(n.GetId(), "n"), "%d", &idx); err == nil {
						return idx - 1, nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("%w: no leader: %v", ErrTimeout, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitVoters waits until at least want reachable nodes are voters, a leader
// answers for the cluster, and the layout survives the loss of any site; it
// returns that status.
func (c *Cluster) WaitVoters(ctx context.Context, want int) (*cofferv1.ClusterStatusResponse, error) {
	cl, err := c.Client(time.Second)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var last error
	for {
		st, err := cl.ClusterStatus(ctx, &cofferv1.ClusterStatusRequest{})
		if err == nil {
			voters := 0
			for _, n := range st.GetNodes() {
				if n.GetSuffrage() == "voter" && n.GetRole() != cofferv1.NodeRole_NODE_ROLE_UNREACHABLE {
					voters++
				}
			}
			if voters >= want && st.GetLayoutWarning() == "" && st.GetAuthoritative() {
				return st, nil
			}
			last = fmt.Errorf("%d voters, layout warning %q, authoritative %v", voters, st.GetLayoutWarning(), st.GetAuthoritative())
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: not %d voters: %v", ErrTimeout, want, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
