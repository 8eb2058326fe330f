package e2e

import (
	"bytes"
	"encoding/csv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/internal/testenv"
)

// TestE2E_RowcryptExample runs examples/rowcrypt against a `cofferd dev`
// cluster with the environment its env file sets, as the example's README
// says: the run succeeds, the encrypted table holds none of the card
// numbers, and the audit entries it prints show one data key per row and
// one decrypt per row, all granted, all under the one envelope key.
func TestE2E_RowcryptExample(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and starts processes")
	}
	e := &env{t: t, bin: buildBinaries(t), dir: filepath.Join(t.TempDir(), "dev"), base: freeBase(t, 3)}
	e.startDev()
	e.loadEnv()
	bin := testenv.Build(t, "../examples/rowcrypt")
	encPath := filepath.Join(t.TempDir(), "customers.enc.csv")
	cmd := exec.Command(filepath.Join(bin, "rowcrypt"), "-out", encPath)
	cmd.Env = append(os.Environ(), e.vars...)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "the table equals the input") {
		t.Fatalf("rowcrypt: %v\n%s", err, out)
	}

	sample, err := os.ReadFile("../examples/rowcrypt/customers.csv")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(bytes.NewReader(sample)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	enc, err := os.ReadFile(encPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range rows[1:] {
		if bytes.Contains(enc, []byte(row[3])) {
			t.Fatalf("the encrypted table holds the card number of row %s", row[0])
		}
	}

	counts := map[string]int{}
	gkids := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 8 && strings.Contains(f[7], "rowcrypt-") && (strings.Contains(f[7], "-seal-") || strings.Contains(f[7], "-open-")) {
			if f[6] != "granted" {
				t.Errorf("audit entry not granted: %s", line)
			}
			counts[f[3]]++
			gkids[f[4]] = true
		}
	}
	if counts["datakey"] != 10 || counts["decrypt"] != 10 || len(gkids) != 1 {
		t.Fatalf("audit entries by operation %v under %d keys, want 10 datakey and 10 decrypt under 1:\n%s", counts, len(gkids), out)
	}
}
