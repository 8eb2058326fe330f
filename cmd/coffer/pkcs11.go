package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/coffer-kms/coffer/p11cred"
	"github.com/coffer-kms/coffer/transport"
)

// The client's key in a PKCS#11 token: the global --pkcs11-* flags, used
// instead of --key, and `coffer pkcs11`, which provisions a token.
//
//	--pkcs11-module     COFFER_PKCS11_MODULE     the token's PKCS#11 library
//	--pkcs11-token      COFFER_PKCS11_TOKEN      the token's label
//	--pkcs11-key-label  COFFER_PKCS11_KEY_LABEL  the private key's label
//	--pkcs11-pin-file   COFFER_PKCS11_PIN_FILE   file holding the user PIN;
//	                    without it the PIN is read from COFFER_PKCS11_PIN
//
// The certificate chain is --cert (COFFER_CERT) when given, else the
// certificate the token holds under the key's label.

// Environment variables of the PKCS#11 flags.
const (
	envPKCS11Module   = "COFFER_PKCS11_MODULE"
	envPKCS11Token    = "COFFER_PKCS11_TOKEN"
	envPKCS11KeyLabel = "COFFER_PKCS11_KEY_LABEL"
	envPKCS11PINFile  = "COFFER_PKCS11_PIN_FILE"
	envPKCS11PIN      = p11cred.DefaultPINEnv
)

// pkcs11Flags are the raw global --pkcs11-* values; read them through
// resolvePKCS11.
type pkcs11Flags struct {
	module, token, keyLabel, pinFile string
}

// pkcs11State is the token credential an invocation opened.
type pkcs11State struct {
	p11cred *p11cred.Credential
	p11cfg  p11cred.Config
}

func (a *app) addPKCS11Flags(f *pflag.FlagSet) {
	f.StringVar(&a.p11.module, "pkcs11-module", "", "PKCS#11 library of the token holding the client key, used instead of --key (env "+envPKCS11Module+")")
	f.StringVar(&a.p11.token, "pkcs11-token", "", "label of the token holding the client key (env "+envPKCS11Token+")")
	f.StringVar(&a.p11.keyLabel, "pkcs11-key-label", "", "label of the client's private key in the token (env "+envPKCS11KeyLabel+")")
	f.StringVar(&a.p11.pinFile, "pkcs11-pin-file", "", "file holding the token's user PIN; without it the PIN is read from "+envPKCS11PIN+" (env "+envPKCS11PINFile+")")
}

// resolvePKCS11 returns the token configuration the global flags and the
// environment give, or nil when none of the module, token and key label is
// set (the key is then a file, --key). certFile is the resolved --cert,
// which may be empty (the token's certificate is used). Half a
// configuration, a PIN file without a token, or no PIN source are usage
// errors.
func (a *app) resolvePKCS11(certFile string) (*p11cred.Config, error) {
	cfg := p11cred.DefaultConfig()
	cfg.Module = a.setting("pkcs11-module", envPKCS11Module)
	cfg.TokenLabel = a.setting("pkcs11-token", envPKCS11Token)
	cfg.KeyLabel = a.setting("pkcs11-key-label", envPKCS11KeyLabel)
	cfg.PINFile = a.setting("pkcs11-pin-file", envPKCS11PINFile)
	cfg.CertFile = certFile
	if cfg.Module == "" && cfg.TokenLabel == "" && cfg.KeyLabel == "" {
		if cfg.PINFile != "" {
			return nil, usagef("--pkcs11-pin-file/%s is set but no token is: add --pkcs11-module, --pkcs11-token and --pkcs11-key-label", envPKCS11PINFile)
		}
		return nil, nil
	}
	var missing []string
	for _, m := range []struct{ val, flag, env string }{
		{cfg.Module, "pkcs11-module", envPKCS11Module},
		{cfg.TokenLabel, "pkcs11-token", envPKCS11Token},
		{cfg.KeyLabel, "pkcs11-key-label", envPKCS11KeyLabel},
	} {
		if m.val == "" {
			missing = append(missing, fmt.Sprintf("--%s (%s)", m.flag, m.env))
		}
	}
	if len(missing) > 0 {
		return nil, usagef("a client key in a PKCS#11 token needs the module, the token and the key label: set %s", strings.Join(missing, " and "))
	}
	if cfg.PINFile == "" && strings.TrimSpace(a.getenv(envPKCS11PIN)) == "" {
		return nil, usagef("no PIN for token %s: set --pkcs11-pin-file (%s) or %s; a PIN is never taken from the command line", cfg.TokenLabel, envPKCS11PINFile, envPKCS11PIN)
	}
	if key := a.setting("key", envKey); key != "" {
		return nil, usagef("both --key/%s (%s) and --pkcs11-key-label/%s (%s) name the client's private key: give one", envKey, key, envPKCS11KeyLabel, cfg.KeyLabel)
	}
	if err := cfg.Validate(); err != nil {
		return nil, usageError{err}
	}
	return &cfg, nil
}

// pkcs11Hint completes the error about a missing --key or --cert with the
// token alternative.
func pkcs11Hint(flag string) string {
	if flag == "key" || flag == "cert" {
		return ", or use a key in a PKCS#11 token (--pkcs11-module, --pkcs11-token, --pkcs11-key-label)"
	}
	return ""
}

// openPKCS11 opens the token credential, once per invocation (commands
// that make several clients share it); the app closes it when the command
// ends.
func (a *app) openPKCS11(cfg p11cred.Config) (*p11cred.Credential, error) {
	if a.p11cred != nil && a.p11cfg == cfg {
		return a.p11cred, nil
	}
	cred, err := p11cred.Open(cfg)
	if err != nil {
		return nil, fmt.Errorf("open the client key in the PKCS#11 token: %w", err)
	}
	a.closers = append(a.closers, func() { cred.Close() })
	a.p11cred, a.p11cfg = cred, cfg
	return cred, nil
}

// clientTLS returns the client TLS configuration of cs: from the key and
// certificate files, or with the key in the token.
func (a *app) clientTLS(cs connSettings) (*tls.Config, error) {
	if cs.p11 == nil {
		return cs.tls.ClientTLS()
	}
	cred, err := a.openPKCS11(*cs.p11)
	if err != nil {
		return nil, err
	}
	pair, err := cred.Certificate()
	if err != nil {
		return nil, err
	}
	return cs.tls.ClientTLSWithCertificate(pair)
}

// closeAll runs the closers of the resources a command opened.
func (a *app) closeAll() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
}

// requirePKCS11 resolves the token configuration for `coffer pkcs11`, which
// needs one.
func (a *app) requirePKCS11() (p11cred.Config, error) {
	cfg, err := a.resolvePKCS11(a.setting("cert", envCert))
	if err != nil {
		return p11cred.Config{}, err
	}
	if cfg == nil {
		return p11cred.Config{}, usagef("no token: set --pkcs11-module (%s), --pkcs11-token (%s) and --pkcs11-key-label (%s)", envPKCS11Module, envPKCS11Token, envPKCS11KeyLabel)
	}
	return *cfg, nil
}

func (a *app) pkcs11Cmd() *cobra.Command {
	return group("pkcs11", "The client's key in a PKCS#11 token (smartcard, TPM, HSM): provisioning", a.pkcs11KeygenCmd(), a.pkcs11CSRCmd(), a.pkcs11ImportCertCmd(), a.pkcs11ShowCmd())
}

func (a *app) pkcs11KeygenCmd() *cobra.Command {
	var csrOut, cacheLabel string
	cmd := &cobra.Command{
		Use:   "keygen NAME --csr FILE [--cache-key-label L]",
		Short: "Generate the client's key pair and cache secret in the token, and a certificate request",
		Long: `Generate, inside the token named by the global --pkcs11-* flags, an ECDSA
P-256 key pair labelled --pkcs11-key-label and a 256-bit secret labelled
"<key label>-cache" (or --cache-key-label) from which the client derives the
key of its cache file. Neither can ever be read out of the token. Then write
a certificate request for coffer://client/NAME, signed in the token, to FILE.

Next, an officer holding the client CA key signs it:

  coffer client sign --csr FILE --out NAME.pem [--register --group G --role R]

and the certificate goes back to the client, as --cert, or into the token:

  coffer pkcs11 import-cert NAME.pem

Refuses if the token already holds a key under either label.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := checkCSRTarget(name, csrOut); err != nil {
				return err
			}
			cfg, err := a.requirePKCS11()
			if err != nil {
				return err
			}
			cfg.CacheKeyLabel = cacheLabel
			if err := cfg.Validate(); err != nil {
				return usageError{err}
			}
			if _, err := p11cred.GenerateKey(cfg); err != nil {
				return fmt.Errorf("generate the key in the token: %w", err)
			}
			return a.writeCSR(cfg, name, csrOut, true)
		},
	}
	cmd.Flags().StringVar(&csrOut, "csr", "", "file for the certificate request; must not exist (required)")
	cmd.Flags().StringVar(&cacheLabel, "cache-key-label", "", "label of the cache secret (default: the key label and \"-cache\")")
	return cmd
}

// checkCSRTarget checks the client name a request is made for and the
// file it goes to (--csr, which must not exist).
func checkCSRTarget(name, csrOut string) error {
	if err := (transport.Identity{Kind: transport.KindClient, Name: name}).Validate(); err != nil {
		return usageError{err}
	}
	if csrOut == "" {
		return usagef("--csr is required")
	}
	return refuseExisting(csrOut)
}

func (a *app) pkcs11CSRCmd() *cobra.Command {
	var csrOut string
	cmd := &cobra.Command{
		Use:   "csr NAME --csr FILE",
		Short: "Write a certificate request for the token's existing key (to renew its certificate)",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkCSRTarget(args[0], csrOut); err != nil {
				return err
			}
			cfg, err := a.requirePKCS11()
			if err != nil {
				return err
			}
			return a.writeCSR(cfg, args[0], csrOut, false)
		},
	}
	cmd.Flags().StringVar(&csrOut, "csr", "", "file for the certificate request; must not exist (required)")
	return cmd
}

// writeCSR opens the token key, writes a request for client name to path
// and reports it.
func (a *app) writeCSR(cfg p11cred.Config, name, path string, generated bool) error {
	cred, err := a.openPKCS11(cfg)
	if err != nil {
		return err
	}
	csr, err := cred.CreateCSR(name)
	if err != nil {
		return err
	}
	if err := writeExclusive(path, csr, certFileMode); err != nil {
		return err
	}
	fp, err := publicKeyFingerprint(cred.Public())
	if err != nil {
		return err
	}
	if a.format == formatJSON {
		out := map[string]any{"token": cfg.TokenLabel, "key_label": cfg.KeyLabel, "public_key_sha256": fp, "csr": path,
			"identity": transport.Identity{Kind: transport.KindClient, Name: name}.String()}
		if generated {
			out["cache_key_label"] = cfg.ResolvedCacheKeyLabel()
		}
		return writeJSON(a.out, out)
	}
	tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "token:\t%s\n", cfg.TokenLabel)
	fmt.Fprintf(tw, "key:\t%s (%s; generated in the token, never extractable)\n", cfg.KeyLabel, keyKind(cred.Public()))
	if generated {
		fmt.Fprintf(tw, "cache secret:\t%s (HMAC-SHA256, never extractable)\n", cfg.ResolvedCacheKeyLabel())
	}
	fmt.Fprintf(tw, "public key sha256:\t%s\n", fp)
	fmt.Fprintf(tw, "request:\t%s (coffer://client/%s)\n", path, name)
	fmt.Fprintf(tw, "next:\tcoffer client sign --csr %s --out %s.pem; then coffer pkcs11 import-cert %s.pem, or pass --cert %s.pem\n", path, name, name, name)
	return tw.Flush()
}

func (a *app) pkcs11ImportCertCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "import-cert CERTFILE",
		Short: "Store the client's certificate in the token, beside its key",
		Long: `Store the certificate in CERTFILE (PEM; the first certificate) in the token
as an X.509 certificate object with the key's label and id, so that --cert
is no longer needed. The certificate must be for the token's key. A
certificate stored earlier under the label is replaced (a renewal).`,
		Args: exactArgs(1, "CERTFILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := a.requirePKCS11()
			if err != nil {
				return err
			}
			cfg.CertFile = ""
			data, err := readFileLimited(args[0])
			if err != nil {
				return err
			}
			cert, err := readCertFile(args[0])
			if err != nil {
				return err
			}
			cred, err := a.openPKCS11(cfg)
			if err != nil {
				return err
			}
			if err := cred.StoreCertificate(data); err != nil {
				return fmt.Errorf("store the certificate in the token: %w", err)
			}
			return a.printTokenCert(cfg, cert)
		},
	}
}

func (a *app) pkcs11ShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show",
		Short: "Show the token's client key, its certificate and whether the cache secret is present",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.requirePKCS11()
			if err != nil {
				return err
			}
			cred, err := a.openPKCS11(cfg)
			if err != nil {
				return err
			}
			fp, err := publicKeyFingerprint(cred.Public())
			if err != nil {
				return err
			}
			hasSecret := cred.HasCacheSecret()
			pair, cerr := cred.Certificate()
			if cerr != nil && !errors.Is(cerr, p11cred.ErrNotFound) {
				return cerr
			}
			out := map[string]any{"token": cfg.TokenLabel, "key_label": cfg.KeyLabel, "key_type": keyKind(cred.Public()),
				"public_key_sha256": fp, "cache_key_label": cfg.ResolvedCacheKeyLabel(), "cache_secret": hasSecret}
			if cerr == nil {
				id, _ := transport.IdentityFromCert(pair.Leaf)
				out["identity"] = id.String()
				out["not_after"] = pair.Leaf.NotAfter.UTC().Format(time.RFC3339)
				out["certificate_sha256"] = fingerprint(pair.Leaf)
			}
			if a.format == formatJSON {
				return writeJSON(a.out, out)
			}
			tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
			fmt.Fprintf(tw, "token:\t%s\n", cfg.TokenLabel)
			fmt.Fprintf(tw, "key:\t%s (%s)\n", cfg.KeyLabel, out["key_type"])
			fmt.Fprintf(tw, "public key sha256:\t%s\n", fp)
			if hasSecret {
				fmt.Fprintf(tw, "cache secret:\t%s\n", cfg.ResolvedCacheKeyLabel())
			} else {
				fmt.Fprintf(tw, "cache secret:\tnone labelled %s\n", cfg.ResolvedCacheKeyLabel())
			}
			if cerr == nil {
				fmt.Fprintf(tw, "identity:\t%s\n", out["identity"])
				fmt.Fprintf(tw, "expires:\t%s\n", out["not_after"])
			} else {
				fmt.Fprintf(tw, "certificate:\tnone (give --cert, or store one with coffer pkcs11 import-cert)\n")
			}
			return tw.Flush()
		},
	}
}

// printTokenCert reports a certificate stored in the token.
func (a *app) printTokenCert(cfg p11cred.Config, cert *x509.Certificate) error {
	id, err := transport.IdentityFromCert(cert)
	if err != nil {
		return err
	}
	if a.format == formatJSON {
		return writeJSON(a.out, map[string]string{"token": cfg.TokenLabel, "key_label": cfg.KeyLabel, "identity": id.String(),
			"not_after": cert.NotAfter.UTC().Format(time.RFC3339), "sha256": fingerprint(cert)})
	}
	tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "stored in:\ttoken %s, label %s\n", cfg.TokenLabel, cfg.KeyLabel)
	fmt.Fprintf(tw, "identity:\t%s\n", id)
	fmt.Fprintf(tw, "expires:\t%s\n", cert.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "sha256:\t%s\n", fingerprint(cert))
	return tw.Flush()
}

// publicKeyFingerprint is the SHA-256 of the key's SubjectPublicKeyInfo.
func publicKeyFingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encode the public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

func keyKind(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	}
	return fmt.Sprintf("%T", pub)
}
