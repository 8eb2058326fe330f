package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	mathrand "math/rand/v2"
	"os"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

// Bench limits.
const (
	maxBenchConcurrency = 1024
	maxBenchKeys        = 1_000_000
	maxBenchDuration    = 24 * time.Hour
)

// Bench operations.
const (
	benchGenerate = "generate"
	benchGet      = "get"
	benchMix      = "mix"
	benchEncrypt  = "encrypt"
	benchDecrypt  = "decrypt"
	benchDataKey  = "datakey"
)

// defaultBenchSize is the plaintext size of --op encrypt and decrypt.
const defaultBenchSize = 1024

// opKind indexes per-operation statistics.
type opKind int

const (
	opGenerate opKind = iota
	opGet
	opEncrypt
	opDecrypt
	opDataKey
	numOps
)

func (k opKind) String() string {
	return [...]string{benchGenerate, benchGet, benchEncrypt, benchDecrypt, benchDataKey}[k]
}

// benchOps maps each --op but mix to the one operation it runs.
var benchOps = map[string]opKind{
	benchGenerate: opGenerate,
	benchGet:      opGet,
	benchEncrypt:  opEncrypt,
	benchDecrypt:  opDecrypt,
	benchDataKey:  opDataKey,
}

// benchConfig is the bench's flags.
type benchConfig struct {
	op          string
	getRatio    float64
	concurrency int
	duration    time.Duration
	warmup      time.Duration
	keys        int
	size        int
	// batch is the items of one batch call of encrypt, decrypt or datakey
	// (0: single calls).
	batch       int
	jsonFile    string
	policy      string
	resource    string
	algorithm   string
	consistency consistencyFlag
}

func (b benchConfig) validate() error {
	_, known := benchOps[b.op]
	switch {
	case !known && b.op != benchMix:
		return fmt.Errorf("--op %q: want generate, get, mix, encrypt, decrypt or datakey", b.op)
	case b.getRatio < 0 || b.getRatio > 1 || math.IsNaN(b.getRatio):
		return fmt.Errorf("--get-ratio %v: want a value in [0, 1]", b.getRatio)
	case b.concurrency < 1 || b.concurrency > maxBenchConcurrency:
		return fmt.Errorf("--concurrency %d: want 1 to %d", b.concurrency, maxBenchConcurrency)
	case b.duration <= 0 || b.duration > maxBenchDuration:
		return fmt.Errorf("--duration %v: want more than 0 and at most %v", b.duration, maxBenchDuration)
	case b.warmup < 0 || b.warmup > maxBenchDuration:
		return fmt.Errorf("--warmup %v: want 0 to %v", b.warmup, maxBenchDuration)
	case b.needsKeys() && (b.keys < 1 || b.keys > maxBenchKeys):
		return fmt.Errorf("--keys %d: want 1 to %d", b.keys, maxBenchKeys)
	case b.size < 0 || b.size > client.MaxEncryptPlaintext:
		return fmt.Errorf("--size %d: want 0 to %d bytes", b.size, client.MaxEncryptPlaintext)
	case b.batch < 0 || b.batch > client.MaxBatchItems:
		return fmt.Errorf("--batch %d: want 0 (single calls) to %d items", b.batch, client.MaxBatchItems)
	case b.batch > 0 && !b.usesCrypto():
		return fmt.Errorf("--batch goes with --op encrypt, decrypt or datakey, not %s", b.op)
	case b.batch*b.size > client.MaxBatchBytes:
		return fmt.Errorf("--batch %d of --size %d: %d bytes in one batch, at most %d", b.batch, b.size, b.batch*b.size, client.MaxBatchBytes)
	case b.resource == "":
		return errors.New("--resource must not be empty")
	}
	alg, err := parseAlgorithm(b.algorithm)
	if err != nil {
		return err
	}
	if b.usesCrypto() && alg == cofferv1.Algorithm_ALGORITHM_HMAC_SHA256 {
		return fmt.Errorf("--op %s needs AES keys: --algorithm %q is not aes-128, aes-192 or aes-256", b.op, b.algorithm)
	}
	return nil
}

// needsKeys reports whether the run uses keys, which are generated first.
func (b benchConfig) needsKeys() bool { return b.op != benchGenerate }

// usesCrypto reports whether the run uses the data encryption service.
func (b benchConfig) usesCrypto() bool {
	return b.op == benchEncrypt || b.op == benchDecrypt || b.op == benchDataKey
}

// usesPlaintext reports whether the run encrypts --size byte plaintexts.
func (b benchConfig) usesPlaintext() bool { return b.op == benchEncrypt || b.op == benchDecrypt }

func (a *app) benchCmd() *cobra.Command {
	var b benchConfig
	cmd := &cobra.Command{
		Use:   "bench [--op generate|get|mix|encrypt|decrypt|datakey] [--concurrency N] [--duration D] [--size N]",
		Short: "Drive a running cluster and report throughput and latency",
		Long: `Drive a running cluster through the client library and report throughput,
errors and p50/p95/p99/max latency per operation.

Operations: generate (GenerateKey), get (GetKey), mix (gets and generates,
--get-ratio gets), encrypt (Encrypt of a --size byte plaintext, 1 KiB by
default, at most 64 KiB), decrypt (Decrypt of ciphertexts of --size byte
plaintexts) and datakey (GenerateDataKey, aes-256). With --batch N, each
encrypt, decrypt or datakey operation is one batch call of N items on keys
picked at random, and the report adds the items per second.

Every worker shares one client, which spreads requests round-robin over all
--addr nodes. For every operation but generate, --keys keys are generated
first (spread over the nodes the same way; AES keys for encrypt, decrypt and
datakey), and each operation picks one at random. For decrypt, one
ciphertext per key is encrypted first too. Setup and the operations during
--warmup are not counted. --timeout bounds each operation.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := b.validate(); err != nil {
				return usageError{err}
			}
			return a.bench(cmd.Context(), b)
		},
	}
	f := cmd.Flags()
	f.StringVar(&b.op, "op", benchGet, "operation: generate, get, mix, encrypt, decrypt or datakey")
	f.Float64Var(&b.getRatio, "get-ratio", 0.9, "share of gets in --op mix")
	f.IntVar(&b.concurrency, "concurrency", 64, "concurrent workers")
	f.DurationVar(&b.duration, "duration", 10*time.Second, "measured run time")
	f.DurationVar(&b.warmup, "warmup", time.Second, "unmeasured run time before the measurement")
	f.IntVar(&b.keys, "keys", 1000, "keys to generate first, for every operation but generate")
	f.IntVar(&b.size, "size", defaultBenchSize, "plaintext bytes of encrypt and decrypt, at most 65536")
	f.IntVar(&b.batch, "batch", 0, "items per batch call of encrypt, decrypt or datakey (0: single calls)")
	f.StringVar(&b.jsonFile, "json", "", "also write the report as JSON to this file")
	f.StringVar(&b.policy, "policy", "", "custody policy of generated keys")
	f.StringVar(&b.resource, "resource", "bench", "resource of generated keys")
	f.StringVar(&b.algorithm, "algorithm", "", "algorithm of generated keys")
	addConsistencyFlag(f, &b.consistency, "consistency of get, encrypt, decrypt and datakey: linearizable or stale")
	return cmd
}

// bench runs a benchmark against the cluster and prints the report.
func (a *app) bench(ctx context.Context, b benchConfig) error {
	alg, err := parseAlgorithm(b.algorithm)
	if err != nil {
		return usageError{err}
	}
	c, err := a.newClient()
	if err != nil {
		return err
	}
	defer c.Close()
	target := &clientTarget{c: c, policy: b.policy, resource: b.resource, alg: alg, cons: b.consistency.v}
	r := &benchRun{cfg: b, target: target, opTimeout: a.limit}
	if b.usesPlaintext() {
		r.plaintext = make([]byte, b.size)
		_, _ = rand.Read(r.plaintext) // crypto/rand.Read never fails
	}
	if b.needsKeys() {
		fmt.Fprintf(a.err, "coffer bench: generating %d keys\n", b.keys)
		if r.keys, err = pregenerate(ctx, target, b.keys, b.concurrency, a.limit); err != nil {
			return fmt.Errorf("generate bench keys: %w", err)
		}
	}
	if b.op == benchDecrypt {
		fmt.Fprintf(a.err, "coffer bench: encrypting %d ciphertexts of %d bytes\n", len(r.keys), b.size)
		if r.ciphertexts, err = preencrypt(ctx, target, r.keys, r.plaintext, b.concurrency, a.limit); err != nil {
			return fmt.Errorf("encrypt bench ciphertexts: %w", err)
		}
	}
	fmt.Fprintf(a.err, "coffer bench: running %s for %v (warmup %v) with %d workers over %d node(s)\n",
		b.op, b.duration, b.warmup, b.concurrency, len(c.Endpoints()))
	rep := r.run(ctx)
	rep.Endpoints = c.Endpoints()
	if ctx.Err() != nil {
		fmt.Fprintln(a.err, "coffer bench: interrupted; the report covers the time run")
	}
	if b.jsonFile != "" {
		if err := writeReportFile(b.jsonFile, rep); err != nil {
			return err
		}
	}
	if a.format == formatJSON {
		return writeJSON(a.out, rep)
	}
	return rep.writeText(a.out)
}

func writeReportFile(path string, rep benchReport) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("bench report: %w", err)
	}
	if err := writeJSON(f, rep); err != nil {
		_ = f.Close()
		return fmt.Errorf("bench report %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("bench report %s: %w", path, err)
	}
	return nil
}

// benchRun is one measured run.
type benchRun struct {
	cfg    benchConfig
	target benchTarget
	keys   []string
	// plaintext is what encrypt encrypts (encrypt and decrypt only).
	plaintext []byte
	// ciphertexts[i] is plaintext encrypted under keys[i] (decrypt only).
	ciphertexts [][]byte
	opTimeout   time.Duration
}

// opStats are one worker's figures for one operation.
type opStats struct {
	hist   latencyHist
	errors uint64
}

// workerStats are one worker's figures; workers never share them, and they
// are merged once the run is over.
type workerStats struct {
	ops   [numOps]opStats
	codes map[string]uint64
}

func (w *workerStats) record(op opKind, d time.Duration, err error) {
	if err != nil {
		w.ops[op].errors++
		w.codes[status.Code(err).String()]++
		return
	}
	w.ops[op].hist.record(d)
}

// run drives the target with cfg.concurrency workers for warmup plus
// duration, or until ctx ends, and returns the figures of the measured part.
func (r *benchRun) run(ctx context.Context) benchReport {
	start := time.Now()
	measureStart := start.Add(r.cfg.warmup)
	end := measureStart.Add(r.cfg.duration)
	stats := make([]*workerStats, r.cfg.concurrency)
	var wg sync.WaitGroup
	for i := range stats {
		stats[i] = &workerStats{codes: map[string]uint64{}}
		wg.Go(func() { r.worker(ctx, measureStart, end, stats[i]) })
	}
	wg.Wait()
	stop := time.Now()
	if stop.After(end) {
		stop = end
	}
	return r.report(stats, max(stop.Sub(measureStart), 0))
}

// worker runs operations back to back until end or until ctx ends. An
// operation is counted if it started after measureStart and ctx was still
// live when it finished.
func (r *benchRun) worker(ctx context.Context, measureStart, end time.Time, st *workerStats) {
	for {
		t0 := time.Now()
		if !t0.Before(end) || ctx.Err() != nil {
			return
		}
		op := r.chooseOp()
		err := r.do(ctx, op)
		d := time.Since(t0)
		if ctx.Err() != nil {
			return
		}
		if !t0.Before(measureStart) {
			st.record(op, d, err)
		}
	}
}

func (r *benchRun) chooseOp() opKind {
	if op, ok := benchOps[r.cfg.op]; ok {
		return op
	}
	if mathrand.Float64() < r.cfg.getRatio {
		return opGet
	}
	return opGenerate
}

func (r *benchRun) do(ctx context.Context, op opKind) error {
	ctx, cancel := context.WithTimeout(ctx, r.opTimeout)
	defer cancel()
	if n := r.cfg.batch; n > 0 && (op == opEncrypt || op == opDecrypt || op == opDataKey) {
		gkids, cts := make([]string, n), make([][]byte, n)
		for i := range n {
			gkids[i] = r.keys[mathrand.IntN(len(r.keys))]
			if op == opDecrypt {
				cts[i] = r.ciphertexts[mathrand.IntN(len(r.ciphertexts))]
			}
		}
		return r.target.cryptoBatch(ctx, op, gkids, cts, r.plaintext)
	}
	switch op {
	case opGet:
		return r.target.get(ctx, r.keys[mathrand.IntN(len(r.keys))])
	case opEncrypt:
		_, err := r.target.encrypt(ctx, r.keys[mathrand.IntN(len(r.keys))], r.plaintext)
		return err
	case opDecrypt:
		return r.target.decrypt(ctx, r.ciphertexts[mathrand.IntN(len(r.ciphertexts))])
	case opDataKey:
		return r.target.datakey(ctx, r.keys[mathrand.IntN(len(r.keys))])
	}
	_, err := r.target.generate(ctx)
	return err
}

// benchReport is the outcome of a run, as printed and as written to --json.
type benchReport struct {
	Op              string            `json:"op"`
	GetRatio        float64           `json:"get_ratio,omitempty"`
	Concurrency     int               `json:"concurrency"`
	DurationSeconds float64           `json:"duration_seconds"`
	WarmupSeconds   float64           `json:"warmup_seconds"`
	Keys            int               `json:"keys"`
	Size            int               `json:"size,omitempty"`  // plaintext bytes, encrypt and decrypt only
	Batch           int               `json:"batch,omitempty"` // items per call, batch runs only
	Endpoints       []string          `json:"endpoints"`
	Ops             []opReport        `json:"ops"`
	Total           opReport          `json:"total"`
	ErrorCodes      map[string]uint64 `json:"error_codes"`
}

// opReport is the figures of one operation (or all of them, for the total).
// Count and the latencies cover successful operations; Errors the failed
// ones.
type opReport struct {
	Op        string  `json:"op"`
	Count     uint64  `json:"count"`
	Errors    uint64  `json:"errors"`
	OpsPerSec float64 `json:"ops_per_sec"`
	// ItemsPerSec is OpsPerSec times the batch's items, batch runs only.
	ItemsPerSec float64 `json:"items_per_sec,omitempty"`
	MeanMs      float64 `json:"mean_ms"`
	P50Ms       float64 `json:"p50_ms"`
	P95Ms       float64 `json:"p95_ms"`
	P99Ms       float64 `json:"p99_ms"`
	MaxMs       float64 `json:"max_ms"`
}

func (r *benchRun) report(stats []*workerStats, window time.Duration) benchReport {
	rep := benchReport{
		Op:              r.cfg.op,
		Concurrency:     r.cfg.concurrency,
		DurationSeconds: window.Seconds(),
		WarmupSeconds:   r.cfg.warmup.Seconds(),
		Keys:            len(r.keys),
		ErrorCodes:      map[string]uint64{},
	}
	if r.cfg.op == benchMix {
		rep.GetRatio = r.cfg.getRatio
	}
	if r.cfg.usesPlaintext() {
		rep.Size = r.cfg.size
	}
	var total opStats
	for op := range numOps {
		var merged opStats
		for _, st := range stats {
			merged.hist.merge(&st.ops[op].hist)
			merged.errors += st.ops[op].errors
		}
		if r.usesOp(op) {
			rep.Ops = append(rep.Ops, newOpReport(op.String(), &merged, window))
		}
		total.hist.merge(&merged.hist)
		total.errors += merged.errors
	}
	rep.Total = newOpReport("total", &total, window)
	if r.cfg.batch > 0 {
		rep.Batch = r.cfg.batch
		for i := range rep.Ops {
			rep.Ops[i].ItemsPerSec = rep.Ops[i].OpsPerSec * float64(r.cfg.batch)
		}
		rep.Total.ItemsPerSec = rep.Total.OpsPerSec * float64(r.cfg.batch)
	}
	for _, st := range stats {
		for code, n := range st.codes {
			rep.ErrorCodes[code] += n
		}
	}
	return rep
}

func (r *benchRun) usesOp(op opKind) bool {
	if only, ok := benchOps[r.cfg.op]; ok {
		return op == only
	}
	return op == opGenerate || op == opGet
}

func newOpReport(name string, s *opStats, window time.Duration) opReport {
	rep := opReport{
		Op:     name,
		Count:  s.hist.count,
		Errors: s.errors,
		MeanMs: ms(s.hist.mean()),
		P50Ms:  ms(s.hist.percentile(50)),
		P95Ms:  ms(s.hist.percentile(95)),
		P99Ms:  ms(s.hist.percentile(99)),
		MaxMs:  ms(s.hist.max),
	}
	if window > 0 {
		rep.OpsPerSec = float64(s.hist.count) / window.Seconds()
	}
	return rep
}

// ms is d in milliseconds, rounded to the microsecond.
func ms(d time.Duration) float64 {
	return math.Round(float64(d)/float64(time.Microsecond)) / 1000
}

func (rep benchReport) writeText(w io.Writer) error {
	size := ""
	if rep.Op == benchEncrypt || rep.Op == benchDecrypt {
		size = fmt.Sprintf(" size=%d", rep.Size)
	}
	if rep.Batch > 0 {
		size += fmt.Sprintf(" batch=%d", rep.Batch)
	}
	fmt.Fprintf(w, "op=%s concurrency=%d duration=%.3gs warmup=%.3gs keys=%d%s endpoints=%d\n",
		rep.Op, rep.Concurrency, rep.DurationSeconds, rep.WarmupSeconds, rep.Keys, size, len(rep.Endpoints))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "OP\tCOUNT\tOPS/S\tERRORS\tMEAN\tP50\tP95\tP99\tMAX\t")
	for _, o := range append(rep.Ops, rep.Total) {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%d\t%.3fms\t%.3fms\t%.3fms\t%.3fms\t%.3fms\t\n",
			o.Op, o.Count, o.OpsPerSec, o.Errors, o.MeanMs, o.P50Ms, o.P95Ms, o.P99Ms, o.MaxMs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if rep.Batch > 0 {
		fmt.Fprintf(w, "items/s: %.1f (%d items per call)\n", rep.Total.ItemsPerSec, rep.Batch)
	}
	if len(rep.ErrorCodes) > 0 {
		codes := make([]string, 0, len(rep.ErrorCodes))
		for c := range rep.ErrorCodes {
			codes = append(codes, c)
		}
		sort.Strings(codes)
		fmt.Fprint(w, "errors:")
		for _, c := range codes {
			fmt.Fprintf(w, " %s=%d", c, rep.ErrorCodes[c])
		}
		fmt.Fprintln(w)
	}
	return nil
}
