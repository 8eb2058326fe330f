// Command coffer is the command-line client of a Coffer cluster.
//
// Connection settings come from global flags, each defaulting from the
// environment (the env file a dev cluster writes exports them):
//
//	--addr     COFFER_ADDR     comma-separated node addresses (host:port)
//	--ca       COFFER_CA       CA certificate (PEM)
//	--cert     COFFER_CERT     client certificate (PEM)
//	--key      COFFER_KEY      client private key (PEM)
//	--pkcs11-module, --pkcs11-token, --pkcs11-key-label, --pkcs11-pin-file
//	           COFFER_PKCS11_MODULE, _TOKEN, _KEY_LABEL, _PIN_FILE (the PIN
//	           itself: COFFER_PKCS11_PIN): the client key in a PKCS#11
//	           token instead of --key (pkcs11.go)
//	--output   COFFER_OUTPUT   text or json
//	--timeout  COFFER_TIMEOUT  bound on each command's requests, retries included
//	--seal     COFFER_SEAL     how released key material travels: x25519 (default), mlkem768x25519 or none
//
// Requests that fail because a node is down or the cluster has no leader
// (Unavailable) are retried on the other nodes, with exponential backoff,
// until --timeout runs out (see package client), so a command rides through
// a leader election.
//
// Errors go to stderr; the exit status is 1 for failures and 2 for usage
// errors (bad flags or arguments, missing settings).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/status"

	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/keyseal"
	"github.com/coffer-kms/coffer/p11cred"
	"github.com/coffer-kms/coffer/transport"
)

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// Environment variables that supply flag defaults.
const (
	envAddr    = "COFFER_ADDR"
	envCA      = "COFFER_CA"
	envCert    = "COFFER_CERT"
	envKey     = "COFFER_KEY"
	envOutput  = "COFFER_OUTPUT"
	envTimeout = "COFFER_TIMEOUT"
	envSeal    = "COFFER_SEAL"
)

const defaultTimeout = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], streams{in: os.Stdin, out: os.Stdout, err: os.Stderr}, os.Getenv)
	stop()
	os.Exit(code)
}

// streams are the standard streams of one invocation.
type streams struct {
	in       io.Reader
	out, err io.Writer
}

// app is one invocation: its streams, environment and global flags.
type app struct {
	streams
	getenv func(string) string

	// Raw global flag values; read them through the resolve methods, which
	// apply the environment defaults.
	flags   *pflag.FlagSet
	addr    string
	ca      string
	cert    string
	key     string
	output  string
	timeout time.Duration
	seal    string
	p11     pkcs11Flags
	pkcs11State

	// closers release what a command opened (a PKCS#11 token); run calls
	// them when the command ends.
	closers []func()

	// Resolved in the root's PersistentPreRunE.
	format outputFormat
	// sealKEM and plainKeys are the resolved --seal.
	sealKEM   uint16
	plainKeys bool
	// limit is the resolved --timeout.
	limit time.Duration
}

// usageError marks an error as a usage error (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, s streams, getenv func(string) string) int {
	a := &app{streams: s, getenv: getenv}
	defer a.closeAll()
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(s.in)
	root.SetOut(s.out)
	root.SetErr(s.err)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	printError(s.err, err)
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailure
}

// printError writes err to w: "coffer: <code>: <message>" for gRPC errors,
// "coffer: <error>" otherwise.
func printError(w io.Writer, err error) {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		st := se.GRPCStatus()
		fmt.Fprintf(w, "coffer: %s: %s\n", st.Code(), st.Message())
		return
	}
	fmt.Fprintf(w, "coffer: %v\n", err)
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "coffer",
		Short:         "Command-line client of a Coffer key custody cluster",
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          noSubcommand,
		RunE:          showHelp,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.resolveCommon()
		},
	}
	root.CompletionOptions.HiddenDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	f := root.PersistentFlags()
	f.StringVar(&a.addr, "addr", "", "comma-separated node addresses, host:port (env "+envAddr+")")
	f.StringVar(&a.ca, "ca", "", "CA certificate file, PEM (env "+envCA+")")
	f.StringVar(&a.cert, "cert", "", "client certificate file, PEM (env "+envCert+")")
	f.StringVar(&a.key, "key", "", "client private key file, PEM (env "+envKey+")")
	f.StringVarP(&a.output, "output", "o", string(formatText), "output format: text or json (env "+envOutput+")")
	f.DurationVar(&a.timeout, "timeout", defaultTimeout, "bound on each command's requests, retries included (env "+envTimeout+")")
	f.StringVar(&a.seal, "seal", "", "how released key material travels: x25519 (sealed with HPKE, the default), mlkem768x25519 (hybrid post-quantum) or none (in the clear inside TLS, for nodes that predate sealing) (env "+envSeal+")")
	a.addPKCS11Flags(f)
	a.flags = f

	root.AddCommand(a.keyCmd(), a.encryptCmd(), a.decryptCmd(), a.reencryptCmd(), a.datakeyCmd(), a.policyCmd(), a.clusterCmd(), a.snapshotCmd(), a.escrowCmd(), a.benchCmd(), a.caCmd(), a.clientCmd(), a.aclCmd(), a.auditCmd(), a.cacheCmd(), a.pkcs11Cmd())
	return root
}

// group returns a command that only holds subcommands.
func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Args: noSubcommand, RunE: showHelp}
	cmd.AddCommand(subs...)
	return cmd
}

// noSubcommand refuses arguments to a command that only holds subcommands:
// an argument there is a mistyped subcommand.
func noSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return nil
}

func showHelp(cmd *cobra.Command, _ []string) error { return cmd.Help() }

// exactArgs is cobra.ExactArgs reporting a usage error.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %d argument(s) (%s), got %d", cmd.CommandPath(), n, what, len(args))
		}
		return nil
	}
}

// setting returns the value of a string flag: the flag if it was given, else
// the environment variable if set, else the flag's default.
func (a *app) setting(flag, env string) string {
	f := a.flags.Lookup(flag)
	if f.Changed {
		return f.Value.String()
	}
	if v := strings.TrimSpace(a.getenv(env)); v != "" {
		return v
	}
	return f.DefValue
}

// resolveCommon resolves the settings every command uses: output format and
// timeout.
func (a *app) resolveCommon() error {
	format, err := parseOutput(a.setting("output", envOutput))
	if err != nil {
		return usagef("--output/%s: %w", envOutput, err)
	}
	a.format = format
	a.limit = a.timeout
	if !a.flags.Lookup("timeout").Changed {
		if v := strings.TrimSpace(a.getenv(envTimeout)); v != "" {
			if a.limit, err = time.ParseDuration(v); err != nil {
				return usagef("%s: %w", envTimeout, err)
			}
		}
	}
	if a.limit <= 0 {
		return usagef("--timeout/%s must be positive, got %v", envTimeout, a.limit)
	}
	switch seal := a.setting("seal", envSeal); seal {
	case "", "x25519":
		a.sealKEM = keyseal.KEMX25519
	case "mlkem768x25519":
		a.sealKEM = keyseal.KEMMLKEM768X25519
	case "none":
		a.plainKeys = true
	default:
		return usagef("--seal/%s: want x25519, mlkem768x25519 or none, not %q", envSeal, seal)
	}
	return nil
}

// connSettings are the resolved connection settings.
type connSettings struct {
	addrs []string
	tls   transport.TLSConfig
	// p11, when set, holds the client key (and perhaps the certificate)
	// instead of tls.KeyFile.
	p11 *p11cred.Config
}

// resolveConn resolves the connection settings, naming the flag and the
// environment variable of any that is missing.
func (a *app) resolveConn() (connSettings, error) {
	var cs connSettings
	raw := a.setting("addr", envAddr)
	if strings.Trim(raw, ", ") == "" {
		return cs, usagef("no node address: set --addr or %s", envAddr)
	}
	addrs, err := parseAddrs(raw)
	if err != nil {
		return cs, usagef("--addr/%s: %w", envAddr, err)
	}
	cs.addrs = addrs
	cs.tls = transport.TLSConfig{
		CAFile:   a.setting("ca", envCA),
		CertFile: a.setting("cert", envCert),
		KeyFile:  a.setting("key", envKey),
	}
	if cs.p11, err = a.resolvePKCS11(cs.tls.CertFile); err != nil {
		return cs, err
	}
	for _, m := range []struct{ val, flag, env, what string }{
		{cs.tls.CAFile, "ca", envCA, "CA certificate"},
		{cs.tls.CertFile, "cert", envCert, "client certificate"},
		{cs.tls.KeyFile, "key", envKey, "client key"},
	} {
		if m.val == "" && (cs.p11 == nil || m.flag == "ca") {
			return cs, usagef("no %s: set --%s or %s%s", m.what, m.flag, m.env, pkcs11Hint(m.flag))
		}
	}
	return cs, nil
}

// parseAddrs splits a comma-separated address list, dropping blanks and
// duplicates; each address must be host:port.
func parseAddrs(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		addr := strings.TrimSpace(part)
		if addr == "" || seen[addr] {
			continue
		}
		if i := strings.LastIndexByte(addr, ':'); i <= 0 || i == len(addr)-1 {
			return nil, fmt.Errorf("address %q is not host:port", addr)
		}
		seen[addr] = true
		out = append(out, addr)
	}
	if len(out) == 0 {
		return nil, errors.New("no address")
	}
	if len(out) > client.MaxEndpoints {
		return nil, fmt.Errorf("%d addresses, at most %d", len(out), client.MaxEndpoints)
	}
	return out, nil
}

// newClient builds a client from the global flags.
func (a *app) newClient() (*client.Client, error) {
	cs, err := a.resolveConn()
	if err != nil {
		return nil, err
	}
	return a.newClientFor(cs)
}

// newClientFor is newClient with the connection settings given.
func (a *app) newClientFor(cs connSettings) (*client.Client, error) {
	tlsConf, err := a.clientTLS(cs)
	if err != nil {
		return nil, fmt.Errorf("load TLS credentials: %w", err)
	}
	cfg := client.DefaultConfig()
	// The CLI always asks the cluster (and `bench` measures the cluster),
	// so it never serves keys from the client-side cache.
	cfg.DisableKeyCache = true
	cfg.Endpoints = cs.addrs
	cfg.TLS = tlsConf
	cfg.SealKEM, cfg.PlainKeys = a.sealKEM, a.plainKeys
	// Requests retry within the --timeout bound: each command's context
	// carries it as a deadline, and RetryDeadline applies it to the
	// requests made without one (the outages of `audit tail -f`).
	cfg.RetryDeadline = a.limit
	c, err := client.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("create client: %w", err)
	}
	return c, nil
}

// withClient runs fn with a fresh client and a context bounded by --timeout.
func (a *app) withClient(cmd *cobra.Command, fn func(ctx context.Context, c *client.Client) error) error {
	c, err := a.newClient()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), a.limit)
	defer cancel()
	return fn(ctx, c)
}
