package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/node"
	"github.com/coffer-kms/coffer/transport"
)

// devOptions are the flags of `cofferd dev`.
type devOptions struct {
	nodes    int
	dir      string
	basePort int
	host     string
	initOnly bool
}

func devCmd() *cobra.Command {
	o := devOptions{}
	cmd := &cobra.Command{
		Use:   "dev --nodes 3 --dir DIR",
		Short: "Start a local cluster (one process a node) for development",
		Long: `Start a local cluster on one machine, one cofferd process a node, nodes placed
on sites a, b, c in turn, on the software keystore.

The first start creates DIR: a CA, node and admin client certificates, a key
file and the master key sealed under it, and each node's config. Later starts
reuse DIR, so keys survive restarts. DIR/env sets up the coffer CLI.

Node i (1-based) listens on BASE+i (gRPC API), BASE+100+i (Raft) and
BASE+200+i (metrics, plain HTTP). Ctrl-C stops every node.

The dev layout is for development only: every node shares one sealed master
key file and its key file sits beside it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.nodes < 1 || o.nodes > 9 {
				return usageError{fmt.Errorf("--nodes must be 1..9")}
			}
			if o.dir == "" {
				return usageError{fmt.Errorf("--dir is required")}
			}
			return runDev(o)
		},
	}
	cmd.Flags().IntVar(&o.nodes, "nodes", 3, "number of nodes (1-9)")
	cmd.Flags().StringVar(&o.dir, "dir", "", "directory for the cluster's data and credentials")
	cmd.Flags().IntVar(&o.basePort, "base-port", 7100, "port base: node i uses BASE+i, BASE+100+i, BASE+200+i")
	cmd.Flags().StringVar(&o.host, "host", "127.0.0.1", "address every node binds to")
	cmd.Flags().BoolVar(&o.initOnly, "init-only", false, "create DIR (configs, certificates, keystore) and exit without starting nodes")
	return cmd
}

type devLayout struct {
	dir     string
	configs []string
	env     string
	client  transport.TLSConfig
}

func runDev(o devOptions) error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	o.dir = dir
	lay, created, err := prepareDev(o)
	if err != nil {
		return err
	}
	if created {
		fmt.Printf("Created a new %d-node dev cluster in %s\n", o.nodes, dir)
	} else {
		fmt.Printf("Reusing the dev cluster in %s\n", dir)
	}
	if o.initOnly {
		fmt.Printf("Node configs: %s/n*/config.json; start one with: cofferd serve --config FILE\n", dir)
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var procs []*exec.Cmd
	var wg sync.WaitGroup
	for i, c := range lay.configs {
		id := fmt.Sprintf("n%d", i+1)
		logPath := filepath.Join(dir, id, "cofferd.log")
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		p := exec.Command(self, "serve", "--config", c)
		p.Stdout, p.Stderr = logf, logf
		p.Env = os.Environ()
		// Children do not get the terminal's Ctrl-C directly: the parent
		// stops them in order.
		p.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := p.Start(); err != nil {
			_ = logf.Close()
			stopAll(procs)
			return fmt.Errorf("start %s: %w", id, err)
		}
		procs = append(procs, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.Wait()
			_ = logf.Close()
			if ctx.Err() == nil {
				fmt.Printf("node %s exited unexpectedly (%v); see %s\n", id, err, logPath)
			}
		}()
	}
	if err := waitReady(ctx, lay, o); err != nil {
		stopAll(procs)
		wg.Wait()
		return fmt.Errorf("cluster did not become ready: %w (logs in %s/n*/cofferd.log)", err, dir)
	}
	printDevBanner(lay, o)
	<-ctx.Done()
	fmt.Println("\nStopping every node...")
	stopAll(procs)
	wg.Wait()
	fmt.Println("Stopped. Data kept in", dir)
	return nil
}

func stopAll(procs []*exec.Cmd) {
	for _, p := range procs {
		if p.Process != nil {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, p := range procs {
		for p.ProcessState == nil && time.Now().Before(deadline) {
			if err := p.Process.Signal(syscall.Signal(0)); err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			_ = p.Process.Kill()
		}
	}
}

func devPeers(o devOptions) []node.Peer {
	sites := []string{"a", "b", "c"}
	var peers []node.Peer
	for i := 1; i <= o.nodes; i++ {
		peers = append(peers, node.Peer{
			ID:       fmt.Sprintf("n%d", i),
			Site:     sites[(i-1)%len(sites)],
			APIAddr:  net.JoinHostPort(o.host, fmt.Sprint(o.basePort+i)),
			RaftAddr: net.JoinHostPort(o.host, fmt.Sprint(o.basePort+100+i)),
		})
	}
	return peers
}

// prepareDev creates the dev directory on first use and returns its layout.
func prepareDev(o devOptions) (*devLayout, bool, error) {
	lay := &devLayout{dir: o.dir, env: filepath.Join(o.dir, "env")}
	caCert, caKey := filepath.Join(o.dir, "ca", "ca.pem"), filepath.Join(o.dir, "ca", "ca-key.pem")
	lay.client = transport.TLSConfig{CAFile: caCert,
		CertFile: filepath.Join(o.dir, "client", "admin.pem"), KeyFile: filepath.Join(o.dir, "client", "admin-key.pem")}
	for i := 1; i <= o.nodes; i++ {
		lay.configs = append(lay.configs, filepath.Join(o.dir, fmt.Sprintf("n%d", i), "config.json"))
	}
	if _, err := os.Stat(filepath.Join(o.dir, "ca", "ca.pem")); err == nil {
		for _, c := range lay.configs {
			if _, err := os.Stat(c); err != nil {
				return nil, false, fmt.Errorf("%s exists but has no %s: was it made with another --nodes? (%w)", o.dir, c, err)
			}
		}
		if err := writeEnv(lay, o); err != nil {
			return nil, false, err
		}
		return lay, false, nil
	}
	for _, d := range []string{"ca", "client", "keystore"} {
		if err := os.MkdirAll(filepath.Join(o.dir, d), 0o700); err != nil {
			return nil, false, err
		}
	}
	ca, err := transport.CreateCA("Coffer dev CA", 10*365*24*time.Hour)
	if err != nil {
		return nil, false, err
	}
	if err := ca.WriteFiles(caCert, caKey); err != nil {
		return nil, false, err
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	if ip := net.ParseIP(o.host); ip != nil && !ip.IsLoopback() && !ip.IsUnspecified() {
		ips = append(ips, ip)
	}
	issue := func(id transport.Identity, certPath, keyPath string) error {
		c, k, err := ca.Issue(transport.IssueRequest{Identity: id, IPs: ips, DNSNames: []string{"localhost"}, Validity: 5 * 365 * 24 * time.Hour})
		if err != nil {
			return err
		}
		return transport.WriteKeyPair(certPath, keyPath, c, k)
	}
	if err := issue(transport.Identity{Kind: transport.KindClient, Name: "admin"}, lay.client.CertFile, lay.client.KeyFile); err != nil {
		return nil, false, err
	}
	keyFile, sealed := filepath.Join(o.dir, "keystore", "master.keyfile"), filepath.Join(o.dir, "keystore", "master.sealed")
	if err := hsmwrap.GenerateKeyFile(keyFile); err != nil {
		return nil, false, err
	}
	if err := hsmwrap.CreateMasterKeyFile(sealed, hsmwrap.SealOptions{KeyFile: keyFile}); err != nil {
		return nil, false, err
	}
	peers := devPeers(o)
	for i, p := range peers {
		nd := filepath.Join(o.dir, p.ID)
		if err := os.MkdirAll(filepath.Join(nd, "tls"), 0o700); err != nil {
			return nil, false, err
		}
		tlsc := transport.TLSConfig{CAFile: caCert, CertFile: filepath.Join(nd, "tls", "node.pem"), KeyFile: filepath.Join(nd, "tls", "node-key.pem")}
		if err := issue(transport.Identity{Kind: transport.KindNode, Name: p.ID}, tlsc.CertFile, tlsc.KeyFile); err != nil {
			return nil, false, err
		}
		cfg := &fileConfig{Config: node.DefaultConfig()}
		cfg.ID, cfg.Site, cfg.APIAddr, cfg.RaftAddr = p.ID, p.Site, p.APIAddr, p.RaftAddr
		cfg.MetricsAddr = net.JoinHostPort(o.host, fmt.Sprint(o.basePort+200+i+1))
		cfg.Pprof = true
		cfg.DataDir = filepath.Join(nd, "data")
		cfg.Peers = peers
		cfg.Bootstrap = true
		cfg.BootstrapAdmins = []string{"admin"}
		cfg.TLS = tlsc
		cfg.Keystore = keystoreConfig{Kind: "software", MasterKeyFile: sealed, KeyFile: keyFile}
		if err := writeConfig(lay.configs[i], cfg); err != nil {
			return nil, false, err
		}
	}
	if err := writeEnv(lay, o); err != nil {
		return nil, false, err
	}
	return lay, true, nil
}

func writeEnv(lay *devLayout, o devOptions) error {
	var addrs []string
	for _, p := range devPeers(o) {
		addrs = append(addrs, p.APIAddr)
	}
	bin := ""
	if self, err := os.Executable(); err == nil {
		bin = filepath.Dir(self)
	}
	env := fmt.Sprintf(`# Coffer dev cluster in %s: source this file to point the coffer CLI at it.
export COFFER_ADDR=%q
export COFFER_CA=%q
export COFFER_CERT=%q
export COFFER_KEY=%q
case ":$PATH:" in *":%s:"*) ;; *) export PATH=%q:"$PATH" ;; esac
`, lay.dir, strings.Join(addrs, ","), lay.client.CAFile, lay.client.CertFile, lay.client.KeyFile, bin, bin)
	return os.WriteFile(lay.env, []byte(env), 0o600)
}

// waitReady polls the cluster until a leader has initialised it.
func waitReady(ctx context.Context, lay *devLayout, o devOptions) error {
	tlsConf, err := lay.client.ClientTLS()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var last error
	for {
		for _, p := range devPeers(o) {
			conn, err := transport.Dial(p.APIAddr, tlsConf)
			if err != nil {
				return err
			}
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			st, err := cofferv1.NewClusterServiceClient(conn).Status(cctx, &cofferv1.ClusterStatusRequest{})
			ccancel()
			_ = conn.Close()
			if err == nil && st.GetClusterId() != "" {
				for _, n := range st.GetNodes() {
					if n.GetRole() == cofferv1.NodeRole_NODE_ROLE_LEADER {
						return nil
					}
				}
			}
			if err != nil {
				last = err
			}
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = errors.New("no leader elected")
			}
			return fmt.Errorf("%w: %v", ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func printDevBanner(lay *devLayout, o devOptions) {
	fmt.Printf("\nCoffer dev cluster is up: %d nodes, software keystore, data in %s\n\n", o.nodes, lay.dir)
	for i, p := range devPeers(o) {
		fmt.Printf("  %-3s site %-2s api %-16s raft %-16s metrics http://%s:%d/metrics\n",
			p.ID, p.Site, p.APIAddr, p.RaftAddr, o.host, o.basePort+200+i+1)
	}
	fmt.Printf(`
Logs: %s/n*/cofferd.log

In another shell, set up the CLI and try it:

  source %s
  coffer cluster status
  coffer key generate --resource demo/app
  coffer key get <GKID>

Press Ctrl-C to stop every node; the next start reuses the data.
`, lay.dir, lay.env)
}
