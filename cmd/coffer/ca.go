package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/transport"
)

// The CA files the signing commands use, from the environment when their
// flags are not given. Clients are signed by the client CA; nodes by the
// node CA, whose certificate is also what every node and client trusts
// (--ca, COFFER_CA). Neither CA can sign the other kind (transport.CA.Signs).
const (
	envClientCA    = "COFFER_CLIENT_CA"
	envClientCAKey = "COFFER_CLIENT_CA_KEY"
	envNodeCAKey   = "COFFER_NODE_CA_KEY"
)

// Certificate issuing parameters.
const (
	// defaultCADays is the validity of a new CA, in days.
	defaultCADays = 3650
	// defaultCertDays is the validity of a client certificate, in days
	// (transport.DefaultCertValidity).
	defaultCertDays = int(transport.DefaultCertValidity / (24 * time.Hour))
	// maxDays bounds every --days flag (100 years).
	maxDays = 36500
	// maxPEMInput bounds a CSR or certificate file read by the CLI.
	maxPEMInput = 64 << 10
	// certFileMode is the mode of certificate files; private keys are 0600.
	certFileMode = 0o644
	// minRSABits is the smallest RSA key a CSR may carry.
	minRSABits = 2048
)

// errBadCSR is wrapped by every refusal of a certificate signing request.
var errBadCSR = errors.New("certificate request refused")

func (a *app) caCmd() *cobra.Command {
	return group("ca", "The certificate authorities of a deployment (offline, no cluster needed)", a.caInitCmd(), a.caIssueNodeCmd())
}

func (a *app) caInitCmd() *cobra.Command {
	var out, name string
	var days int
	cmd := &cobra.Command{
		Use:   "init --out DIR [--name NAME] [--days N]",
		Short: "Create a deployment's two CAs: one for node certificates, one for client certificates",
		Long: `Create the two self-signed ECDSA P-256 certificate authorities a deployment
needs, each name-constrained to one kind of identity:

  DIR/node-ca.pem, DIR/node-ca-key.pem      signs node certificates
                                            (coffer ca issue-node)
  DIR/client-ca.pem, DIR/client-ca-key.pem  signs client certificates
                                            (coffer client issue|sign)

Every node and client trusts node-ca.pem (tls.ca_file, --ca); nodes also
need client-ca.pem (tls.client_ca_file). The client CA cannot mint node
identities, so the officers who issue clients never hold the power to add a
node. Keep both keys offline (mode 0600), the node CA's most of all.
Existing files are never overwritten.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out is required")
			}
			if strings.TrimSpace(name) == "" {
				return usagef("--name must not be empty")
			}
			validity, err := daysFlag(days)
			if err != nil {
				return err
			}
			kinds := []transport.Kind{transport.KindNode, transport.KindClient}
			for _, k := range kinds {
				p := caPaths(out, k)
				if err := refuseExisting(p[0], p[1]); err != nil {
					return err
				}
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return fmt.Errorf("create %s: %w", out, err)
			}
			var made []caMade
			for _, k := range kinds {
				ca, err := transport.CreateCA(name+" ("+string(k)+"s)", k, validity)
				if err != nil {
					return fmt.Errorf("create %s CA: %w", k, err)
				}
				paths := caPaths(out, k)
				if err := ca.WriteFiles(paths[0], paths[1]); err != nil {
					return fmt.Errorf("write %s CA: %w", k, err)
				}
				made = append(made, caMade{kind: k, cert: ca.Cert, certPath: paths[0], keyPath: paths[1]})
			}
			return a.printCAs(made)
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "directory for the CA files, created if missing (required)")
	f.StringVar(&name, "name", "Coffer CA", "CA common name (each CA adds the kind it signs)")
	f.IntVar(&days, "days", defaultCADays, "validity in days")
	return cmd
}

// keyPairPaths are DIR/NAME.pem and DIR/NAME-key.pem.
func keyPairPaths(dir, name string) (certPath, keyPath string) {
	return filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
}

// refuseExisting fails if any of paths exists: issuing never overwrites.
func refuseExisting(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s already exists; refusing to overwrite it", p)
		}
	}
	return nil
}

// issueToFiles issues a fresh key pair from authority and writes it to
// certPath and keyPath (creating their directory), returning the
// certificate.
func issueToFiles(authority *transport.CA, req transport.IssueRequest, certPath, keyPath string) (*x509.Certificate, error) {
	certPEM, keyPEM, err := authority.Issue(req)
	if err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(certPath), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(certPath), err)
	}
	if err := transport.WriteKeyPair(certPath, keyPath, certPEM, keyPEM); err != nil {
		return nil, fmt.Errorf("write key pair: %w", err)
	}
	return cert, nil
}

// caPaths are the certificate and key files of a kind's CA in dir.
func caPaths(dir string, k transport.Kind) [2]string {
	return [2]string{filepath.Join(dir, string(k)+"-ca.pem"), filepath.Join(dir, string(k)+"-ca-key.pem")}
}

// caMade is one CA that `ca init` wrote.
type caMade struct {
	kind              transport.Kind
	cert              *x509.Certificate
	certPath, keyPath string
}

func (a *app) printCAs(made []caMade) error {
	if a.format == formatJSON {
		out := map[string]map[string]string{}
		for _, m := range made {
			out[string(m.kind)+"_ca"] = map[string]string{
				"certificate": m.certPath,
				"private_key": m.keyPath,
				"subject":     m.cert.Subject.String(),
				"serial":      authz.FormatSerial(m.cert.SerialNumber),
				"not_after":   m.cert.NotAfter.UTC().Format(time.RFC3339),
				"sha256":      fingerprint(m.cert),
			}
		}
		return writeJSON(a.out, out)
	}
	tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
	for i, m := range made {
		if i > 0 {
			fmt.Fprintln(tw)
		}
		use := "give it to every node and client (tls.ca_file, --ca)"
		if m.kind == transport.KindClient {
			use = "give it to every node (tls.client_ca_file)"
		}
		fmt.Fprintf(tw, "%s CA:\t%s (%s)\n", m.kind, m.certPath, use)
		fmt.Fprintf(tw, "private key:\t%s (mode 0600; keep it offline; signs %s certificates only)\n", m.keyPath, m.kind)
		fmt.Fprintf(tw, "subject:\t%s\n", m.cert.Subject)
		fmt.Fprintf(tw, "expires:\t%s\n", m.cert.NotAfter.UTC().Format(time.RFC3339))
		fmt.Fprintf(tw, "sha256:\t%s\n", fingerprint(m.cert))
	}
	return tw.Flush()
}

func (a *app) caIssueNodeCmd() *cobra.Command {
	var out string
	var days int
	var ips, dnsNames []string
	var ca caFiles
	cmd := &cobra.Command{
		Use:   "issue-node NAME --out DIR --ip IP... [--dns NAME]... [--ca-cert F --ca-key F] [--days N]",
		Short: "Create a node key pair signed by the node CA",
		Long: `Create a fresh ECDSA P-256 key and a node certificate for
coffer://node/NAME, signed locally with the node CA key: DIR/NAME.pem and
DIR/NAME-key.pem (mode 0600). The certificate must name every address peers
and clients dial the node at (--ip, --dns): Raft and gRPC verify them.

The node CA certificate defaults to --ca (COFFER_CA), the key to
COFFER_NODE_CA_KEY. A certificate is only half of a node's admission: the
leader pins the certificate a member presents when it first reaches it, and
after a renewal an operator pins the new one with 'coffer cluster pin'.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := transport.Identity{Kind: transport.KindNode, Name: args[0]}
			if err := id.Validate(); err != nil {
				return usageError{err}
			}
			if out == "" {
				return usagef("--out is required")
			}
			if len(ips) == 0 && len(dnsNames) == 0 {
				return usagef("name at least one --ip or --dns that peers and clients dial the node at")
			}
			var parsed []net.IP
			for _, s := range ips {
				ip := net.ParseIP(strings.TrimSpace(s))
				if ip == nil {
					return usagef("--ip %q is not an IP address", s)
				}
				parsed = append(parsed, ip)
			}
			validity, err := daysFlag(days)
			if err != nil {
				return err
			}
			if ca.cert == "" {
				ca.cert = a.setting("ca", envCA)
			}
			if ca.key == "" {
				ca.key = strings.TrimSpace(a.getenv(envNodeCAKey))
			}
			if ca.cert == "" || ca.key == "" {
				return usagef("no node CA: set --ca-cert (or --ca, %s) and --ca-key (or %s)", envCA, envNodeCAKey)
			}
			authority, err := loadCA(ca)
			if err != nil {
				return err
			}
			if !authority.Signs(transport.KindNode) {
				return fmt.Errorf("%s is not a node CA: it signs %s identities only; give the node CA (node-ca.pem)", ca.cert, strings.Join(authority.Cert.PermittedURIDomains, ", "))
			}
			if validity, err = certValidity(cmd, validity, authority); err != nil {
				return err
			}
			certPath, keyPath := keyPairPaths(out, id.Name)
			if err := refuseExisting(certPath, keyPath); err != nil {
				return err
			}
			cert, err := issueToFiles(authority, transport.IssueRequest{Identity: id, IPs: parsed, DNSNames: dnsNames, Validity: validity}, certPath, keyPath)
			if err != nil {
				return err
			}
			r := newIssued(id, cert, certPath, keyPath)
			if a.format == formatJSON {
				return writeJSON(a.out, map[string]string{"identity": r.Identity, "certificate": certPath, "private_key": keyPath,
					"serial": r.Serial, "not_after": r.NotAfter, "sha256": fingerprint(cert)})
			}
			tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
			fmt.Fprintf(tw, "certificate:\t%s\n", certPath)
			fmt.Fprintf(tw, "private key:\t%s (mode 0600; keep it on the node only)\n", keyPath)
			fmt.Fprintf(tw, "identity:\t%s\n", r.Identity)
			fmt.Fprintf(tw, "serial:\t%s\n", r.Serial)
			fmt.Fprintf(tw, "expires:\t%s\n", r.NotAfter)
			fmt.Fprintf(tw, "sha256:\t%s\n", fingerprint(cert))
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "directory for NAME.pem and NAME-key.pem, created if missing (required)")
	f.StringSliceVar(&ips, "ip", nil, "IP address peers and clients dial the node at; repeatable")
	f.StringSliceVar(&dnsNames, "dns", nil, "DNS name peers and clients dial the node at; repeatable")
	f.IntVar(&days, "days", defaultCertDays, "validity in days; the default is shortened to the CA's remaining validity")
	f.StringVar(&ca.cert, "ca-cert", "", "node CA certificate (default: --ca or "+envCA+")")
	f.StringVar(&ca.key, "ca-key", "", "node CA private key (env "+envNodeCAKey+")")
	return cmd
}

// certValidity is the validity of a client certificate signed by ca: --days
// when given, else the default shortened to what remains of the CA's own
// validity (less a minute, so that issuing a moment later still fits).
func certValidity(cmd *cobra.Command, validity time.Duration, ca *transport.CA) (time.Duration, error) {
	if cmd.Flags().Changed("days") {
		return validity, nil
	}
	left := time.Until(ca.Cert.NotAfter) - time.Minute
	if left <= 0 {
		return 0, fmt.Errorf("%w: the CA expired or expires within a minute (%s)", transport.ErrValidity, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return min(validity, left), nil
}

// daysFlag checks a --days value and returns it as a duration.
func daysFlag(days int) (time.Duration, error) {
	if days < 1 || days > maxDays {
		return 0, usagef("--days must be 1-%d, got %d", maxDays, days)
	}
	return time.Duration(days) * 24 * time.Hour, nil
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// caFiles are the --ca-cert and --ca-key flags of the signing commands.
type caFiles struct{ cert, key string }

func (f *caFiles) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.cert, "ca-cert", "", "client CA certificate that signs (env "+envClientCA+")")
	cmd.Flags().StringVar(&f.key, "ca-key", "", "client CA private key that signs (env "+envClientCAKey+")")
}

// resolveCAFiles applies the client CA defaults: the certificate from
// COFFER_CLIENT_CA, the key from COFFER_CLIENT_CA_KEY.
func (a *app) resolveCAFiles(f caFiles) (caFiles, error) {
	if f.cert == "" {
		f.cert = strings.TrimSpace(a.getenv(envClientCA))
	}
	if f.key == "" {
		f.key = strings.TrimSpace(a.getenv(envClientCAKey))
	}
	if f.cert == "" {
		return f, usagef("no client CA certificate: set --ca-cert or %s", envClientCA)
	}
	if f.key == "" {
		return f, usagef("no client CA private key: set --ca-key or %s", envClientCAKey)
	}
	return f, nil
}

// loadClientCA loads the CA that signs clients, refusing a CA that may not
// (the node CA, given by mistake).
func loadClientCA(f caFiles) (*transport.CA, error) {
	ca, err := loadCA(f)
	if err != nil {
		return nil, err
	}
	if !ca.Signs(transport.KindClient) {
		return nil, fmt.Errorf("%s is not a client CA: it signs %s identities only; give the client CA (client-ca.pem, %s)",
			f.cert, strings.Join(ca.Cert.PermittedURIDomains, ", "), envClientCA)
	}
	return ca, nil
}

func loadCA(f caFiles) (*transport.CA, error) {
	ca, err := transport.LoadCA(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	return ca, nil
}
