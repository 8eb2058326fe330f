package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/hsmwrap/hsmtest"
)

// The PKCS#11 tests run against a real SoftHSM2: TestMain makes the tokens
// before anything loads the module (SoftHSM2 reads its configuration once
// per process).

var softhsm *hsmtest.SoftHSM

func TestMain(m *testing.M) {
	var err error
	if softhsm, err = hsmtest.StartSoftHSM("coffer-cli-test", 3); err != nil {
		fmt.Fprintln(os.Stderr, "cmd/coffer tests:", err)
		os.Exit(1)
	}
	code := m.Run()
	softhsm.Close()
	os.Exit(code)
}

// withToken returns env with the client key moved to a fresh SoftHSM2
// token: the PKCS#11 settings for key label "app", and no --cert or --key.
func withToken(t *testing.T, env envMap) envMap {
	t.Helper()
	tok := softhsm.Token(t)
	out := envMap{}
	for k, v := range env {
		if k != envKey && k != envCert {
			out[k] = v
		}
	}
	out[envPKCS11Module] = softhsm.Module
	out[envPKCS11Token] = tok.Label
	out[envPKCS11KeyLabel] = "app"
	out[envPKCS11PINFile] = tok.PINFile
	return out
}

func TestCLI_PKCS11_ProvisionSignConnect(t *testing.T) {
	_, clusterEnv := mustMemCluster(t, 2)
	env := withToken(t, clusterEnv)
	dir := t.TempDir()
	pkiDir := filepath.Dir(clusterEnv[envCA])
	csr, cert := filepath.Join(dir, "app.csr"), filepath.Join(dir, "app.pem")

	// The key pair and cache secret are made in the token; the request is
	// signed there.
	out := mustRun(t, env, "pkcs11", "keygen", "app", "--csr", csr)
	if !strings.Contains(out, "cache secret:") || !strings.Contains(out, "app-cache") {
		t.Fatalf("keygen output:\n%s", out)
	}
	if code, _, errOut := runCLI(t, env, "pkcs11", "keygen", "app", "--csr", filepath.Join(dir, "again.csr")); code != exitFailure || !strings.Contains(errOut, "already holds a key labelled \"app\"") {
		t.Fatalf("keygen again: exit %d, stderr %q", code, errOut)
	}
	// Before a certificate exists, a command cannot connect.
	if code, _, errOut := runCLI(t, env, "cluster", "status"); code != exitFailure || !strings.Contains(errOut, "no certificate labelled") {
		t.Fatalf("status without a certificate: exit %d, stderr %q", code, errOut)
	}
	// The officer signs it with the client CA (no cluster needed).
	mustRun(t, envMap{}, "client", "sign", "--csr", csr, "--out", cert,
		"--ca-cert", filepath.Join(pkiDir, "client-ca.pem"), "--ca-key", filepath.Join(pkiDir, "client-ca-key.pem"))

	// With the certificate as a file, --cert.
	withCert := envMap{}
	for k, v := range env {
		withCert[k] = v
	}
	withCert[envCert] = cert
	if out := mustRun(t, withCert, "cluster", "status"); !strings.Contains(out, "leader") {
		t.Fatalf("cluster status with the token key and --cert:\n%s", out)
	}

	// With the certificate in the token.
	if out := mustRun(t, env, "pkcs11", "import-cert", cert); !strings.Contains(out, "client:app") {
		t.Fatalf("import-cert output:\n%s", out)
	}
	if out := mustRun(t, env, "cluster", "status"); !strings.Contains(out, "leader") {
		t.Fatalf("cluster status with the token's key and certificate:\n%s", out)
	}
	var show map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, env, "-o", "json", "pkcs11", "show")), &show); err != nil {
		t.Fatal(err)
	}
	if show["identity"] != "client:app" || show["cache_secret"] != true || show["key_type"] != "ECDSA P-256" {
		t.Fatalf("pkcs11 show = %v", show)
	}

	// A renewal: a new request from the same key.
	mustRun(t, env, "pkcs11", "csr", "app", "--csr", filepath.Join(dir, "renew.csr"))

	// The PIN from the environment instead of a file.
	pin, err := os.ReadFile(env[envPKCS11PINFile])
	if err != nil {
		t.Fatal(err)
	}
	byEnv := envMap{}
	for k, v := range env {
		if k != envPKCS11PINFile {
			byEnv[k] = v
		}
	}
	byEnv[envPKCS11PIN] = strings.TrimSpace(string(pin))
	t.Setenv(envPKCS11PIN, byEnv[envPKCS11PIN])
	mustRun(t, byEnv, "cluster", "status")

	// A wrong PIN is a clear failure.
	wrong := filepath.Join(dir, "wrong-pin")
	if err := os.WriteFile(wrong, []byte("0000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCLI(t, env, "--pkcs11-pin-file", wrong, "cluster", "status"); code != exitFailure ||
		!strings.Contains(errOut, "PIN missing or refused") || !strings.Contains(errOut, "CKR_PIN_INCORRECT") {
		t.Fatalf("wrong PIN: exit %d, stderr %q", code, errOut)
	}
	// A missing key, a missing module.
	if code, _, errOut := runCLI(t, env, "--pkcs11-key-label", "nobody", "cluster", "status"); code != exitFailure || !strings.Contains(errOut, `no private key labelled "nobody"`) {
		t.Fatalf("missing key: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, env, "--pkcs11-module", filepath.Join(dir, "libnone.so"), "cluster", "status"); code != exitFailure || !strings.Contains(errOut, "libnone.so") {
		t.Fatalf("missing module: exit %d, stderr %q", code, errOut)
	}
}

func TestCLI_PKCS11_UsageErrors(t *testing.T) {
	base := envMap{envAddr: "127.0.0.1:1", envCA: "ca.pem"}
	full := envMap{envAddr: "127.0.0.1:1", envCA: "ca.pem", envPKCS11Module: "/lib/m.so", envPKCS11Token: "t", envPKCS11KeyLabel: "k", envPKCS11PINFile: "pin"}
	for _, tc := range []struct {
		name string
		env  envMap
		args []string
		want string
	}{
		{"half a token", base, []string{"--pkcs11-module", "/lib/m.so", "cluster", "status"}, "set --pkcs11-token (COFFER_PKCS11_TOKEN) and --pkcs11-key-label"},
		{"token and key file", full, []string{"--key", "k.pem", "cluster", "status"}, "give one"},
		{"PIN file without a token", base, []string{"--pkcs11-pin-file", "pin", "--cert", "c.pem", "--key", "k.pem", "cluster", "status"}, "no token is"},
		{"no PIN", base, []string{"--pkcs11-module", "/lib/m.so", "--pkcs11-token", "t", "--pkcs11-key-label", "k", "cluster", "status"}, "no PIN for token t"},
		{"pkcs11 without a token", base, []string{"pkcs11", "show"}, "no token: set --pkcs11-module"},
		{"keygen without --csr", full, []string{"pkcs11", "keygen", "app"}, "--csr is required"},
		{"keygen bad name", full, []string{"pkcs11", "keygen", "a/b", "--csr", "x"}, "invalid"},
		{"no CA", envMap{envAddr: "127.0.0.1:1", envPKCS11Module: "/lib/m.so", envPKCS11Token: "t", envPKCS11KeyLabel: "k", envPKCS11PINFile: "pin"}, []string{"cluster", "status"}, "no CA certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runCLI(t, tc.env, tc.args...)
			if code != exitUsage || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, errOut, exitUsage, tc.want)
			}
		})
	}
}
