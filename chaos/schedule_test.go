package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/internal/testenv"
)

// TestChaos_Schedule is the chaos suite: a 6-node cluster over three sites,
// 16 recording clients, faults on a seeded schedule, and the checks of
// checks.go. CHAOS_DURATION (default 60s, the smoke run of make test) and
// CHAOS_SEED (default: from the clock) change it; CHAOS_REPORT copies the
// JSON report there; CHAOS_NETNS=0 runs on loopback even as root;
// CHAOS_KEEP=1 keeps a passing run's directory. A
// failed run keeps its directory and prints the
// command that replays its seed.
func TestChaos_Schedule(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	duration := 60 * time.Second
	if v := os.Getenv("CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("CHAOS_DURATION: %v", err)
		}
		duration = d
	}
	seed := uint64(time.Now().UnixNano() % 1e9)
	if v := os.Getenv("CHAOS_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("CHAOS_SEED: %v", err)
		}
		seed = s
	}
	bin := testenv.Build(t, "../cmd/cofferd", "../cmd/coffer")
	dir, err := os.MkdirTemp(os.Getenv("CHAOS_DIR"), "coffer-chaos-")
	if err != nil {
		t.Fatal(err)
	}
	lab := LabAvailable() == nil && os.Getenv("CHAOS_NETNS") != "0"
	if !lab {
		t.Logf("loopback, process faults only (CHAOS_NETNS=0, or %v)", LabAvailable())
	}
	cfg := RunConfig{
		Cofferd: filepath.Join(bin, "cofferd"), Coffer: filepath.Join(bin, "coffer"), Dir: dir,
		BasePort: testenv.FreeBase(t, len(DefaultSites)), Sites: DefaultSites,
		Duration: duration, Warmup: 10 * time.Second, Seed: seed, Lab: lab, WANDelay: 5 * time.Millisecond,
		MinOpsPerSec: 20, CheckTimeout: 5 * time.Minute, Workload: DefaultWorkload(seed),
		Logf: t.Logf,
	}
	ctx, cancel := context.WithTimeout(context.Background(), duration+15*time.Minute)
	defer cancel()
	t.Logf("chaos run: seed %d, %v of faults, directory %s", seed, duration, dir)
	rep, err := Run(ctx, cfg)
	if err == nil && rep.Passed() && os.Getenv("CHAOS_KEEP") == "" {
		_ = os.RemoveAll(dir)
	} else {
		rep.Dir = dir
	}
	var sum strings.Builder
	rep.Summary(&sum)
	fmt.Print(sum.String())
	if path := os.Getenv("CHAOS_REPORT"); path != "" {
		if data, rerr := os.ReadFile(filepath.Join(dir, "chaos-report.json")); rerr == nil {
			_ = os.WriteFile(path, data, 0o644)
		}
	}
	if err != nil {
		t.Fatalf("chaos run (seed %d, kept in %s): %v", seed, dir, err)
	}
	if !rep.Passed() {
		t.Fatalf("chaos run failed (seed %d, kept in %s); replay: %s", seed, dir, rep.Replay)
	}
}

// TestChaos_Recheck checks a kept history again (CHAOS_HISTORY=path of a
// run's history.jsonl), for working on the model or a violation without
// running the cluster.
func TestChaos_Recheck(t *testing.T) {
	path := os.Getenv("CHAOS_HISTORY")
	if path == "" {
		t.Skip("CHAOS_HISTORY not set")
	}
	ops, err := ReadHistory(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := Linearizable(ops, 10*time.Minute, filepath.Join(filepath.Dir(path), "linearizability.html"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d operations: %s in %v", len(ops), res, time.Since(start).Round(time.Millisecond))
	if res != "Ok" {
		t.Fatalf("not linearizable: %s", res)
	}
}
