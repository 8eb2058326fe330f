package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/node"
	"github.com/coffer-kms/coffer/transport"
)

// devOptions are the flags of `cofferd dev`.
type devOptions struct {
	nodes int
	dir   string
	// sitesFlag is --sites; sites has one site per node.
	sitesFlag string
	sites     []string
	basePort  int
	host      string
	initOnly  bool
	// keystore is the keystore kind of a new cluster: keystoreSoftware or
	// keystorePKCS11. keystoreSet says it was given on the command line,
	// so that an existing DIR of another kind is an error rather than
	// silently reused.
	keystore    string
	keystoreSet bool
	// pkcs11Module is the SoftHSM2 library for --keystore pkcs11.
	pkcs11Module    string
	pkcs11ModuleSet bool
}

// defaultSoftHSM2Module is where Debian's softhsm2 package installs the
// library.
const defaultSoftHSM2Module = "/usr/lib/softhsm/libsofthsm2.so"

func devCmd() *cobra.Command {
	o := devOptions{}
	cmd := &cobra.Command{
		Use:   "dev --nodes 3 --dir DIR",
		Short: "Start a local cluster (one process a node) for development",
		Long: `Start a local cluster on one machine, one cofferd process a node, nodes placed
on sites a, b, c in turn, on the software keystore (default) or, with
--keystore pkcs11, on one SoftHSM2 token per node.

The first start creates DIR: a CA, node and admin client certificates, each
node's config, and the keystore:
  software  a key file and the master key sealed under it (DIR/keystore)
  pkcs11    a SoftHSM2 token directory (DIR/softhsm, with its softhsm2.conf),
            a token per node labelled coffer-nN with random PINs in
            DIR/nN/hsm/, the master key generated on n1's token and given to
            every other token through the key ceremony (transport key,
            export, import, check values compared), so it never exists in
            plaintext outside a token
Later starts reuse DIR, so keys survive restarts; DIR keeps the keystore it
was created with. DIR/env sets up the coffer CLI.

Node i (1-based) listens on BASE+i (gRPC API), BASE+100+i (Raft) and
BASE+200+i (metrics, plain HTTP). Ctrl-C stops every node.

The dev layout is for development only: with the software keystore every
node shares one sealed master key file and its key file sits beside it; with
pkcs11 the tokens' PINs sit beside them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.nodes < 1 || o.nodes > 9 {
				return usageError{fmt.Errorf("--nodes must be 1..9")}
			}
			if o.dir == "" {
				return usageError{fmt.Errorf("--dir is required")}
			}
			if o.keystore != keystoreSoftware && o.keystore != keystorePKCS11 {
				return usageError{fmt.Errorf("--keystore must be %s or %s", keystoreSoftware, keystorePKCS11)}
			}
			if err := o.parseSites(); err != nil {
				return usageError{err}
			}
			o.keystoreSet = cmd.Flags().Changed("keystore")
			o.pkcs11ModuleSet = cmd.Flags().Changed("pkcs11-module")
			return runDev(o)
		},
	}
	cmd.Flags().IntVar(&o.nodes, "nodes", 3, "number of nodes (1-9)")
	cmd.Flags().StringVar(&o.dir, "dir", "", "directory for the cluster's data and credentials")
	cmd.Flags().IntVar(&o.basePort, "base-port", 7100, "port base: node i uses BASE+i (API), BASE+100+i (Raft), BASE+200+i (metrics), BASE+300+i (gossip)")
	cmd.Flags().StringVar(&o.sitesFlag, "sites", "", "site of each node, comma-separated (default a,b,c in turn), e.g. a,a,b,b,c")
	cmd.Flags().StringVar(&o.host, "host", "127.0.0.1", "address every node binds to")
	cmd.Flags().BoolVar(&o.initOnly, "init-only", false, "create DIR (configs, certificates, keystore) and exit without starting nodes")
	cmd.Flags().StringVar(&o.keystore, "keystore", keystoreSoftware, "keystore of a new cluster: software (sealed master key file) or pkcs11 (a SoftHSM2 token per node)")
	cmd.Flags().StringVar(&o.pkcs11Module, "pkcs11-module", defaultSoftHSM2Module, "SoftHSM2's PKCS#11 library, for --keystore pkcs11")
	return cmd
}

type devLayout struct {
	dir     string
	configs []string
	env     string
	client  transport.TLSConfig
	// clientCA and clientCAKey are the CA that signs clients.
	clientCA, clientCAKey string
	// sites is each node's site, from its config.
	sites []string
	// keystore is the kind every node's config names.
	keystore string
	// With the pkcs11 keystore: SoftHSM2's config file, which every node
	// process gets as SOFTHSM2_CONF, and, on the start that created DIR,
	// the master key's check value on every token.
	softhsmConf string
	module      string
	kcv         string
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
	if lay.sites != nil {
		o.sites = lay.sites
	}
	if created {
		fmt.Printf("Created a new %d-node dev cluster in %s\n", o.nodes, dir)
		if lay.kcv != "" {
			fmt.Printf("Master key generated on token coffer-n1 and imported into every other node's token through the key ceremony; KCV %s on every token\n", lay.kcv)
		}
	} else {
		fmt.Printf("Reusing the dev cluster in %s\n", dir)
	}
	if o.initOnly {
		serve := "cofferd serve --config FILE"
		if lay.softhsmConf != "" {
			serve = "SOFTHSM2_CONF=" + lay.softhsmConf + " " + serve
		}
		fmt.Printf("Node configs: %s/n*/config.json; start one with: %s\n", dir, serve)
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sup := &devSupervisor{self: self, lay: lay, dir: dir, ctx: ctx, failed: make(chan string, len(lay.configs))}
	for i := range lay.configs {
		if err := sup.start(i); err != nil {
			sup.stopAll()
			return err
		}
	}
	readyCtx, cancelReady := context.WithCancel(ctx)
	go func() {
		// A node that exits before the cluster is up fails the start.
		select {
		case id := <-sup.failed:
			sup.failedEarly.Store(id)
			cancelReady()
		case <-readyCtx.Done():
		}
	}()
	err = waitReady(readyCtx, lay, o)
	cancelReady()
	if err != nil {
		sup.stopAll()
		if id, ok := sup.failedEarly.Load().(string); ok {
			return fmt.Errorf("node %s exited while the cluster was starting; see %s (a port or data directory taken by another process?)",
				id, filepath.Join(dir, id, "cofferd.log"))
		}
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted before the cluster was up")
		}
		return fmt.Errorf("cluster did not become ready: %w (logs in %s/n*/cofferd.log)", err, dir)
	}
	sup.ready.Store(true)
	printDevBanner(lay, o)
	<-ctx.Done()
	fmt.Println("\nStopping every node...")
	sup.stopAll()
	fmt.Println("Stopped. Data kept in", dir)
	return nil
}

// devSupervisor runs the dev cluster's node processes. Before the cluster
// is up, a node that exits fails the start (reported on failed). After,
// a node that exits is started again, up to devMaxRestarts times within
// devRestartWindow, so that `make run` keeps a cluster running and Ctrl-C
// still stops everything.
type devSupervisor struct {
	self string
	lay  *devLayout
	dir  string
	ctx  context.Context

	failed      chan string
	failedEarly atomic.Value
	ready       atomic.Bool
	stopping    atomic.Bool

	mu    sync.Mutex
	procs map[int]*exec.Cmd
	wg    sync.WaitGroup
}

const (
	devMaxRestarts   = 5
	devRestartWindow = time.Minute
)

// start starts node i and watches it.
func (s *devSupervisor) start(i int) error {
	id := fmt.Sprintf("n%d", i+1)
	logPath := filepath.Join(s.dir, id, "cofferd.log")
	var restarts []time.Time
	run := func() (*exec.Cmd, *os.File, error) {
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, nil, err
		}
		p := exec.Command(s.self, "serve", "--config", s.lay.configs[i])
		p.Stdout, p.Stderr = logf, logf
		p.Env = os.Environ()
		if s.lay.softhsmConf != "" {
			// SoftHSM2 finds its tokens through this variable, read once
			// when the node loads the library.
			p.Env = setEnv(p.Env, "SOFTHSM2_CONF", s.lay.softhsmConf)
		}
		// Children do not get the terminal's Ctrl-C directly: the parent
		// stops them in order.
		p.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := p.Start(); err != nil {
			_ = logf.Close()
			return nil, nil, fmt.Errorf("start %s: %w", id, err)
		}
		s.mu.Lock()
		if s.procs == nil {
			s.procs = map[int]*exec.Cmd{}
		}
		s.procs[i] = p
		s.mu.Unlock()
		return p, logf, nil
	}
	p, logf, err := run()
	if err != nil {
		return err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			err := p.Wait()
			_ = logf.Close()
			if s.ctx.Err() != nil || s.stopping.Load() {
				return
			}
			if !s.ready.Load() {
				fmt.Printf("node %s exited while starting (%v); see %s\n", id, err, logPath)
				s.failed <- id
				return
			}
			now := time.Now()
			for len(restarts) > 0 && now.Sub(restarts[0]) > devRestartWindow {
				restarts = restarts[1:]
			}
			if len(restarts) >= devMaxRestarts {
				fmt.Printf("node %s exited again (%v): %d restarts within %v, not restarting it; see %s\n", id, err, len(restarts), devRestartWindow, logPath)
				return
			}
			restarts = append(restarts, now)
			fmt.Printf("node %s exited unexpectedly (%v); restarting it (see %s)\n", id, err, logPath)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(time.Second):
			}
			if p, logf, err = run(); err != nil {
				fmt.Printf("node %s could not be restarted: %v\n", id, err)
				return
			}
		}
	}()
	return nil
}

// stopAll stops every node in order and waits for the watchers.
func (s *devSupervisor) stopAll() {
	s.stopping.Store(true)
	s.mu.Lock()
	var procs []*exec.Cmd
	for i := 0; i < len(s.lay.configs); i++ {
		if p := s.procs[i]; p != nil {
			procs = append(procs, p)
		}
	}
	s.mu.Unlock()
	stopAll(procs)
	s.wg.Wait()
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

// parseSites reads --sites: one site per node, or a, b, c in turn.
func (o *devOptions) parseSites() error {
	if o.sitesFlag == "" {
		for i := 0; i < o.nodes; i++ {
			o.sites = append(o.sites, []string{"a", "b", "c"}[i%3])
		}
		return nil
	}
	o.sites = strings.Split(o.sitesFlag, ",")
	if len(o.sites) != o.nodes {
		return fmt.Errorf("--sites names %d sites for %d nodes", len(o.sites), o.nodes)
	}
	for _, s := range o.sites {
		if !siteRE.MatchString(s) {
			return fmt.Errorf("--sites: %q is not a site name (1-32 of [a-z0-9-])", s)
		}
	}
	return nil
}

var siteRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// devBootstrap picks the nodes that form the cluster: all of them up to
// three nodes; else the first node of each site, up to three, then the
// first nodes in order to make three. The others join over gossip and
// autopilot gives them votes where the placement wants them.
func devBootstrap(peers []node.Peer) map[string]bool {
	boot := map[string]bool{}
	if len(peers) <= 3 {
		for _, p := range peers {
			boot[p.ID] = true
		}
		return boot
	}
	seen := map[string]bool{}
	for _, p := range peers {
		if !seen[p.Site] && len(boot) < 3 {
			seen[p.Site], boot[p.ID] = true, true
		}
	}
	for _, p := range peers {
		if len(boot) < 3 {
			boot[p.ID] = true
		}
	}
	return boot
}

// devGossipAddr is node i's (1-based) gossip address.
func devGossipAddr(o devOptions, i int) string {
	return net.JoinHostPort(o.host, fmt.Sprint(o.basePort+300+i))
}

func devPeers(o devOptions) []node.Peer {
	var peers []node.Peer
	for i := 1; i <= o.nodes; i++ {
		peers = append(peers, node.Peer{
			ID:       fmt.Sprintf("n%d", i),
			Site:     o.sites[i-1],
			APIAddr:  net.JoinHostPort(o.host, fmt.Sprint(o.basePort+i)),
			RaftAddr: net.JoinHostPort(o.host, fmt.Sprint(o.basePort+100+i)),
		})
	}
	return peers
}

// prepareDev creates the dev directory on first use and returns its layout.
func prepareDev(o devOptions) (lay *devLayout, created bool, err error) {
	lay = &devLayout{dir: o.dir, env: filepath.Join(o.dir, "env")}
	nodeCA, clientCA := devCAPaths(o.dir, transport.KindNode), devCAPaths(o.dir, transport.KindClient)
	lay.clientCA, lay.clientCAKey = clientCA[0], clientCA[1]
	lay.client = transport.TLSConfig{CAFile: nodeCA[0],
		CertFile: filepath.Join(o.dir, "client", "admin.pem"), KeyFile: filepath.Join(o.dir, "client", "admin-key.pem")}
	for i := 1; i <= o.nodes; i++ {
		lay.configs = append(lay.configs, filepath.Join(o.dir, fmt.Sprintf("n%d", i), "config.json"))
	}
	_, errNew := os.Stat(nodeCA[0])
	_, errOld := os.Stat(filepath.Join(o.dir, "ca", "ca.pem"))
	if errNew == nil || errOld == nil {
		for _, c := range lay.configs {
			if _, err := os.Stat(c); err != nil {
				return nil, false, fmt.Errorf("%s exists but has no %s: was it made with another --nodes? (%w)", o.dir, c, err)
			}
		}
		if errNew != nil {
			if err := migrateDevCAs(lay, o); err != nil {
				return nil, false, err
			}
		}
		for _, c := range lay.configs {
			cfg, err := loadConfig(c)
			if err != nil {
				return nil, false, err
			}
			lay.sites = append(lay.sites, cfg.Site)
		}
		if err := reuseKeystore(lay, o); err != nil {
			return nil, false, err
		}
		if err := writeEnv(lay, o); err != nil {
			return nil, false, err
		}
		return lay, false, nil
	}
	lay.keystore = o.keystore
	if o.pkcs11ModuleSet && o.keystore != keystorePKCS11 {
		return nil, false, usageError{fmt.Errorf("--pkcs11-module goes with --keystore pkcs11")}
	}
	if o.keystore == keystorePKCS11 {
		// Before anything is created, so a missing SoftHSM2 leaves no
		// half-made DIR behind.
		if err := checkSoftHSM(o.pkcs11Module, true); err != nil {
			return nil, false, err
		}
	}
	// If DIR is new (or empty) and creating the cluster fails half way,
	// remove what was made, so that the next start does not take the
	// remains for a cluster.
	if entries, err := os.ReadDir(o.dir); errors.Is(err, fs.ErrNotExist) || (err == nil && len(entries) == 0) {
		existed := err == nil
		defer func() {
			if created {
				return
			}
			if !existed {
				_ = os.RemoveAll(o.dir)
				return
			}
			made, _ := os.ReadDir(o.dir)
			for _, e := range made {
				_ = os.RemoveAll(filepath.Join(o.dir, e.Name()))
			}
		}()
	}
	dirs := []string{"ca", "client", "keystore"}
	if o.keystore == keystorePKCS11 {
		dirs = []string{"ca", "client"}
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(o.dir, d), 0o700); err != nil {
			return nil, false, err
		}
	}
	issue, err := createDevCAs(o)
	if err != nil {
		return nil, false, err
	}
	if err := issue(transport.Identity{Kind: transport.KindClient, Name: "admin"}, lay.client.CertFile, lay.client.KeyFile); err != nil {
		return nil, false, err
	}
	peers := devPeers(o)
	var keystores []keystoreConfig
	if o.keystore == keystorePKCS11 {
		if keystores, err = createSoftHSMKeystores(lay, o, peers); err != nil {
			return nil, false, err
		}
	} else {
		keyFile, sealed := filepath.Join(o.dir, "keystore", "master.keyfile"), filepath.Join(o.dir, "keystore", "master.sealed")
		if err := hsmwrap.GenerateKeyFile(keyFile); err != nil {
			return nil, false, err
		}
		if err := hsmwrap.CreateMasterKeyFile(sealed, hsmwrap.SealOptions{KeyFile: keyFile}); err != nil {
			return nil, false, err
		}
		for range peers {
			keystores = append(keystores, keystoreConfig{Kind: keystoreSoftware, MasterKeyFile: sealed, KeyFile: keyFile})
		}
	}
	gossipKey := filepath.Join(o.dir, "gossip.key")
	key := make([]byte, cluster.GossipKeyLen)
	if _, err := rand.Read(key); err != nil {
		return nil, false, err
	}
	if err := cluster.WriteKeyFile(gossipKey, key); err != nil {
		return nil, false, err
	}
	boot := devBootstrap(peers)
	var bootPeers []node.Peer
	var join []string
	for i, p := range peers {
		if boot[p.ID] {
			bootPeers = append(bootPeers, p)
			join = append(join, devGossipAddr(o, i+1))
		}
	}
	for i, p := range peers {
		nd := filepath.Join(o.dir, p.ID)
		if err := os.MkdirAll(filepath.Join(nd, "tls"), 0o700); err != nil {
			return nil, false, err
		}
		tlsc := devNodeTLS(o.dir, p.ID)
		if err := issue(transport.Identity{Kind: transport.KindNode, Name: p.ID}, tlsc.CertFile, tlsc.KeyFile); err != nil {
			return nil, false, err
		}
		cfg := &fileConfig{Config: node.DefaultConfig()}
		cfg.ID, cfg.Site, cfg.APIAddr, cfg.RaftAddr = p.ID, p.Site, p.APIAddr, p.RaftAddr
		cfg.MetricsAddr = net.JoinHostPort(o.host, fmt.Sprint(o.basePort+200+i+1))
		cfg.Pprof = true
		cfg.DataDir = filepath.Join(nd, "data")
		if boot[p.ID] {
			cfg.Peers, cfg.Bootstrap = bootPeers, true
		}
		cfg.Gossip = node.GossipSettings{BindAddr: devGossipAddr(o, i+1), KeyFile: gossipKey, Join: join}
		if o.nodes >= 5 {
			cfg.Membership.Voters = 5
		}
		cfg.BootstrapAdmins = []string{"admin"}
		cfg.TLS = tlsc
		cfg.Keystore = keystores[i]
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
# The client CA, for coffer client issue|sign (its key: COFFER_CLIENT_CA_KEY).
export COFFER_CLIENT_CA=%q
case ":$PATH:" in *":%s:"*) ;; *) export PATH=%q:"$PATH" ;; esac
`, lay.dir, strings.Join(addrs, ","), lay.client.CAFile, lay.client.CertFile, lay.client.KeyFile, lay.clientCA, bin, bin)
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
	ks := "software keystore"
	if lay.keystore == keystorePKCS11 {
		ks = "pkcs11 keystore (SoftHSM2, a token per node)"
	}
	fmt.Printf("\nCoffer dev cluster is up: %d nodes, %s, data in %s\n\n", o.nodes, ks, lay.dir)
	for i, p := range devPeers(o) {
		fmt.Printf("  %-3s site %-2s api %-16s raft %-16s gossip %-16s metrics http://%s:%d/metrics\n",
			p.ID, p.Site, p.APIAddr, p.RaftAddr, devGossipAddr(o, i+1), o.host, o.basePort+200+i+1)
	}
	if o.nodes > 3 {
		fmt.Printf("\nNodes beyond the first three join over gossip as non-voters; autopilot gives them votes\n" +
			"once they have been healthy for 10 s, keeping no site at a majority (coffer cluster status).\n")
	}
	if lay.softhsmConf != "" {
		fmt.Printf(`
Keystore: node nN uses SoftHSM2 token coffer-nN (PINs in %s/nN/hsm/).
Check a token's master key with:
  SOFTHSM2_CONF=%s cofferd keystore kcv --module %s --token coffer-n1 --pin-file %s/n1/hsm/pin
`, lay.dir, lay.softhsmConf, lay.module, lay.dir)
	}
	fmt.Printf(`
CAs: %s signs nodes, %s signs clients
  (to issue a client: export COFFER_CLIENT_CA_KEY=%s; coffer client issue NAME --out DIR)
`, devCAPaths(lay.dir, transport.KindNode)[0], lay.clientCA, lay.clientCAKey)
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

// ---- the pkcs11 dev keystore: SoftHSM2 tokens and the key ceremony ----

// softhsmDir is where the pkcs11 dev keystore keeps SoftHSM2's config and
// token directory, under DIR.
const softhsmDir = "softhsm"

// devTokenLabel is node id's SoftHSM2 token label.
func devTokenLabel(id string) string { return "coffer-" + id }

// devPINFiles are node id's user and SO PIN files.
func devPINFiles(dir, id string) (pin, soPIN string) {
	return filepath.Join(dir, id, "hsm", "pin"), filepath.Join(dir, id, "hsm", "so-pin")
}

// checkSoftHSM checks that SoftHSM2 is installed: the module, and
// softhsm2-util when tokens are to be created.
func checkSoftHSM(module string, util bool) error {
	var missing []string
	if util {
		if _, err := exec.LookPath("softhsm2-util"); err != nil {
			missing = append(missing, "no softhsm2-util in PATH")
		}
	}
	if _, err := os.Stat(module); err != nil {
		missing = append(missing, fmt.Sprintf("no PKCS#11 module at %s", module))
	}
	if len(missing) > 0 {
		return fmt.Errorf("the pkcs11 dev keystore needs SoftHSM2: %s; run make softhsm (or point --pkcs11-module at the library)", strings.Join(missing, ", "))
	}
	return nil
}

// reuseKeystore finds which keystore an existing DIR was created with and
// checks that it can run: a DIR keeps its keystore, so asking for another
// one is an error rather than a silent switch.
func reuseKeystore(lay *devLayout, o devOptions) error {
	cfg, err := loadConfig(lay.configs[0])
	if err != nil {
		return err
	}
	ks := cfg.Keystore
	lay.keystore = ks.Kind
	if lay.keystore == "" {
		lay.keystore = keystoreSoftware
	}
	if o.keystoreSet && o.keystore != lay.keystore {
		return usageError{fmt.Errorf("%s was created with the %s keystore, not %s: omit --keystore to reuse it, or choose another --dir", o.dir, lay.keystore, o.keystore)}
	}
	if lay.keystore != keystorePKCS11 {
		return nil
	}
	if o.pkcs11ModuleSet && o.pkcs11Module != ks.Module {
		return usageError{fmt.Errorf("%s uses the PKCS#11 module %s (set in its node configs), not %s", o.dir, ks.Module, o.pkcs11Module)}
	}
	lay.module = ks.Module
	lay.softhsmConf = filepath.Join(o.dir, softhsmDir, "softhsm2.conf")
	if _, err := os.Stat(lay.softhsmConf); err != nil {
		return fmt.Errorf("%s uses the pkcs11 keystore but its SoftHSM2 config is missing: %w", o.dir, err)
	}
	return checkSoftHSM(ks.Module, false)
}

// createSoftHSMKeystores sets up the pkcs11 dev keystore of a new DIR: a
// SoftHSM2 token directory of its own, a token per node with random PINs,
// and one master key on every token by way of the key ceremony. It returns
// each node's keystore config.
func createSoftHSMKeystores(lay *devLayout, o devOptions, peers []node.Peer) ([]keystoreConfig, error) {
	hsmDir := filepath.Join(o.dir, softhsmDir)
	tokens := filepath.Join(hsmDir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return nil, err
	}
	lay.module = o.pkcs11Module
	lay.softhsmConf = filepath.Join(hsmDir, "softhsm2.conf")
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(lay.softhsmConf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	// SoftHSM2 reads SOFTHSM2_CONF when the library is initialised, which
	// for this process happens in the ceremony below.
	if err := os.Setenv("SOFTHSM2_CONF", lay.softhsmConf); err != nil {
		return nil, err
	}

	cfgs := make([]hsmwrap.PKCS11Config, len(peers))
	var out []keystoreConfig
	for i, p := range peers {
		pinFile, soPINFile := devPINFiles(o.dir, p.ID)
		if err := os.MkdirAll(filepath.Dir(pinFile), 0o700); err != nil {
			return nil, err
		}
		pin, err := randomPIN()
		if err != nil {
			return nil, err
		}
		soPIN, err := randomPIN()
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(soPINFile, []byte(soPIN+"\n"), 0o600); err != nil {
			return nil, err
		}
		label := devTokenLabel(p.ID)
		// The PINs are on softhsm2-util's command line for the moment it
		// runs (visible to local users in the process list): acceptable
		// for throwaway dev tokens only.
		cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", soPIN)
		cmd.Env = setEnv(os.Environ(), "SOFTHSM2_CONF", lay.softhsmConf)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("creating SoftHSM2 token %s: softhsm2-util: %v: %s", label, err, strings.TrimSpace(string(msg)))
		}
		cfg := hsmwrap.DefaultPKCS11Config()
		cfg.Module, cfg.TokenLabel = o.pkcs11Module, label
		cfg.PINFile, cfg.PINEnv = pinFile, ""
		cfgs[i] = cfg
		out = append(out, keystoreConfig{Kind: keystorePKCS11, Module: cfg.Module, TokenLabel: label, PINFile: pinFile, MasterKeyLabel: cfg.MasterKeyLabel})
	}

	_, srcSOPINFile := devPINFiles(o.dir, peers[0].ID)
	kcv, err := devKeyCeremony(cfgs, srcSOPINFile)
	if err != nil {
		return nil, fmt.Errorf("dev key ceremony: %w", err)
	}
	lay.kcv = kcv
	return out, nil
}

// devKeyCeremony runs the key ceremony of hsmwrap/DESIGN.md across the dev
// tokens, with every step in this process: the master key is generated on
// the first token, and for each other token a transport key is made there,
// the master key is exported from the first token under it (with the first
// token's SO PIN) and imported, and the two tokens are checked to hold the
// same key. The export is only ever in memory, and it is wrapped. It
// returns the master key's check value.
func devKeyCeremony(cfgs []hsmwrap.PKCS11Config, srcSOPINFile string) (string, error) {
	src := cfgs[0]
	if err := hsmwrap.InitMasterKey(src); err != nil {
		return "", fmt.Errorf("%s: %w", src.TokenLabel, err)
	}
	kcv, err := hsmwrap.MasterKeyKCV(src)
	if err != nil {
		return "", fmt.Errorf("%s: %w", src.TokenLabel, err)
	}
	exporter := src
	exporter.SOPINFile = srcSOPINFile
	for _, dst := range cfgs[1:] {
		pub, err := hsmwrap.NewTransportKey(dst)
		if err != nil {
			return "", fmt.Errorf("transport key on %s: %w", dst.TokenLabel, err)
		}
		exp, err := hsmwrap.ExportMasterKey(exporter, pub)
		if err != nil {
			return "", fmt.Errorf("export from %s to %s: %w", src.TokenLabel, dst.TokenLabel, err)
		}
		if err := hsmwrap.ImportMasterKey(dst, exp); err != nil {
			return "", fmt.Errorf("import into %s: %w", dst.TokenLabel, err)
		}
		same, err := hsmwrap.SameMasterKey(src, dst)
		if err != nil {
			return "", fmt.Errorf("comparing %s and %s: %w", src.TokenLabel, dst.TokenLabel, err)
		}
		got, err := hsmwrap.MasterKeyKCV(dst)
		if err != nil {
			return "", fmt.Errorf("%s: %w", dst.TokenLabel, err)
		}
		if !same || got != kcv {
			return "", fmt.Errorf("%s (KCV %s) does not hold the master key of %s (KCV %s)", dst.TokenLabel, got, src.TokenLabel, kcv)
		}
	}
	return kcv, nil
}

// randomPIN returns 32 random hex digits.
func randomPIN() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// setEnv returns env with key set to value, replacing any earlier setting.
func setEnv(env []string, key, value string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}
