package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/fsm"
)

// softhsmModule returns the SoftHSM2 library the pkcs11 dev keystore is to
// use. When SoftHSM2 is missing the test skips, unless CI is set (as CI
// systems set it), where that is a failure.
func softhsmModule(t *testing.T) string {
	t.Helper()
	module := os.Getenv("SOFTHSM2_MODULE")
	if module == "" {
		module = "/usr/lib/softhsm/libsofthsm2.so"
	}
	var missing []string
	if _, err := os.Stat(module); err != nil {
		missing = append(missing, "module "+module+" (set SOFTHSM2_MODULE to another path)")
	}
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		missing = append(missing, "softhsm2-util")
	}
	if len(missing) > 0 {
		msg := "SoftHSM2 is not installed: no " + strings.Join(missing, ", no ") + "; `make softhsm` installs it"
		if ci := os.Getenv("CI"); ci != "" && ci != "false" {
			t.Fatalf("%s (CI=%s, so this is a failure)", msg, ci)
		}
		t.Skip(msg)
	}
	return module
}

// mustHealthyCluster checks `coffer cluster status`: three nodes, one
// leader, every node healthy (which includes its keystore's self-test).
func (e *env) mustHealthyCluster() {
	e.t.Helper()
	var st struct {
		ClusterID string `json:"cluster_id"`
		Nodes     []struct {
			ID, Role string
			Healthy  bool
		} `json:"nodes"`
	}
	// Right after a restart a node may not know the leader yet.
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := e.mustCoffer("cluster", "status", "-o", "json")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			e.t.Fatalf("cluster status: %v\n%s", err, out)
		}
		leaders, healthy := 0, 0
		for _, n := range st.Nodes {
			if n.Role == "leader" {
				leaders++
			}
			if n.Healthy {
				healthy++
			}
		}
		if len(st.Nodes) == 3 && leaders == 1 && healthy == 3 && st.ClusterID != "" {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("cluster status: want 3 healthy nodes and one leader:\n%s", out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// mustGetEverywhere reads gkid on every node and returns its material,
// which every node must agree on.
func (e *env) mustGetEverywhere(gkid string) []byte {
	e.t.Helper()
	var first string
	for i := 1; i <= 3; i++ {
		out := e.mustCoffer("--addr", fmt.Sprintf("127.0.0.1:%d", e.base+i), "key", "get", gkid, "-o", "json")
		var got struct {
			Material string `json:"material"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil || got.Material == "" {
			e.t.Fatalf("get %s on node %d: %v\n%s", gkid, i, err, out)
		}
		if first == "" {
			first = got.Material
		} else if got.Material != first {
			e.t.Fatalf("nodes disagree on the material of %s", gkid)
		}
	}
	m, err := base64.StdEncoding.DecodeString(first)
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

// auditKeys reads every node's published audit signing key, which on the
// pkcs11 keystore is an ECDSA P-256 key held on the node's token.
func (e *env) auditKeys() []*ecdsa.PublicKey {
	e.t.Helper()
	var keys []*ecdsa.PublicKey
	for i := 1; i <= 3; i++ {
		path := filepath.Join(e.dir, fmt.Sprintf("n%d", i), "data", "audit-signing.pub")
		data, err := os.ReadFile(path)
		if err != nil {
			e.t.Fatal(err)
		}
		block, _ := pem.Decode(data)
		if block == nil {
			e.t.Fatalf("%s is not PEM", path)
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			e.t.Fatal(err)
		}
		ec, ok := k.(*ecdsa.PublicKey)
		if !ok || ec.Curve != elliptic.P256() {
			e.t.Fatalf("node n%d's audit signing key is a %T, want ECDSA P-256 (the token's key)", i, k)
		}
		for j, other := range keys {
			if other.Equal(ec) {
				e.t.Fatalf("nodes n%d and n%d share an audit signing key", j+1, i)
			}
		}
		keys = append(keys, ec)
	}
	return keys
}

// TestE2E_DevClusterPKCS11 runs the dev cluster on SoftHSM2 tokens: keys
// generated and imported through the CLI are served by every node, survive
// a restart, audit checkpoints are signed by the tokens' keys, and no
// plaintext material is anywhere under the dev directory, tokens included.
func TestE2E_DevClusterPKCS11(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and starts processes")
	}
	module := softhsmModule(t)
	e := &env{t: t, bin: buildBinaries(t), dir: filepath.Join(t.TempDir(), "dev"), base: freeBase(t, 3)}
	dev := e.startDevWith("--keystore", "pkcs11", "--pkcs11-module", module)
	for _, want := range []string{"Created a new 3-node dev cluster", "through the key ceremony; KCV ", "pkcs11 keystore", "coffer-n1"} {
		if !strings.Contains(dev.output(), want) {
			t.Fatalf("first start does not say %q:\n%s", want, dev.output())
		}
	}
	for i := 1; i <= 3; i++ {
		for _, f := range []string{"pin", "so-pin"} {
			path := filepath.Join(e.dir, fmt.Sprintf("n%d", i), "hsm", f)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
			}
		}
	}
	e.loadEnv()
	e.mustHealthyCluster()

	gk := strings.TrimSpace(e.mustCoffer("key", "generate", "--policy", "default", "--resource", "e2e/hsm", "--algorithm", "aes-256"))
	generated := e.mustGetEverywhere(gk)
	if len(generated) != 32 {
		t.Fatalf("generated material is %d bytes", len(generated))
	}
	imported := bytes.Repeat([]byte("E2E-PKCS11-KEY!!"), 2)
	matFile := filepath.Join(t.TempDir(), "k.bin")
	if err := os.WriteFile(matFile, imported, 0o600); err != nil {
		t.Fatal(err)
	}
	pk := strings.TrimSpace(e.mustCoffer("key", "put", "--resource", "e2e/hsm", "--material-file", matFile))
	if got := e.mustGetEverywhere(pk); !bytes.Equal(got, imported) {
		t.Fatal("the imported key came back different")
	}
	secrets := [][]byte{generated, imported}
	keys := e.auditKeys()

	// Ctrl-C, then a restart that reuses the tokens.
	e.stop(dev)
	dev2 := e.startDevWith("--keystore", "pkcs11")
	if out := dev2.output(); !strings.Contains(out, "Reusing") || !strings.Contains(out, "pkcs11 keystore") || strings.Contains(out, "key ceremony") {
		t.Fatalf("second start did not reuse the pkcs11 cluster:\n%s", out)
	}
	e.loadEnv()
	e.mustHealthyCluster()
	if got := e.mustGetEverywhere(gk); !bytes.Equal(got, generated) {
		t.Fatal("the generated key changed across the restart")
	}
	if got := e.mustGetEverywhere(pk); !bytes.Equal(got, imported) {
		t.Fatal("the imported key changed across the restart")
	}
	for i, k := range e.auditKeys() {
		if !k.Equal(keys[i]) {
			t.Fatalf("node n%d's audit signing key changed across the restart", i+1)
		}
	}

	e.stop(dev2)

	// Every node's audit log verifies offline against the token keys: the
	// checkpoints were signed inside the HSMs.
	trusted, err := audit.NewTrustedKeys(keys[0], keys[1], keys[2])
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		var export bytes.Buffer
		if err := fsm.ExportAuditDir(filepath.Join(e.dir, fmt.Sprintf("n%d", i), "data"), &export); err != nil {
			t.Fatal(err)
		}
		rep, err := audit.VerifyJSONL(&export, trusted, audit.DefaultVerifyOptions())
		if err != nil {
			t.Fatalf("node n%d's audit log does not verify: %v", i, err)
		}
		if rep.Checkpoints == 0 || rep.Entries == 0 {
			t.Fatalf("node n%d's audit log: %d entries, %d checkpoints", i, rep.Entries, rep.Checkpoints)
		}
	}

	// The directory keeps its keystore.
	out, err := exec.Command(filepath.Join(e.bin, "cofferd"), "dev", "--nodes", "3", "--dir", e.dir, "--base-port", fmt.Sprint(e.base), "--keystore", "software").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "created with the pkcs11 keystore") {
		t.Fatalf("--keystore software on a pkcs11 directory: %v\n%s", err, out)
	}

	// No plaintext key material anywhere under the dev directory: configs,
	// logs, Raft and state stores, and the SoftHSM2 token files.
	tokenFiles := 0
	err = filepath.WalkDir(e.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.Contains(path, string(filepath.Separator)+"softhsm"+string(filepath.Separator)+"tokens"+string(filepath.Separator)) {
			tokenFiles++
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, s := range secrets {
			for _, enc := range [][]byte{
				s,
				[]byte(base64.StdEncoding.EncodeToString(s)),
				[]byte(base64.RawStdEncoding.EncodeToString(s)),
				[]byte(base64.URLEncoding.EncodeToString(s)),
				[]byte(hex.EncodeToString(s)),
			} {
				if bytes.Contains(data, enc) {
					return fmt.Errorf("plaintext key material in %s", path)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if tokenFiles == 0 {
		t.Fatal("no SoftHSM2 token files under the dev directory")
	}
}
