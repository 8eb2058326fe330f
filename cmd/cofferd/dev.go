package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
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
