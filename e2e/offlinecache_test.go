package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/internal/testenv"
)

// TestE2E_OfflineCacheExample follows examples/offlinecache/README.md on a
// `cofferd dev` cluster: a key cached in an encrypted file while the
// cluster runs is served from the file once every node is stopped, for as
// many uses as the server's cache policy allows across runs, and a file
// that was altered is refused.
func TestE2E_OfflineCacheExample(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and starts processes")
	}
	e := &env{t: t, bin: buildBinaries(t), dir: filepath.Join(t.TempDir(), "dev"), base: freeBase(t, 3)}
	d := e.startDev()
	e.loadEnv()
	e.mustCoffer("policy", "create", "--name", "cached", "--cacheable", "--cache-ttl", "1h", "--cache-max-keys", "100")
	gkid := strings.TrimSpace(e.mustCoffer("key", "generate", "--resource", "examples/offline", "--policy", "cached"))
	e.mustCoffer("cache", "policy", "set", "--ttl", "30m", "--max-entries", "100", "--max-uses", "5", "--allow", "get", "--persist")

	bin := filepath.Join(testenv.Build(t, "../examples/offlinecache"), "offlinecache")
	cache := filepath.Join(t.TempDir(), "coffer-cache")
	run := func(uses string) (string, error) {
		cmd := exec.Command(bin, "-gkid", gkid, "-cache", cache, "-uses", uses)
		cmd.Env = append(os.Environ(), e.vars...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("2")
	if err != nil || !strings.Contains(out, "cluster: reachable") || strings.Count(out, "material sha256") != 2 {
		t.Fatalf("online run: %v\n%s", err, out)
	}
	material := out[strings.Index(out, "material sha256"):]
	material = material[:strings.Index(material, "\n")]

	e.stop(d)
	out, err = run("2")
	if err != nil || !strings.Contains(out, "no node is reachable") || strings.Count(out, material) != 2 {
		t.Fatalf("offline run: %v\n%s", err, out)
	}
	// 1 use online (the fetch is not one), 2 above: 2 left.
	out, err = run("3")
	if err == nil || strings.Count(out, material) != 2 || !strings.Contains(out, "get 3") {
		t.Fatalf("offline run past max_uses: %v\n%s", err, out)
	}

	b, err := os.ReadFile(cache)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(cache, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = run("1")
	if err == nil || !strings.Contains(out, "cache file refused") {
		t.Fatalf("offline run on an altered file: %v\n%s", err, out)
	}
}
