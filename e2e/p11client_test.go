package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestE2E_ClientKeyInToken follows README "Client keys in a PKCS#11 token"
// on a `cofferd dev` cluster with SoftHSM2: the client's key is generated in
// a token and certified by the client CA, and every call the client then
// makes (TLS handshakes and request signatures alike) is signed in the
// token; its signed requests verify offline against its certificate.
func TestE2E_ClientKeyInToken(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and starts processes")
	}
	module := softhsmModule(t)
	e := &env{t: t, bin: buildBinaries(t), dir: filepath.Join(t.TempDir(), "dev"), base: freeBase(t, 3)}
	e.startDev()
	e.loadEnv()

	work := t.TempDir()
	conf := filepath.Join(work, "softhsm2.conf")
	if err := os.MkdirAll(filepath.Join(work, "tokens"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+filepath.Join(work, "tokens")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", conf)
	if out, err := exec.Command("softhsm2-util", "--init-token", "--free", "--label", "app-token", "--so-pin", "87654321", "--pin", "12345678").CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util: %v\n%s", err, out)
	}
	pin := filepath.Join(work, "app.pin")
	if err := os.WriteFile(pin, []byte("12345678\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	token := []string{"COFFER_PKCS11_MODULE=" + module, "COFFER_PKCS11_TOKEN=app-token", "COFFER_PKCS11_KEY_LABEL=app", "COFFER_PKCS11_PIN_FILE=" + pin}
	var admin, app []string
	for _, v := range e.vars {
		admin = append(admin, v)
		if !strings.HasPrefix(v, "COFFER_CERT=") && !strings.HasPrefix(v, "COFFER_KEY=") {
			app = append(app, v)
		}
	}
	app = append(app, token...)
	admin = append(admin, "COFFER_CLIENT_CA_KEY="+filepath.Join(e.dir, "ca", "client-ca-key.pem"))
	run := func(vars []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(e.bin, "coffer"), args...)
		cmd.Env, cmd.Dir = append(os.Environ(), vars...), work
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("coffer %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	run(app, "pkcs11", "keygen", "app", "--csr", "app.csr")
	run(admin, "client", "sign", "--csr", "app.csr", "--out", "app.pem", "--register", "--role", "application")
	run(admin, "acl", "grant", "--client", "app", "--ops", "generate,get", "--resource", "app/**")
	run(app, "pkcs11", "import-cert", "app.pem")

	gkid := strings.TrimSpace(run(app, "key", "generate", "--resource", "app/r"))
	if out := run(app, "key", "get", gkid); !strings.Contains(out, gkid) {
		t.Fatalf("key get as the token's client:\n%s", out)
	}

	run(admin, "audit", "export", "--out", filepath.Join(work, "audit.jsonl"))
	args := []string{"audit", "verify", "--file", "audit.jsonl", "--client-cert", "app.pem"}
	for i := 1; i <= 3; i++ {
		args = append(args, "--trusted-key", filepath.Join(e.dir, "n"+string(rune('0'+i)), "data", "audit-signing.pub"))
	}
	out := run(admin, args...)
	m := regexp.MustCompile(`signed requests:\s+(\d+) verified`).FindStringSubmatch(out)
	if m == nil || m[1] == "0" {
		t.Fatalf("no request of the token's client verified offline:\n%s", out)
	}
}
