package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/client"
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

// membership are the --group and --role flags of a registration.
type membership struct{ groups, roles []string }

func (m *membership) addFlags(cmd *cobra.Command, when string) {
	cmd.Flags().StringSliceVar(&m.groups, "group", nil, "group of the client"+when+"; repeatable or comma-separated")
	cmd.Flags().StringSliceVar(&m.roles, "role", nil, "role of the client"+when+": security-officer, operator or application; repeatable or comma-separated")
}

func (m membership) given() bool { return len(m.groups) > 0 || len(m.roles) > 0 }

// parse validates the groups and roles and drops duplicates, keeping the
// first occurrence.
func (m membership) parse() (groups, roles []string, err error) {
	for _, g := range m.groups {
		g = strings.TrimSpace(g)
		if err := authz.ValidateGroupName(g); err != nil {
			return nil, nil, usageError{fmt.Errorf("--group: %w", err)}
		}
		if !containsString(groups, g) {
			groups = append(groups, g)
		}
	}
	if len(groups) > authz.MaxGroupsPerClient {
		return nil, nil, usagef("--group: %d groups, at most %d", len(groups), authz.MaxGroupsPerClient)
	}
	for _, r := range m.roles {
		role, err := authz.ParseRole(strings.TrimSpace(r))
		if err != nil {
			return nil, nil, usageError{fmt.Errorf("--role: %w", err)}
		}
		if !containsString(roles, string(role)) {
			roles = append(roles, string(role))
		}
	}
	return groups, roles, nil
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// issued is what `client issue` and `client sign` report.
type issued struct {
	Identity    string          `json:"identity"`
	Certificate string          `json:"certificate"`
	PrivateKey  string          `json:"private_key,omitempty"`
	Serial      string          `json:"serial"`
	NotAfter    string          `json:"not_after"`
	Registered  bool            `json:"registered"`
	Client      json.RawMessage `json:"client,omitempty"`

	name string
}

func newIssued(id transport.Identity, cert *x509.Certificate, certPath, keyPath string) *issued {
	return &issued{
		Identity:    id.String(),
		name:        id.Name,
		Certificate: certPath,
		PrivateKey:  keyPath,
		Serial:      authz.FormatSerial(cert.SerialNumber),
		NotAfter:    cert.NotAfter.UTC().Format(time.RFC3339),
	}
}

func (a *app) printIssued(r *issued, info *cofferv1.ClientInfo) error {
	if info != nil {
		r.Registered = true
		b, err := marshalProto(info)
		if err != nil {
			return err
		}
		r.Client = b
	}
	if a.format == formatJSON {
		return writeJSON(a.out, r)
	}
	tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "certificate:\t%s\n", r.Certificate)
	if r.PrivateKey != "" {
		fmt.Fprintf(tw, "private key:\t%s (mode 0600; keep it on the client's machine only)\n", r.PrivateKey)
	}
	fmt.Fprintf(tw, "identity:\t%s\n", r.Identity)
	fmt.Fprintf(tw, "serial:\t%s\n", r.Serial)
	fmt.Fprintf(tw, "expires:\t%s\n", r.NotAfter)
	if info != nil {
		fmt.Fprintf(tw, "registered:\tyes (groups: %s; roles: %s)\n", listOrNone(info.GetGroups()), listOrNone(info.GetRoles()))
	} else {
		fmt.Fprintf(tw, "registered:\tno (the client can call only once registered: coffer client register %s)\n", r.name)
	}
	return tw.Flush()
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ",")
}

// registerIssued registers the client of a freshly written certificate. On
// failure it tells the user on stderr that the files exist and how to finish.
func (a *app) registerIssued(cmd *cobra.Command, name string, groups, roles []string, files string) (*cofferv1.ClientInfo, error) {
	var info *cofferv1.ClientInfo
	err := a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
		var err error
		info, err = c.RegisterClient(ctx, &cofferv1.RegisterClientRequest{Name: name, Groups: groups, Roles: roles})
		return err
	})
	if err != nil {
		fmt.Fprintf(a.err, "coffer: %s written, but client %s was not registered; register it with `coffer client register %s` (add --update if it already exists)\n",
			files, name, name)
		return nil, fmt.Errorf("register client %s: %w", name, err)
	}
	return info, nil
}

func (a *app) clientIssueCmd() *cobra.Command {
	var out string
	var days int
	var noRegister bool
	var ca caFiles
	var m membership
	cmd := &cobra.Command{
		Use:   "issue NAME --out DIR [--ca-cert F --ca-key F] [--group G]... [--role R]... [--days N] [--no-register]",
		Short: "Create a client key pair signed by the CA and register the client",
		Long: `Create a fresh ECDSA P-256 key and a client certificate for
coffer://client/NAME, signed locally with the CA key: DIR/NAME.pem and
DIR/NAME-key.pem (mode 0600). Then register the client in the cluster with
its groups and roles, unless --no-register is given (for example when
renewing the certificate of a registered client). Registering needs the
usual connection settings and the client.manage operation.

Prefer 'coffer client sign' when the client can make its own key: the
private key then never leaves the client's machine.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := authz.ValidateClientName(name); err != nil {
				return usageError{err}
			}
			if out == "" {
				return usagef("--out is required")
			}
			validity, err := daysFlag(days)
			if err != nil {
				return err
			}
			if noRegister && m.given() {
				return usagef("--group and --role need registration; drop --no-register or set them later with `coffer client register %s --update`", name)
			}
			groups, roles, err := m.parse()
			if err != nil {
				return err
			}
			files, err := a.resolveCAFiles(ca)
			if err != nil {
				return err
			}
			if !noRegister {
				// Fail on missing connection settings before writing files.
				if _, err := a.resolveConn(); err != nil {
					return err
				}
			}
			certPath, keyPath := keyPairPaths(out, name)
			if err := refuseExisting(certPath, keyPath); err != nil {
				return err
			}
			authority, err := loadClientCA(files)
			if err != nil {
				return err
			}
			if validity, err = certValidity(cmd, validity, authority); err != nil {
				return err
			}
			id := transport.Identity{Kind: transport.KindClient, Name: name}
			cert, err := issueToFiles(authority, transport.IssueRequest{Identity: id, Validity: validity}, certPath, keyPath)
			if err != nil {
				return err
			}
			result := newIssued(id, cert, certPath, keyPath)
			if noRegister {
				return a.printIssued(result, nil)
			}
			info, err := a.registerIssued(cmd, name, groups, roles, certPath+" and "+keyPath)
			if err != nil {
				return err
			}
			return a.printIssued(result, info)
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "directory for NAME.pem and NAME-key.pem, created if missing (required)")
	f.IntVar(&days, "days", defaultCertDays, "validity in days; the default is shortened to the CA's remaining validity")
	f.BoolVar(&noRegister, "no-register", false, "only write the files; do not register the client")
	ca.addFlags(cmd)
	m.addFlags(cmd, "")
	return cmd
}

func (a *app) clientSignCmd() *cobra.Command {
	var csrPath, out string
	var days int
	var register bool
	var ca caFiles
	var m membership
	cmd := &cobra.Command{
		Use:   "sign --csr FILE --out CERTFILE [--ca-cert F --ca-key F] [--days N] [--register [--group G]... [--role R]...]",
		Short: "Sign a client's certificate request (PKCS#10) with the CA",
		Long: `Sign a PKCS#10 certificate request made on the client's own machine, so
that its private key never leaves it. For example:

  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout app-key.pem -out app.csr -subj /CN=app \
    -addext subjectAltName=URI:coffer://client/app

The identity is the request's URI SAN coffer://client/NAME, or, when it has
no URI SAN, its common name. Requests for node identities, with several or
foreign URI SANs, with a bad signature or a weak key are refused. Only the
identity and the public key are taken from the request: the certificate is
a client certificate (ClientAuth only) like 'coffer client issue' makes, and
other requested names and extensions are not copied.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if csrPath == "" {
				return usagef("--csr is required")
			}
			if out == "" {
				return usagef("--out is required")
			}
			validity, err := daysFlag(days)
			if err != nil {
				return err
			}
			if !register && m.given() {
				return usagef("--group and --role need --register")
			}
			groups, roles, err := m.parse()
			if err != nil {
				return err
			}
			files, err := a.resolveCAFiles(ca)
			if err != nil {
				return err
			}
			if register {
				if _, err := a.resolveConn(); err != nil {
					return err
				}
			}
			if _, err := os.Lstat(out); err == nil {
				return fmt.Errorf("%s already exists; refusing to overwrite it", out)
			}
			csr, err := readCSR(csrPath)
			if err != nil {
				return err
			}
			id, err := csrIdentity(csr)
			if err != nil {
				return err
			}
			if extra := extraNames(csr); extra != "" {
				fmt.Fprintf(a.err, "coffer: note: the request's %s are not copied into the certificate\n", extra)
			}
			authority, err := loadClientCA(files)
			if err != nil {
				return err
			}
			if validity, err = certValidity(cmd, validity, authority); err != nil {
				return err
			}
			certPEM, cert, err := signClientCSR(authority, csr, id, validity, time.Now())
			if err != nil {
				return err
			}
			if err := writeExclusive(out, certPEM, certFileMode); err != nil {
				return err
			}
			result := newIssued(id, cert, out, "")
			if !register {
				return a.printIssued(result, nil)
			}
			info, err := a.registerIssued(cmd, id.Name, groups, roles, out)
			if err != nil {
				return err
			}
			return a.printIssued(result, info)
		},
	}
	f := cmd.Flags()
	f.StringVar(&csrPath, "csr", "", "certificate request file, PEM or DER (required)")
	f.StringVar(&out, "out", "", "file for the signed certificate; must not exist (required)")
	f.IntVar(&days, "days", defaultCertDays, "validity in days; the default is shortened to the CA's remaining validity")
	f.BoolVar(&register, "register", false, "also register the client in the cluster")
	ca.addFlags(cmd)
	m.addFlags(cmd, " (with --register)")
	return cmd
}

// readFileLimited reads at most maxPEMInput bytes of path.
func readFileLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMInput+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxPEMInput {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxPEMInput)
	}
	return b, nil
}

// readCSR reads a PEM ("CERTIFICATE REQUEST") or DER certificate request and
// checks its signature.
func readCSR(path string) (*x509.CertificateRequest, error) {
	data, err := readFileLimited(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadCSR, err)
	}
	der := data
	if block, rest := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: %s holds a %q PEM block, want CERTIFICATE REQUEST", errBadCSR, path, block.Type)
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			return nil, fmt.Errorf("%w: %s has data after the certificate request", errBadCSR, path)
		}
		der = block.Bytes
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errBadCSR, path, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %s: bad signature: %w", errBadCSR, path, err)
	}
	if err := checkCSRKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errBadCSR, path, err)
	}
	return csr, nil
}

// checkCSRKey accepts the public keys TLS 1.3 clients sign with: ECDSA on
// P-256, P-384 or P-521, Ed25519, and RSA of at least minRSABits bits.
func checkCSRKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("ECDSA curve %s is not accepted (use P-256)", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("RSA key of %d bits is too small (at least %d)", k.N.BitLen(), minRSABits)
		}
		return nil
	}
	return fmt.Errorf("public key of type %T is not accepted (use ECDSA P-256)", pub)
}

// csrIdentity returns the client identity a request asks for: its only URI
// SAN, which must be coffer://client/<name>, or, when it has no URI SAN, its
// common name.
func csrIdentity(csr *x509.CertificateRequest) (transport.Identity, error) {
	switch len(csr.URIs) {
	case 0:
		cn := csr.Subject.CommonName
		if cn == "" {
			return transport.Identity{}, fmt.Errorf("%w: it has neither a coffer://client/<name> URI SAN nor a common name", errBadCSR)
		}
		if err := authz.ValidateClientName(cn); err != nil {
			return transport.Identity{}, fmt.Errorf("%w: common name: %w", errBadCSR, err)
		}
		return transport.Identity{Kind: transport.KindClient, Name: cn}, nil
	case 1:
	default:
		return transport.Identity{}, fmt.Errorf("%w: it carries %d URI SANs, want exactly one, coffer://client/<name>", errBadCSR, len(csr.URIs))
	}
	id, err := transport.IdentityFromURI(csr.URIs[0])
	if err != nil {
		return transport.Identity{}, fmt.Errorf("%w: %w", errBadCSR, err)
	}
	if id.Kind != transport.KindClient {
		return transport.Identity{}, fmt.Errorf("%w: it asks for the identity %s; only client certificates are signed here", errBadCSR, id)
	}
	return id, nil
}

// extraNames lists the kinds of subject alternative names a request asks
// for that a client certificate does not get.
func extraNames(csr *x509.CertificateRequest) string {
	var kinds []string
	if len(csr.DNSNames) > 0 {
		kinds = append(kinds, "DNS names")
	}
	if len(csr.IPAddresses) > 0 {
		kinds = append(kinds, "IP addresses")
	}
	if len(csr.EmailAddresses) > 0 {
		kinds = append(kinds, "email addresses")
	}
	return strings.Join(kinds, ", ")
}

// signClientCSR issues a client certificate for id over the request's public
// key, with the profile of transport's CA.Issue for client certificates:
// subject CN=<name>, O=Coffer, OU=client; the coffer:// URI SAN as the only
// SAN; digitalSignature key usage and the ClientAuth extended key usage; not
// a CA; a 128-bit random serial; the RFC 7093 subject key id; ECDSA-SHA256;
// valid from now (backdated for clock skew, not before the CA) for validity,
// which may not outlive the CA. The certificate is checked to chain to the
// CA for client authentication and to carry id before it is returned.
func signClientCSR(ca *transport.CA, csr *x509.CertificateRequest, id transport.Identity, validity time.Duration, now time.Time) ([]byte, *x509.Certificate, error) {
	if id.Kind != transport.KindClient {
		return nil, nil, fmt.Errorf("%w: %s is not a client identity", errBadCSR, id)
	}
	if err := id.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", errBadCSR, err)
	}
	if validity <= 0 {
		return nil, nil, fmt.Errorf("%w: %s", transport.ErrValidity, validity)
	}
	certPEM, err := ca.Sign(transport.IssueRequest{Identity: id, Validity: validity}, csr.PublicKey, now)
	if err != nil {
		return nil, nil, err
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, nil, fmt.Errorf("signed certificate does not verify against the CA: %w", err)
	}
	if got, err := transport.IdentityFromCert(cert); err != nil || got != id {
		return nil, nil, fmt.Errorf("signed certificate carries identity %v (%v), want %s", got, err, id)
	}
	return certPEM, cert, nil
}

// parseCertPEM decodes a single PEM certificate.
func parseCertPEM(data []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate found")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("data after the certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return c, nil
}

// readCertFile reads a certificate from a PEM (or DER) file.
func readCertFile(path string) (*x509.Certificate, error) {
	data, err := readFileLimited(path)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, fmt.Errorf("%s: parse certificate: %w", path, err)
		}
		return c, nil
	}
	c, err := parseCertPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// writeExclusive creates path (which must not exist) with mode, writes data
// and syncs; on failure the file is removed.
func writeExclusive(path string, data []byte, mode os.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to overwrite it: %w", path, err)
		}
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close %s: %w", path, cerr)
		}
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}
