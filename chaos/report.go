package chaos

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Report is the outcome of a run: chaos-report.json, and the summary
// Summary writes.
type Report struct {
	Seed      uint64  `json:"seed"`
	DurationS float64 `json:"duration_s"`
	Nodes     int     `json:"nodes"`
	Sites     string  `json:"sites"`
	Network   string  `json:"network"`
	// Replay is the command that runs the same seed again.
	Replay string `json:"replay"`
	// FirstFault is when the first fault began (ns since the start).
	FirstFault           int64                    `json:"first_fault_ns"`
	OpsPerSecBeforeFault float64                  `json:"ops_per_sec_before_first_fault"`
	MinOpsPerSec         float64                  `json:"min_ops_per_sec"`
	Ops                  map[Kind]map[Outcome]int `json:"ops"`
	Total                map[Outcome]int          `json:"total"`
	// Codes counts failed and unknown operations by gRPC code.
	Codes        map[Outcome]map[string]int `json:"codes"`
	Faults       []Fault                    `json:"faults"`
	Recovery     map[string]Stat            `json:"recovery"`
	recovery     map[string][]float64
	Linearizable string  `json:"linearizable"`
	CheckSeconds float64 `json:"linearizability_check_s"`
	KeysReadBack int     `json:"acknowledged_keys_read_back"`
	// Of those, the keys deactivated and destroyed at the end (as the
	// first node says), and the keys one of whose ciphertexts was
	// decrypted (or refused, once destroyed) on every node.
	KeysDeactivated int `json:"keys_deactivated"`
	KeysDestroyed   int `json:"keys_destroyed"`
	KeysSealed      int `json:"keys_with_a_ciphertext_read_back"`
	Converged       struct {
		Index  uint64 `json:"applied_index"`
		Digest string `json:"state_digest"`
		Nodes  int    `json:"nodes"`
	} `json:"converged"`
	Audit struct {
		Entries     uint64 `json:"entries_verified"`
		Checkpoints int    `json:"checkpoints"`
		Requests    int    `json:"requests_matched"`
		// Entries whose signed request verified against the client's
		// certificate.
		SignedRequests uint64 `json:"signed_requests_verified"`
	} `json:"audit"`
	Violations []Violation `json:"violations"`
	// Invalid is set when the run cannot be judged (too little throughput).
	Invalid bool `json:"invalid"`
	// Dir keeps the data directories, logs and history of a failed run.
	Dir string `json:"dir,omitempty"`
}

// Violation is a failed check with the operations involved.
type Violation struct {
	Check  string `json:"check"`
	Detail string `json:"detail"`
	Ops    []int  `json:"ops,omitempty"`
}

// Stat summarises durations in milliseconds.
type Stat struct {
	N   int       `json:"n"`
	P50 float64   `json:"p50_ms"`
	P99 float64   `json:"p99_ms"`
	Max float64   `json:"max_ms"`
	All []float64 `json:"all_ms"`
}

func stat(v []float64) Stat {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return Stat{}
	}
	pct := func(p float64) float64 { return s[int(p*float64(len(s)-1)+0.5)] }
	return Stat{N: len(s), P50: pct(0.5), P99: pct(0.99), Max: s[len(s)-1], All: v}
}

func newReport(cfg RunConfig) *Report {
	return &Report{Seed: cfg.Seed, DurationS: cfg.Duration.Seconds(), Nodes: len(cfg.Sites), Sites: strings.Join(cfg.Sites, ","),
		MinOpsPerSec: cfg.MinOpsPerSec, recovery: map[string][]float64{},
		Replay: fmt.Sprintf("CHAOS_SEED=%d CHAOS_DURATION=%v make chaos", cfg.Seed, cfg.Duration)}
}

func (rep *Report) count(ops []Op) {
	rep.Ops, rep.Total = map[Kind]map[Outcome]int{}, map[Outcome]int{}
	rep.Codes = map[Outcome]map[string]int{Failed: {}, Unknown: {}}
	for _, op := range ops {
		if op.Outcome != Ok {
			rep.Codes[op.Outcome][op.Code]++
		}
		if rep.Ops[op.Kind] == nil {
			rep.Ops[op.Kind] = map[Outcome]int{}
		}
		rep.Ops[op.Kind][op.Outcome]++
		rep.Total[op.Outcome]++
	}
}

// Passed reports whether the run counts and every check passed.
func (rep *Report) Passed() bool { return !rep.Invalid && len(rep.Violations) == 0 }

// writeArtifacts writes the report and the history into the run directory.
func (r *Runner) writeArtifacts(rep *Report) error {
	f, err := os.Create(filepath.Join(r.cfg.Dir, "history.jsonl"))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, op := range r.hist.Ops() {
		if err := enc.Encode(op); err != nil {
			_ = f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(r.cfg.Dir, "chaos-report.json"), data, 0o644)
}

// Summary writes the readable summary of a report.
func (rep *Report) Summary(w io.Writer) {
	verdict := "PASSED"
	switch {
	case rep.Invalid:
		verdict = "INVALID"
	case len(rep.Violations) > 0:
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "chaos run %s: seed %d, %.0fs of faults, %d nodes in sites %s\n", verdict, rep.Seed, rep.DurationS, rep.Nodes, rep.Sites)
	fmt.Fprintf(w, "network: %s\n", rep.Network)
	fmt.Fprintf(w, "throughput before the first fault: %.1f acknowledged ops/s (a run needs %.0f)\n", rep.OpsPerSecBeforeFault, rep.MinOpsPerSec)
	fmt.Fprintf(w, "operations: %d ok, %d failed, %d unknown\n", rep.Total[Ok], rep.Total[Failed], rep.Total[Unknown])
	var kinds []string
	for k := range rep.Ops {
		kinds = append(kinds, string(k))
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		o := rep.Ops[Kind(k)]
		fmt.Fprintf(w, "  %-14s %6d ok %6d failed %6d unknown\n", k, o[Ok], o[Failed], o[Unknown])
	}
	for _, o := range []Outcome{Failed, Unknown} {
		var cs []string
		for c, n := range rep.Codes[o] {
			cs = append(cs, fmt.Sprintf("%s %d", c, n))
		}
		sort.Strings(cs)
		fmt.Fprintf(w, "  %s by code: %s\n", o, strings.Join(cs, ", "))
	}
	byKind := map[FaultKind]int{}
	for _, f := range rep.Faults {
		byKind[f.Kind]++
	}
	var fk []string
	for k, n := range byKind {
		fk = append(fk, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(fk)
	fmt.Fprintf(w, "faults: %d (%s)\n", len(rep.Faults), strings.Join(fk, ", "))
	var rk []string
	for k := range rep.Recovery {
		rk = append(rk, k)
	}
	sort.Strings(rk)
	for _, k := range rk {
		s := rep.Recovery[k]
		fmt.Fprintf(w, "  %-34s n=%-3d p50 %7.0f ms  p99 %7.0f ms  max %7.0f ms\n", k, s.N, s.P50, s.P99, s.Max)
	}
	fmt.Fprintf(w, "linearizability: %s (%.1fs)\n", rep.Linearizable, rep.CheckSeconds)
	fmt.Fprintf(w, "acknowledged keys read back from every node: %d (%d deactivated and %d destroyed, refused as such; %d with a ciphertext decrypted, or refused once destroyed)\n",
		rep.KeysReadBack, rep.KeysDeactivated, rep.KeysDestroyed, rep.KeysSealed)
	fmt.Fprintf(w, "converged: %d nodes at applied index %d, state digest %s\n", rep.Converged.Nodes, rep.Converged.Index, short(rep.Converged.Digest))
	fmt.Fprintf(w, "audit: %d entries and %d checkpoints verified; %d requests matched to their entries; %d signed requests verified against the clients' certificates\n",
		rep.Audit.Entries, rep.Audit.Checkpoints, rep.Audit.Requests, rep.Audit.SignedRequests)
	if len(rep.Violations) == 0 {
		fmt.Fprintln(w, "violations: none")
		return
	}
	fmt.Fprintf(w, "violations: %d\n", len(rep.Violations))
	for _, v := range rep.Violations {
		fmt.Fprintf(w, "  [%s] %s", v.Check, v.Detail)
		if len(v.Ops) > 0 {
			fmt.Fprintf(w, " (ops %v)", v.Ops)
		}
		fmt.Fprintln(w)
	}
	if rep.Dir != "" {
		fmt.Fprintf(w, "kept for diagnosis: %s (cluster/ with each node's data and cofferd.log, history.jsonl, chaos-report.json)\n", rep.Dir)
	}
	fmt.Fprintf(w, "replay: %s\n", rep.Replay)
}

func short(s string) string {
	if len(s) > 16 {
		return s[:16]
	}
	return s
}
