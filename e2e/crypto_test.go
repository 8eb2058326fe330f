package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestE2E_EncryptDecrypt drives the data encryption commands against a
// `cofferd dev` cluster as an application client granted encrypt, decrypt
// and datakey on its resources: a file encrypted with a context decrypts on
// every node with the same context and on none with another; a data key's
// ciphertext decrypts to the data key; an ungranted client and a non-AES key
// are refused; and neither plaintexts nor data keys reach the audit log or
// the nodes' disks, nor contexts the audit log.
func TestE2E_EncryptDecrypt(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and starts processes")
	}
	e := &env{t: t, bin: buildBinaries(t), dir: filepath.Join(t.TempDir(), "dev"), base: freeBase(t, 3)}
	dev := e.startDev()
	e.loadEnv()
	work := t.TempDir()

	// The admin makes the keys; app may use those under e2e/data, nobody
	// may use any.
	caKey := filepath.Join(e.dir, "ca", "client-ca-key.pem")
	for _, name := range []string{"app", "nobody"} {
		e.mustCoffer("client", "issue", name, "--out", filepath.Join(work, name), "--ca-key", caKey, "--role", "application")
	}
	e.mustCoffer("acl", "grant", "--client", "app", "--ops", "encrypt,decrypt,datakey", "--resource", "e2e/data/**")
	gk := strings.TrimSpace(e.mustCoffer("key", "generate", "--resource", "e2e/data/orders", "--algorithm", "aes-256"))
	hk := strings.TrimSpace(e.mustCoffer("key", "generate", "--resource", "e2e/data/macs", "--algorithm", "hmac-sha256"))
	as := func(name string, args ...string) (string, string, int) {
		dir := filepath.Join(work, name)
		return e.coffer(append([]string{"--cert", filepath.Join(dir, name+".pem"), "--key", filepath.Join(dir, name+"-key.pem")}, args...)...)
	}
	mustApp := func(args ...string) string {
		t.Helper()
		out, errs, code := as("app", args...)
		if code != 0 {
			t.Fatalf("coffer %s as app: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
		}
		return out
	}
	file := func(name string) string { return filepath.Join(work, name) }
	read := func(name string) []byte {
		t.Helper()
		data, err := os.ReadFile(file(name))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	private := func(name string) {
		t.Helper()
		if fi, err := os.Stat(file(name)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, %v; want mode 0600", name, fi, err)
		}
	}

	// The context's value is a marker the audit log must not hold.
	const ctxMarker = "e2e-context-marker-41c7"
	encCtx := []string{"--context", "tenant=acme", "--context", "purpose=" + ctxMarker + ",a=b"}
	plaintext := bytes.Repeat([]byte("E2E-CRYPTO-PLAINTEXT order 1234, 3 widgets\n"), 300)
	if err := os.WriteFile(file("pt"), plaintext, 0o600); err != nil {
		t.Fatal(err)
	}

	// Encrypt a file with the context; it decrypts on every node with the
	// same pairs, given in another order.
	if out := mustApp(append([]string{"encrypt", "--gkid", gk, "--in", file("pt"), "--out", file("ct")}, encCtx...)...); out != "" {
		t.Fatalf("encrypt --out printed %q", out)
	}
	private("ct")
	ct := read("ct")
	if len(ct) <= len(plaintext) || bytes.Contains(ct, []byte("E2E-CRYPTO-PLAINTEXT")) {
		t.Fatalf("ciphertext of %d bytes for a plaintext of %d, or holding it", len(ct), len(plaintext))
	}
	for i := 1; i <= 3; i++ {
		back := fmt.Sprintf("back%d", i)
		mustApp("--addr", fmt.Sprintf("127.0.0.1:%d", e.base+i), "decrypt", "--context", "purpose="+ctxMarker+",a=b",
			"--context", "tenant=acme", "--in", file("ct"), "--out", file(back))
		if !bytes.Equal(read(back), plaintext) {
			t.Fatalf("node %d decrypted something else", i)
		}
		private(back)
	}

	// Another context, or none, does not decrypt: a non-zero exit, a
	// message, no plaintext, no --out file.
	for _, ctxArgs := range [][]string{{"--context", "tenant=other", "--context", "purpose=" + ctxMarker + ",a=b"}, {"--context", "tenant=acme"}, nil} {
		out, errs, code := as("app", append([]string{"decrypt", "--in", file("ct"), "--out", file("refused")}, ctxArgs...)...)
		if code != 1 || !strings.HasPrefix(errs, "coffer: ") || strings.Contains(out+errs, "E2E-CRYPTO-PLAINTEXT") {
			t.Fatalf("decrypt with context %v: exit %d\nstdout: %s\nstderr: %s", ctxArgs, code, out, errs)
		}
		if _, err := os.Stat(file("refused")); err == nil {
			t.Fatalf("a refused decrypt (context %v) wrote its --out file", ctxArgs)
		}
	}

	// datakey: the data key and its ciphertext, which decrypts to it with
	// the same context.
	out := mustApp(append([]string{"datakey", "--gkid", gk}, encCtx...)...)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "plaintext: ") || !strings.HasPrefix(lines[1], "ciphertext: ") {
		t.Fatalf("datakey printed:\n%s", out)
	}
	dataKey, err1 := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[0], "plaintext: "))
	wrapped, err2 := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[1], "ciphertext: "))
	if err1 != nil || err2 != nil || len(dataKey) != 32 || len(wrapped) <= 32 {
		t.Fatalf("datakey: a %d-byte key (%v), a %d-byte ciphertext (%v)", len(dataKey), err1, len(wrapped), err2)
	}
	if err := os.WriteFile(file("dk.ct"), wrapped, 0o600); err != nil {
		t.Fatal(err)
	}
	mustApp(append([]string{"decrypt", "--in", file("dk.ct"), "--out", file("dk")}, encCtx...)...)
	if !bytes.Equal(read("dk"), dataKey) {
		t.Fatal("the data key's ciphertext decrypted to another key")
	}
	if _, _, code := as("app", "decrypt", "--in", file("dk.ct")); code == 0 {
		t.Fatal("the data key's ciphertext decrypted without its context")
	}

	// An aes-128 data key without its plaintext, written to a file.
	mustApp("datakey", "--gkid", gk, "--algorithm", "aes-128", "--no-plaintext", "--out", file("dk128.txt"))
	private("dk128.txt")
	line := string(read("dk128.txt"))
	if !strings.HasPrefix(line, "ciphertext: ") || strings.Count(line, "\n") != 1 || strings.Contains(line, "plaintext") {
		t.Fatalf("datakey --no-plaintext wrote %q", line)
	}
	wrapped128, err := base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(line, "ciphertext: ")))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file("dk128.ct"), wrapped128, 0o600); err != nil {
		t.Fatal(err)
	}
	mustApp("decrypt", "--in", file("dk128.ct"), "--out", file("dk128"))
	dataKey128 := read("dk128")
	if len(dataKey128) != 16 {
		t.Fatalf("aes-128 data key of %d bytes", len(dataKey128))
	}

	// -o json: the response, with the ciphertext in base64.
	var enc struct {
		Ciphertext []byte `json:"ciphertext"`
		Gkid       string `json:"gkid"`
		KeyVersion uint32 `json:"key_version"`
	}
	if err := json.Unmarshal([]byte(mustApp("-o", "json", "encrypt", "--gkid", gk, "--in", file("pt"))), &enc); err != nil ||
		enc.Gkid != gk || enc.KeyVersion == 0 || len(enc.Ciphertext) <= len(plaintext) {
		t.Fatalf("encrypt -o json: gkid %q, key version %d, %d bytes, %v", enc.Gkid, enc.KeyVersion, len(enc.Ciphertext), err)
	}

	// Refusals: a client without the grants, a key that is not AES, and
	// (locally, before any request) input over 64 KiB.
	if _, errs, code := as("nobody", "encrypt", "--gkid", gk, "--in", file("pt")); code != 1 || !strings.Contains(errs, "PermissionDenied") {
		t.Fatalf("encrypt by an ungranted client: exit %d, %s", code, errs)
	}
	if _, errs, code := as("nobody", "decrypt", "--in", file("ct"), "--context", "tenant=acme", "--context", "purpose="+ctxMarker+",a=b"); code != 1 ||
		!strings.Contains(errs, "PermissionDenied") || strings.Contains(errs, "E2E-CRYPTO-PLAINTEXT") {
		t.Fatalf("decrypt by an ungranted client: exit %d, %s", code, errs)
	}
	if _, errs, code := as("app", "encrypt", "--gkid", hk, "--in", file("pt")); code != 1 || !strings.Contains(errs, "FailedPrecondition") {
		t.Fatalf("encrypt under an HMAC key: exit %d, %s", code, errs)
	}
	if err := os.WriteFile(file("big"), make([]byte, 64<<10+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := as("app", "encrypt", "--gkid", gk, "--in", file("big")); code != 2 || !strings.Contains(errs, "coffer datakey") {
		t.Fatalf("encrypt of 64 KiB + 1: exit %d, %s", code, errs)
	}

	// Each call is audited, under its operation; the audit holds neither
	// plaintexts, data keys nor contexts.
	deadline := time.Now().Add(20 * time.Second)
	for _, op := range []string{"encrypt", "decrypt", "datakey"} {
		for {
			var q struct {
				Entries []json.RawMessage `json:"entries"`
			}
			out := e.mustCoffer("audit", "query", "--client", "app", "--op", op, "--all", "-o", "json")
			if err := json.Unmarshal([]byte(out), &q); err != nil {
				t.Fatalf("audit query --op %s: %v\n%s", op, err, out)
			}
			if len(q.Entries) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s entry of app in the audit log:\n%s", op, out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	e.mustCoffer("audit", "export", "--out", file("audit.jsonl"))
	export := read("audit.jsonl")
	secrets := [][]byte{[]byte("E2E-CRYPTO-PLAINTEXT"), dataKey, dataKey128}
	for i, s := range append(secrets, []byte(ctxMarker)) {
		if bytes.Contains(export, s) || bytes.Contains(export, []byte(base64.StdEncoding.EncodeToString(s))) {
			t.Fatalf("the audit export holds secret %d", i)
		}
	}

	// Encrypt-and-custody: a new key for one record, named on standard
	// error and in the ciphertext.
	if _, errs, code := e.coffer("encrypt", "--resource", "e2e/data/row-1", "--in", file("pt"), "--out", file("row1.ct")); code != 0 || !strings.Contains(errs, "coffer: new key k1-") {
		t.Fatalf("encrypt --resource: exit %d, %s", code, errs)
	}
	e.mustCoffer("decrypt", "--in", file("row1.ct"), "--out", file("row1"))
	if !bytes.Equal(read("row1"), plaintext) {
		t.Fatal("encrypt-and-custody: the ciphertext decrypted to something else")
	}

	// reencrypt: to the new key, with another context.
	e.mustCoffer(append([]string{"reencrypt", "--in", file("ct"), "--to", strings.TrimSpace(e.mustCoffer("key", "generate", "--resource", "e2e/data/moved")),
		"--to-context", "tenant=moved", "--out", file("moved.ct")}, encCtx...)...)
	e.mustCoffer("decrypt", "--context", "tenant=moved", "--in", file("moved.ct"), "--out", file("moved"))
	if !bytes.Equal(read("moved"), plaintext) {
		t.Fatal("reencrypt: the new ciphertext decrypted to something else")
	}

	// Rotation: the new version encrypts, the old one still decrypts until
	// retired; get names the version, the audit trail each use's version.
	if out := e.mustCoffer("key", "rotate", gk, "--reason", "e2e"); !strings.Contains(out, "2 (newest, 0 encryptions)") {
		t.Fatalf("key rotate:\n%s", out)
	}
	mustApp(append([]string{"encrypt", "--gkid", gk, "--in", file("pt"), "--out", file("v2.ct")}, encCtx...)...)
	mustApp(append([]string{"decrypt", "--in", file("ct"), "--out", file("back-v1")}, encCtx...)...)
	if !bytes.Equal(read("back-v1"), plaintext) {
		t.Fatal("after rotation, the version 1 ciphertext decrypted to something else")
	}
	if out := e.mustCoffer("key", "get", gk, "--version", "1"); !strings.Contains(out, "version:      1") {
		t.Fatalf("key get --version 1:\n%s", out)
	}
	e.mustCoffer("key", "retire", gk, "--version", "1")
	if _, errs, code := as("app", append([]string{"decrypt", "--in", file("ct")}, encCtx...)...); code != 1 || !strings.Contains(errs, "was retired") {
		t.Fatalf("decrypt under a retired version: exit %d, %s", code, errs)
	}
	if q := e.mustCoffer("audit", "query", "--gkid", gk, "--op", "rotate"); !strings.Contains(q, gk+" v2") || !strings.Contains(q, "version 1 -> 2: e2e") {
		t.Fatalf("audit query of the rotation:\n%s", q)
	}
	// What follows decrypts the version 2 ciphertext.
	if err := os.Rename(file("v2.ct"), file("ct")); err != nil {
		t.Fatal(err)
	}

	// The key's life cycle: deactivated, it still decrypts and no longer
	// encrypts; destroyed, it does neither, and describe says so.
	e.mustCoffer("key", "deactivate", gk, "--reason", "e2e rotation")
	if _, errs, code := as("app", "encrypt", "--gkid", gk, "--in", file("pt")); code != 1 || !strings.Contains(errs, "is deactivated; it only decrypts") {
		t.Fatalf("encrypt under a deactivated key: exit %d, %s", code, errs)
	}
	mustApp(append([]string{"decrypt", "--in", file("ct"), "--out", file("back-deactivated")}, encCtx...)...)
	if !bytes.Equal(read("back-deactivated"), plaintext) {
		t.Fatal("a deactivated key decrypted something else")
	}
	e.mustCoffer("key", "destroy", gk)
	if _, errs, code := as("app", append([]string{"decrypt", "--in", file("ct")}, encCtx...)...); code != 1 || !strings.Contains(errs, "is destroyed") {
		t.Fatalf("decrypt under a destroyed key: exit %d, %s", code, errs)
	}
	if d := e.mustCoffer("key", "describe", gk); !strings.Contains(d, "destroyed") || !strings.Contains(d, "state changed:") {
		t.Fatalf("describe a destroyed key:\n%s", d)
	}

	// No plaintext or data key anywhere under the nodes' directories.
	e.stop(dev)
	err = filepath.WalkDir(e.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, s := range secrets {
			if bytes.Contains(data, s) || bytes.Contains(data, []byte(base64.StdEncoding.EncodeToString(s))) {
				return fmt.Errorf("secret %d in %s", i, path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
