// Package e2e drives the built binaries exactly as the README tells a user:
// `cofferd dev` in one process, the `coffer` CLI against it.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/internal/testenv"
)

type env struct {
	t    *testing.T
	bin  string
	dir  string
	base int
	vars []string
}

func buildBinaries(t *testing.T) string {
	t.Helper()
	return testenv.Build(t, "../cmd/cofferd", "../cmd/coffer")
}

func freeBase(t *testing.T, nodes int) int { return testenv.FreeBase(t, nodes) }

// devCluster is a running `cofferd dev`.
type devCluster struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer
	upCh   chan struct{}
	doneCh chan struct{}
}

func (e *env) startDev() *devCluster {
	e.t.Helper()
	return e.startDevWith()
}

// startDevWith is startDev with further `cofferd dev` flags.
func (e *env) startDevWith(extra ...string) *devCluster {
	e.t.Helper()
	d := &devCluster{upCh: make(chan struct{}), doneCh: make(chan struct{})}
	args := append([]string{"dev", "--nodes", "3", "--dir", e.dir, "--base-port", fmt.Sprint(e.base)}, extra...)
	d.cmd = exec.Command(filepath.Join(e.bin, "cofferd"), args...)
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	d.cmd.Stderr = d.cmd.Stdout
	if err := d.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		defer close(d.doneCh)
		sc := bufio.NewScanner(stdout)
		up := false
		for sc.Scan() {
			d.mu.Lock()
			d.out.WriteString(sc.Text() + "\n")
			d.mu.Unlock()
			if !up && strings.Contains(sc.Text(), "Press Ctrl-C to stop") {
				up = true
				close(d.upCh)
			}
		}
		_ = d.cmd.Wait()
	}()
	select {
	case <-d.upCh:
	case <-d.doneCh:
		e.t.Fatalf("cofferd dev exited before the cluster was up:\n%s", d.output())
	case <-time.After(90 * time.Second):
		_ = d.cmd.Process.Kill()
		e.t.Fatalf("cluster not up within 90s:\n%s", d.output())
	}
	e.t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			_ = d.cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-d.doneCh:
			case <-time.After(30 * time.Second):
				_ = d.cmd.Process.Kill()
			}
		}
	})
	return d
}

func (d *devCluster) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// stop sends Ctrl-C and waits for a clean exit.
func (e *env) stop(d *devCluster) {
	e.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-d.doneCh:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		e.t.Fatalf("cofferd dev did not stop within 30s:\n%s", d.output())
	}
	if !d.cmd.ProcessState.Success() {
		e.t.Fatalf("cofferd dev exited with %v:\n%s", d.cmd.ProcessState, d.output())
	}
	if !strings.Contains(d.output(), "Stopped.") {
		e.t.Fatalf("no clean stop message:\n%s", d.output())
	}
}

// loadEnv reads the env file the way `source` would for its exports.
func (e *env) loadEnv() {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.dir, "env"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.vars = nil
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "export COFFER_"); ok {
			k, val, _ := strings.Cut(v, "=")
			e.vars = append(e.vars, "COFFER_"+k+"="+strings.Trim(val, `"`))
		}
	}
	if len(e.vars) != 5 {
		e.t.Fatalf("env file sets %d COFFER_ variables, want 5:\n%s", len(e.vars), data)
	}
}

// coffer runs the CLI and returns stdout, stderr and the exit code.
func (e *env) coffer(args ...string) (string, string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, "coffer"), args...)
	cmd.Env = append(os.Environ(), e.vars...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("coffer %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func (e *env) mustCoffer(args ...string) string {
	e.t.Helper()
	out, errs, code := e.coffer(args...)
	if code != 0 {
		e.t.Fatalf("coffer %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

func TestE2E_DevClusterAndCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and starts processes")
	}
	e := &env{t: t, bin: buildBinaries(t), dir: filepath.Join(t.TempDir(), "dev"), base: freeBase(t, 3)}
	dev := e.startDev()
	if !strings.Contains(dev.output(), "source "+filepath.Join(e.dir, "env")) {
		t.Fatalf("banner does not say how to set up the CLI:\n%s", dev.output())
	}
	e.loadEnv()

	// cluster status: three nodes on three sites, one leader.
	var st struct {
		ClusterID string `json:"cluster_id"`
		Nodes     []struct {
			ID, Site, Address, Role string
			Healthy                 bool
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(e.mustCoffer("cluster", "status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	leaders, sites := 0, map[string]bool{}
	for _, n := range st.Nodes {
		sites[n.Site] = true
		if n.Role == "leader" {
			leaders++
		}
		if !n.Healthy {
			t.Errorf("node %s unhealthy", n.ID)
		}
	}
	if len(st.Nodes) != 3 || leaders != 1 || len(sites) != 3 || st.ClusterID == "" {
		t.Fatalf("cluster status: %+v", st)
	}

	// generate, get (on every node), describe, list.
	gk := strings.TrimSpace(e.mustCoffer("key", "generate", "--policy", "default", "--resource", "e2e/app", "--algorithm", "aes-256"))
	if len(gk) != 40 || !strings.HasPrefix(gk, "k1-"+st.ClusterID+"-") {
		t.Fatalf("generate printed %q", gk)
	}
	var secrets [][]byte
	var first string
	for i := 1; i <= 3; i++ {
		out := e.mustCoffer("--addr", fmt.Sprintf("127.0.0.1:%d", e.base+i), "key", "get", gk, "-o", "json")
		var got struct {
			Material string `json:"material"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil || got.Material == "" {
			t.Fatalf("get on node %d: %v\n%s", i, err, out)
		}
		if first == "" {
			first = got.Material
		} else if got.Material != first {
			t.Fatal("nodes disagree on key material")
		}
	}
	m, err := base64.StdEncoding.DecodeString(first)
	if err != nil || len(m) != 32 {
		t.Fatalf("material %q: %v", first, err)
	}
	secrets = append(secrets, m)
	desc := e.mustCoffer("key", "describe", gk)
	for _, want := range []string{"default", "e2e/app", "client:admin", "aes-256", "active"} {
		if !strings.Contains(desc, want) {
			t.Errorf("describe lacks %q:\n%s", want, desc)
		}
	}
	if strings.Contains(desc, first) {
		t.Fatal("describe printed key material")
	}

	// put: import a key from a file and read it back.
	imported := bytes.Repeat([]byte("E2E-IMPORTED-KEY"), 2)
	secrets = append(secrets, imported)
	matFile := filepath.Join(t.TempDir(), "k.bin")
	if err := os.WriteFile(matFile, imported, 0o600); err != nil {
		t.Fatal(err)
	}
	pk := strings.TrimSpace(e.mustCoffer("key", "put", "--resource", "e2e/app", "--material-file", matFile))
	if out := e.mustCoffer("key", "get", pk, "-o", "json"); !strings.Contains(out, base64.StdEncoding.EncodeToString(imported)) {
		t.Fatalf("imported key came back different:\n%s", out)
	}
	var list struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal([]byte(e.mustCoffer("key", "list", "--resource", "e2e/app", "-o", "json")), &list); err != nil || len(list.Keys) != 2 {
		t.Fatalf("list: %d keys, %v", len(list.Keys), err)
	}

	// Errors: clear message, non-zero exit.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"key", "get", "not-a-gkid"}, "InvalidArgument"},
		{[]string{"key", "get", "k1-" + st.ClusterID + "-aaaaaaaaaaaaaaaaaaaaaaaaaa"}, "NotFound"},
		{[]string{"key", "generate", "--resource", "r", "--policy", "nope"}, "NotFound"},
	} {
		_, errs, code := e.coffer(c.args...)
		if code == 0 || !strings.Contains(errs, c.want) {
			t.Errorf("coffer %v: exit %d, stderr %q; want non-zero and %q", c.args, code, errs, c.want)
		}
	}

	// Escrow: an officer's key pair, a policy escrowed to it, a key under
	// the policy, and an online snapshot.
	work := t.TempDir()
	officer := filepath.Join(work, "officer")
	e.mustCoffer("escrow", "keygen", "--out", officer)
	e.mustCoffer("policy", "create", "--name", "payments", "--escrow-key", officer+".pub")
	if out := e.mustCoffer("policy", "list"); !strings.Contains(out, "payments") || !strings.Contains(out, "default") {
		t.Fatalf("policy list:\n%s", out)
	}
	ek := strings.TrimSpace(e.mustCoffer("key", "generate", "--policy", "payments", "--resource", "pay/eu"))
	var ekGot struct {
		Material string `json:"material"`
	}
	if err := json.Unmarshal([]byte(e.mustCoffer("key", "get", ek, "-o", "json")), &ekGot); err != nil {
		t.Fatal(err)
	}
	escrowed, _ := base64.StdEncoding.DecodeString(ekGot.Material)
	secrets = append(secrets, escrowed)
	// Rotating the policy's KEK keeps old keys readable.
	if out := e.mustCoffer("policy", "update", "--name", "payments", "--rotate-kek", "--max-lifetime", "8760h"); !regexp.MustCompile(`kek version:\s+2\n`).MatchString(out) {
		t.Fatalf("policy update:\n%s", out)
	}
	if out := e.mustCoffer("key", "get", ek, "-o", "json"); !strings.Contains(out, ekGot.Material) {
		t.Fatalf("key under the old KEK lost after rotation:\n%s", out)
	}
	snapFile := filepath.Join(work, "cluster.snap")
	if out := e.mustCoffer("snapshot", "save", snapFile); !strings.Contains(out, "applied index") {
		t.Fatalf("snapshot save: %s", out)
	}

	// Access control: two clients and a policy, one client allowed and
	// one refused; then the allowed one deactivated and refused on every
	// node.
	caKey := filepath.Join(e.dir, "ca", "client-ca-key.pem")
	for _, name := range []string{"alice", "mallory"} {
		e.mustCoffer("client", "issue", name, "--out", filepath.Join(work, name), "--ca-key", caKey, "--role", "application")
	}
	e.mustCoffer("policy", "create", "--name", "team")
	e.mustCoffer("acl", "grant", "--client", "alice", "--ops", "generate,get", "--resource", "team/**")
	as := func(name string, args ...string) (string, string, int) {
		dir := filepath.Join(work, name)
		return e.coffer(append([]string{"--cert", filepath.Join(dir, name+".pem"), "--key", filepath.Join(dir, name+"-key.pem")}, args...)...)
	}
	out, errs, code := as("alice", "key", "generate", "--policy", "team", "--resource", "team/a")
	if code != 0 {
		t.Fatalf("alice refused: %s", errs)
	}
	aliceKey := strings.TrimSpace(out)
	if _, errs, code := as("mallory", "key", "generate", "--policy", "team", "--resource", "team/a"); code == 0 || !strings.Contains(errs, "PermissionDenied") {
		t.Fatalf("mallory allowed (exit %d): %s", code, errs)
	}
	if _, errs, code := as("alice", "key", "generate", "--policy", "team", "--resource", "other/a"); code == 0 || !strings.Contains(errs, "PermissionDenied") {
		t.Fatalf("alice allowed outside her resource (exit %d): %s", code, errs)
	}
	e.mustCoffer("client", "deactivate", "alice")
	for i := 1; i <= 3; i++ {
		_, errs, code := as("alice", "--addr", fmt.Sprintf("127.0.0.1:%d", e.base+i), "key", "get", aliceKey)
		if code == 0 || !strings.Contains(errs, "deactivated") {
			t.Fatalf("deactivated alice served by node %d (exit %d): %s", i, code, errs)
		}
	}

	// Audit: mallory's refusal is in the log, and an export verifies
	// offline against the nodes' published checkpoint keys.
	if out := e.mustCoffer("audit", "query", "--client", "mallory", "--outcome", "denied", "--all"); !strings.Contains(out, "generate") {
		t.Fatalf("audit query lacks mallory's refused generate:\n%s", out)
	}
	// A watch on refusals (one Follow stream) sees the next one as it
	// happens, and Ctrl-C ends it with status 0.
	watch := exec.Command(filepath.Join(e.bin, "coffer"), "audit", "tail", "-n", "0", "-f", "--outcome", "denied", "-o", "json")
	watch.Env = append(os.Environ(), e.vars...)
	watched := &testenv.Buffer{}
	watchErr := &testenv.Buffer{}
	watch.Stdout, watch.Stderr = watched, watchErr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = watch.Process.Kill() }()
	watchDeadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(watched.String(), `"resource":"team/b"`) {
		// Refused until the watch, started asynchronously, sees one.
		if time.Now().After(watchDeadline) {
			t.Fatalf("tail -f --outcome denied saw no refusal in 30 s:\n%s\nstderr: %s", watched.String(), watchErr.String())
		}
		if _, _, code := as("mallory", "key", "generate", "--policy", "team", "--resource", "team/b"); code == 0 {
			t.Fatal("mallory allowed")
		}
		time.Sleep(200 * time.Millisecond)
	}
	_ = watch.Process.Signal(syscall.SIGINT)
	if err := watch.Wait(); err != nil {
		t.Fatalf("tail -f after Ctrl-C: %v, stderr %s", err, watchErr.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(watched.String()), "\n") {
		if !strings.Contains(line, `"outcome":"AUDIT_OUTCOME_DENIED"`) || !strings.Contains(line, `"caller":"client:mallory"`) {
			t.Fatalf("tail -f --outcome denied printed %s", line)
		}
	}
	// tail -n counts matches: mallory's last two refusals, although many
	// entries came after them.
	last2 := strings.Split(strings.TrimSpace(e.mustCoffer("audit", "tail", "-n", "2", "--client", "mallory", "--outcome", "denied", "-o", "json")), "\n")
	if len(last2) != 2 || !strings.Contains(last2[1], `"resource":"team/b"`) || !strings.Contains(last2[0], `"caller":"client:mallory"`) {
		t.Fatalf("tail -n 2 of mallory's refusals printed %q", last2)
	}
	// The log holds no key material, only an HMAC that `audit match` tests.
	var q struct {
		Entries []struct {
			Seq string `json:"seq"`
		} `json:"entries"`
	}
	if err := json.Unmarshal([]byte(e.mustCoffer("audit", "query", "--gkid", ek, "--op", "generate", "-o", "json")), &q); err != nil || len(q.Entries) != 1 {
		t.Fatalf("audit query for the generate of %s: %v %+v", ek, err, q)
	}
	matFile2 := filepath.Join(work, "ek.bin")
	_ = os.WriteFile(matFile2, escrowed, 0o600)
	if out := e.mustCoffer("audit", "match", "--seq", q.Entries[0].Seq, "--material-file", matFile2); !strings.Contains(out, "recorded this key material") || strings.Contains(out, "did not") {
		t.Fatalf("audit match: %s", out)
	}
	// Every member reports how far it has applied the audit log, and the
	// newest command version its build applies.
	var ast struct {
		Nodes []struct {
			ID             string `json:"id"`
			AuditSeq       uint64 `json:"audit_seq"`
			CommandVersion uint32 `json:"command_version"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(e.mustCoffer("cluster", "status", "-o", "json")), &ast); err != nil || len(ast.Nodes) != 3 {
		t.Fatalf("cluster status: %v %+v", err, ast)
	}
	for _, n := range ast.Nodes {
		if n.AuditSeq == 0 {
			t.Errorf("node %s reports no audit entries applied", n.ID)
		}
		if n.CommandVersion != fsm.CommandVersion {
			t.Errorf("node %s reports command version %d, want %d", n.ID, n.CommandVersion, fsm.CommandVersion)
		}
	}

	// An auditor pins the newest signed checkpoint (one is signed within
	// 10 s), then checks the export against it.
	pinFile := filepath.Join(work, "pins.jsonl")
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, errs, code := e.coffer("audit", "head", "--pin", pinFile)
		if code == 0 {
			if !strings.Contains(out, "checkpoint seq:") || !strings.Contains(out, "head seq:") {
				t.Fatalf("audit head:\n%s", out)
			}
			break
		}
		if !strings.Contains(errs, "no signed checkpoint yet") || time.Now().After(deadline) {
			t.Fatalf("audit head --pin (exit %d): %s", code, errs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	exportFile := filepath.Join(work, "audit.jsonl")
	e.mustCoffer("audit", "export", "--out", exportFile)
	verifyArgs := []string{"audit", "verify", "--file", exportFile, "--pinned", pinFile}
	for i := 1; i <= 3; i++ {
		verifyArgs = append(verifyArgs, "--trusted-key", filepath.Join(e.dir, fmt.Sprintf("n%d", i), "data", "audit-signing.pub"))
	}
	e.mustCoffer(verifyArgs...)
	edited, _ := os.ReadFile(exportFile)
	edited = bytes.Replace(edited, []byte(`"client:mallory"`), []byte(`"client:alice"`), 1)
	tampered := filepath.Join(work, "tampered.jsonl")
	_ = os.WriteFile(tampered, edited, 0o600)
	// A pinned checkpoint the chain does not reproduce (its head changed:
	// history was rewritten since it was kept) fails verification.
	pins, _ := os.ReadFile(pinFile)
	var pin map[string]any
	if err := json.Unmarshal(pins, &pin); err != nil {
		t.Fatalf("pin file %q: %v", pins, err)
	}
	h := []byte(pin["head"].(string))
	if h[0] == '0' {
		h[0] = '1'
	} else {
		h[0] = '0'
	}
	pin["head"] = string(h)
	badPin, _ := json.Marshal(pin)
	badPinFile := filepath.Join(work, "badpin.jsonl")
	_ = os.WriteFile(badPinFile, append(badPin, '\n'), 0o600)
	verifyArgs[5] = badPinFile // --pinned
	if out, errs, code := e.coffer(verifyArgs...); code != 1 {
		t.Fatalf("export verified against a pinned checkpoint it does not reproduce (exit %d): %s %s", code, out, errs)
	}
	verifyArgs[5] = pinFile
	verifyArgs[3] = tampered // --file
	if out, errs, code := e.coffer(verifyArgs...); code != 1 || !strings.Contains(out+errs, "chain broken") {
		t.Fatalf("edited export verified (exit %d): %s %s", code, out, errs)
	}

	// Retention by age: nothing was signed before 2000; up to the newest
	// checkpoint signed before now, something was. What is left still
	// verifies, from its signed marker.
	if out := e.mustCoffer("audit", "prune", "--before", "2000-01-01T00:00:00Z"); !strings.Contains(out, "nothing to prune") {
		t.Fatalf("prune --before 2000: %s", out)
	}
	if out := e.mustCoffer("audit", "prune", "--before", time.Now().UTC().Format(time.RFC3339Nano)); !strings.Contains(out, "first remaining seq:") ||
		strings.Contains(out, "pruned entries:      0\n") {
		t.Fatalf("prune --before now: %s", out)
	}
	prunedFile := filepath.Join(work, "pruned.jsonl")
	e.mustCoffer("audit", "export", "--out", prunedFile)
	if data, _ := os.ReadFile(prunedFile); !bytes.HasPrefix(data, []byte(`{"type":"marker"`)) {
		t.Fatalf("export after pruning does not start with the marker: %.80s", data)
	}
	e.mustCoffer(append([]string{"audit", "verify", "--file", prunedFile}, verifyArgs[6:]...)...)

	// Ctrl-C stops every node; the next start reuses the data.
	e.stop(dev)
	dev2 := e.startDev()
	if !strings.Contains(dev2.output(), "Reusing") {
		t.Fatalf("second start did not reuse the data:\n%s", dev2.output())
	}
	if out := e.mustCoffer("key", "get", gk, "-o", "json"); !strings.Contains(out, first) {
		t.Fatalf("key lost across restart:\n%s", out)
	}
	e.stop(dev2)

	// Offline recovery with the escrow key alone, from the snapshot and from
	// a stopped node's data directory.
	for _, src := range [][]string{{"--snapshot", snapFile}, {"--data-dir", filepath.Join(e.dir, "n2", "data")}} {
		out := e.mustCoffer(append([]string{"escrow", "recover", "--escrow-key", officer + ".key", "--gkid", ek, "-o", "json"}, src...)...)
		if !strings.Contains(out, ekGot.Material) {
			t.Fatalf("recover %v did not return the key getkey returned:\n%s", src, out)
		}
	}

	// No plaintext key material anywhere under the data directory.
	err = filepath.WalkDir(e.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, s := range secrets {
			if bytes.Contains(data, s) || bytes.Contains(data, []byte(base64.StdEncoding.EncodeToString(s))) {
				return fmt.Errorf("plaintext key material in %s", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
