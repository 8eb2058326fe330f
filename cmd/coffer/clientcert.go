package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/transport"
)

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
