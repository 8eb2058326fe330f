package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestHistIndex_UpperConsistent(t *testing.T) {
	prevUpper := int64(-1)
	for i := range histBuckets {
		up := histUpper(i)
		if int64(up) <= prevUpper {
			t.Fatalf("bucket %d upper %d not above bucket %d upper %d", i, up, i-1, prevUpper)
		}
		if got := histIndex(up); got != i {
			t.Fatalf("histIndex(histUpper(%d)=%d) = %d", i, up, got)
		}
		if got := histIndex(uint64(prevUpper + 1)); got != i {
			t.Fatalf("histIndex(lower of %d = %d) = %d", i, prevUpper+1, got)
		}
		prevUpper = int64(up)
	}
	if prevUpper != histMaxValue {
		t.Fatalf("top bucket ends at %d, want %d", prevUpper, histMaxValue)
	}
}

func TestLatencyHist_Empty(t *testing.T) {
	var h latencyHist
	if h.percentile(50) != 0 || h.percentile(100) != 0 || h.mean() != 0 || h.max != 0 {
		t.Fatalf("empty histogram: p50 %v p100 %v mean %v max %v", h.percentile(50), h.percentile(100), h.mean(), h.max)
	}
}

func TestLatencyHist_SmallValuesExact(t *testing.T) {
	var h latencyHist
	for v := 1; v <= 100; v++ {
		h.record(time.Duration(v) * time.Microsecond)
	}
	for p, want := range map[float64]time.Duration{50: 50, 95: 95, 99: 99, 100: 100, 0: 1} {
		if got := h.percentile(p); got != want*time.Microsecond {
			t.Errorf("p%v = %v, want %v", p, got, want*time.Microsecond)
		}
	}
	if h.mean() != 50500*time.Nanosecond {
		t.Errorf("mean = %v", h.mean())
	}
}

func TestLatencyHist_Percentiles(t *testing.T) {
	var h latencyHist
	// 1ms..10s in 1ms steps, recorded out of order.
	const n = 10000
	for i := range n {
		v := (i*7919)%n + 1
		h.record(time.Duration(v) * time.Millisecond)
	}
	if h.count != n {
		t.Fatalf("count = %d", h.count)
	}
	for _, p := range []float64{50, 90, 95, 99, 99.9} {
		want := time.Duration(math.Ceil(p/100*n)) * time.Millisecond
		got := h.percentile(p)
		if rel := math.Abs(float64(got-want)) / float64(want); rel > 1.0/histSubBuckets {
			t.Errorf("p%v = %v, want %v within %.1f%% (off by %.2f%%)", p, got, want, 100.0/histSubBuckets, rel*100)
		}
		if got < want {
			t.Errorf("p%v = %v below the true %v: percentiles report the bucket's upper edge", p, got, want)
		}
	}
	if h.max != n*time.Millisecond || h.percentile(100) != h.max {
		t.Errorf("max = %v, p100 = %v", h.max, h.percentile(100))
	}
	if h.min != time.Millisecond {
		t.Errorf("min = %v", h.min)
	}
}

func TestLatencyHist_ClampsAndMerges(t *testing.T) {
	var a, b, all latencyHist
	for i := range 1000 {
		d := time.Duration(i*i) * time.Microsecond
		all.record(d)
		if i%3 == 0 {
			a.record(d)
		} else {
			b.record(d)
		}
	}
	var merged latencyHist
	merged.merge(&a)
	merged.merge(&b)
	merged.merge(&latencyHist{})
	if merged != all {
		t.Fatal("merging the parts differs from recording everything in one histogram")
	}

	var h latencyHist
	h.record(-time.Second)
	h.record(3 * time.Hour) // above the bucket range
	if h.percentile(100) != 3*time.Hour || h.percentile(1) != 0 {
		t.Errorf("p100 = %v, p1 = %v", h.percentile(100), h.percentile(1))
	}
}

// fakeTarget counts operations and fails every failEvery-th get. Its
// ciphertexts are "ct:" GKID ":" plaintext.
type fakeTarget struct {
	gens, gets          atomic.Int64
	encs, decs, dataKey atomic.Int64
	failEvery           int64
	delay               time.Duration
}

func (f *fakeTarget) generate(ctx context.Context) (string, error) {
	n := f.gens.Add(1)
	return fmt.Sprintf("gk-%d", n), f.wait(ctx)
}

func (f *fakeTarget) get(ctx context.Context, gkid string) error {
	if !strings.HasPrefix(gkid, "gk-") {
		return status.Error(codes.InvalidArgument, "bad gkid")
	}
	n := f.gets.Add(1)
	if err := f.wait(ctx); err != nil {
		return err
	}
	if f.failEvery > 0 && n%f.failEvery == 0 {
		return status.Error(codes.Unavailable, "injected")
	}
	return nil
}

func (f *fakeTarget) encrypt(ctx context.Context, gkid string, plaintext []byte) ([]byte, error) {
	if !strings.HasPrefix(gkid, "gk-") {
		return nil, status.Error(codes.InvalidArgument, "bad gkid")
	}
	f.encs.Add(1)
	return []byte("ct:" + gkid + ":" + string(plaintext)), f.wait(ctx)
}

func (f *fakeTarget) decrypt(ctx context.Context, ciphertext []byte) error {
	if !strings.HasPrefix(string(ciphertext), "ct:gk-") {
		return status.Error(codes.InvalidArgument, "bad ciphertext")
	}
	f.decs.Add(1)
	return f.wait(ctx)
}

func (f *fakeTarget) cryptoBatch(ctx context.Context, op opKind, gkids []string, ciphertexts [][]byte, plaintext []byte) error {
	switch op {
	case opDecrypt:
		for _, ct := range ciphertexts {
			if err := f.decrypt(ctx, ct); err != nil {
				return err
			}
		}
	case opEncrypt:
		for _, g := range gkids {
			if _, err := f.encrypt(ctx, g, plaintext); err != nil {
				return err
			}
		}
	default:
		for _, g := range gkids {
			if err := f.datakey(ctx, g); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f *fakeTarget) datakey(ctx context.Context, gkid string) error {
	if !strings.HasPrefix(gkid, "gk-") {
		return status.Error(codes.InvalidArgument, "bad gkid")
	}
	f.dataKey.Add(1)
	return f.wait(ctx)
}

func (f *fakeTarget) wait(ctx context.Context) error {
	t := time.NewTimer(f.delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func TestBenchRun_Mix(t *testing.T) {
	target := &fakeTarget{failEvery: 10, delay: 200 * time.Microsecond}
	ctx := context.Background()
	keys, err := pregenerate(ctx, target, 50, 8, time.Second)
	if err != nil || len(keys) != 50 || keys[49] == "" {
		t.Fatalf("pregenerate = %d keys, %v", len(keys), err)
	}
	cfg := benchConfig{op: benchMix, getRatio: 0.8, concurrency: 4, duration: 300 * time.Millisecond,
		warmup: 50 * time.Millisecond, keys: 50, resource: "bench"}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	r := &benchRun{cfg: cfg, target: target, keys: keys, opTimeout: time.Second}
	rep := r.run(ctx)

	if len(rep.Ops) != 2 || rep.Ops[0].Op != "generate" || rep.Ops[1].Op != "get" {
		t.Fatalf("ops = %+v", rep.Ops)
	}
	get, gen := rep.Ops[1], rep.Ops[0]
	if get.Count == 0 || gen.Count == 0 || get.Errors == 0 {
		t.Fatalf("get %+v, generate %+v", get, gen)
	}
	if get.Count < 2*gen.Count {
		t.Errorf("get ratio off: %d gets, %d generates", get.Count, gen.Count)
	}
	if rep.Total.Count != get.Count+gen.Count || rep.Total.Errors != get.Errors+gen.Errors {
		t.Errorf("total %+v does not add up", rep.Total)
	}
	if rep.ErrorCodes["Unavailable"] != get.Errors {
		t.Errorf("error codes %v, want Unavailable=%d", rep.ErrorCodes, get.Errors)
	}
	if math.Abs(rep.DurationSeconds-0.3) > 0.01 {
		t.Errorf("duration = %v", rep.DurationSeconds)
	}
	if want := float64(rep.Total.Count) / rep.DurationSeconds; math.Abs(rep.Total.OpsPerSec-want) > 1e-6 {
		t.Errorf("ops/s = %v, want %v", rep.Total.OpsPerSec, want)
	}
	if get.P50Ms < 0.2 || get.P50Ms > get.P99Ms || get.P99Ms > get.MaxMs {
		t.Errorf("latencies out of order: %+v", get)
	}
	// Warm-up operations are not counted.
	if done := uint64(target.gets.Load() + target.gens.Load() - 50); rep.Total.Count+rep.Total.Errors >= done {
		t.Errorf("counted %d of %d operations: warm-up included", rep.Total.Count+rep.Total.Errors, done)
	}

	var text bytes.Buffer
	if err := rep.writeText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"OPS/S", "P99", "get", "generate", "total", "errors: Unavailable="} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
	var js bytes.Buffer
	if err := writeJSON(&js, rep); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	total := back["total"].(map[string]any)
	for _, k := range []string{"ops_per_sec", "errors", "p50_ms", "p95_ms", "p99_ms", "max_ms"} {
		if _, ok := total[k]; !ok {
			t.Errorf("JSON total lacks %s: %v", k, total)
		}
	}
}

func TestBenchRun_InterruptStopsWorkers(t *testing.T) {
	target := &fakeTarget{delay: time.Millisecond}
	cfg := benchConfig{op: benchGenerate, concurrency: 8, duration: time.Hour, resource: "bench"}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan benchReport, 1)
	go func() { done <- (&benchRun{cfg: cfg, target: target, opTimeout: time.Second}).run(ctx) }()
	select {
	case rep := <-done:
		if len(rep.Ops) != 1 || rep.Ops[0].Op != "generate" || rep.Total.Count == 0 {
			t.Fatalf("report %+v", rep)
		}
		if rep.DurationSeconds > 1 {
			t.Errorf("duration %v after an interrupt at 0.1s", rep.DurationSeconds)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("bench did not stop when its context ended")
	}
}

func TestPregenerate_StopsOnError(t *testing.T) {
	failing := &failingTarget{}
	if _, err := pregenerate(context.Background(), failing, 1000, 4, time.Second); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("err = %v, want PermissionDenied", err)
	}
	if n := failing.calls.Load(); n > 4 {
		t.Errorf("%d calls after the first failure", n)
	}
}

type failingTarget struct{ calls atomic.Int64 }

func (f *failingTarget) generate(context.Context) (string, error) {
	f.calls.Add(1)
	return "", status.Error(codes.PermissionDenied, "no grant")
}

func (f *failingTarget) get(context.Context, string) error { return nil }

func (f *failingTarget) cryptoBatch(context.Context, opKind, []string, [][]byte, []byte) error {
	f.calls.Add(1)
	return status.Error(codes.FailedPrecondition, "key is not an AES key")
}

func (f *failingTarget) encrypt(context.Context, string, []byte) ([]byte, error) {
	f.calls.Add(1)
	return nil, status.Error(codes.FailedPrecondition, "key is not an AES key")
}

func (f *failingTarget) decrypt(context.Context, []byte) error { return nil }

func (f *failingTarget) datakey(context.Context, string) error { return nil }

func TestBenchConfig_Validate(t *testing.T) {
	good := benchConfig{op: benchMix, getRatio: 0.9, concurrency: 64, duration: time.Second, keys: 10, resource: "b"}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for name, tweak := range map[string]func(*benchConfig){
		"op":          func(b *benchConfig) { b.op = "put" },
		"ratio":       func(b *benchConfig) { b.getRatio = 1.5 },
		"concurrency": func(b *benchConfig) { b.concurrency = 0 },
		"many":        func(b *benchConfig) { b.concurrency = maxBenchConcurrency + 1 },
		"duration":    func(b *benchConfig) { b.duration = 0 },
		"warmup":      func(b *benchConfig) { b.warmup = -time.Second },
		"keys":        func(b *benchConfig) { b.keys = 0 },
		"resource":    func(b *benchConfig) { b.resource = "" },
	} {
		b := good
		tweak(&b)
		if err := b.validate(); err == nil {
			t.Errorf("%s: accepted %+v", name, b)
		}
	}
	gen := good
	gen.op, gen.keys = benchGenerate, 0
	if err := gen.validate(); err != nil {
		t.Errorf("generate needs no keys: %v", err)
	}
}

func TestBenchConfig_ValidateCryptoOps(t *testing.T) {
	base := benchConfig{getRatio: 0.9, concurrency: 8, duration: time.Second, keys: 10, size: defaultBenchSize, resource: "b"}
	for _, op := range []string{benchEncrypt, benchDecrypt, benchDataKey} {
		b := base
		b.op = op
		if err := b.validate(); err != nil {
			t.Errorf("--op %s refused: %v", op, err)
		}
		if !b.needsKeys() || !b.usesCrypto() {
			t.Errorf("--op %s: needsKeys %v, usesCrypto %v", op, b.needsKeys(), b.usesCrypto())
		}
		for _, alg := range []string{"", "aes-128", "AES-256", "aes-192"} {
			b.algorithm = alg
			if err := b.validate(); err != nil {
				t.Errorf("--op %s --algorithm %q refused: %v", op, alg, err)
			}
		}
		b.algorithm = "hmac-sha256"
		if err := b.validate(); err == nil || !strings.Contains(err.Error(), "needs AES keys") {
			t.Errorf("--op %s with HMAC keys: %v", op, err)
		}
		b.algorithm, b.keys = "", 0
		if err := b.validate(); err == nil || !strings.Contains(err.Error(), "--keys") {
			t.Errorf("--op %s without keys: %v", op, err)
		}
	}
	for _, c := range []struct {
		op          string
		batch, size int
		want        string
	}{
		{benchEncrypt, 100, 1024, ""},
		{benchDataKey, 1000, 1024, ""},
		{benchEncrypt, 1001, 1, "--batch 1001"},
		{benchEncrypt, -1, 1, "--batch -1"},
		{benchGet, 10, 1024, "goes with --op encrypt"},
		{benchEncrypt, 100, 65536, "at most 2097152"},
	} {
		b := base
		b.op, b.batch, b.size = c.op, c.batch, c.size
		if err := b.validate(); (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("--op %s --batch %d --size %d: %v, want %q", c.op, c.batch, c.size, err, c.want)
		}
	}
	for size, ok := range map[int]bool{0: true, 1: true, 65536: true, 65537: false, -1: false} {
		b := base
		b.op, b.size = benchEncrypt, size
		if err := b.validate(); (err == nil) != ok {
			t.Errorf("--size %d: %v", size, err)
		} else if err != nil && !strings.Contains(err.Error(), "--size") {
			t.Errorf("--size %d: error %q does not name the flag", size, err)
		}
	}
	b := base
	b.op = "sign"
	if err := b.validate(); err == nil || err.Error() != `--op "sign": want generate, get, mix, encrypt, decrypt or datakey` {
		t.Errorf("unknown op: %v", err)
	}
	// HMAC keys are fine where nothing is encrypted.
	b.op, b.algorithm = benchGet, "hmac-sha256"
	if err := b.validate(); err != nil {
		t.Errorf("--op get with HMAC keys: %v", err)
	}
	b.algorithm = "des"
	if err := b.validate(); err == nil || !strings.Contains(err.Error(), "unknown algorithm") {
		t.Errorf("--algorithm des: %v", err)
	}
}

// TestBenchRun_CryptoOps: each crypto operation is the only one run and
// reported, under its name, and decrypt decrypts the ciphertexts set up
// beforehand.
func TestBenchRun_CryptoOps(t *testing.T) {
	ctx := context.Background()
	for _, op := range []string{benchEncrypt, benchDecrypt, benchDataKey} {
		t.Run(op, func(t *testing.T) {
			target := &fakeTarget{delay: 100 * time.Microsecond}
			cfg := benchConfig{op: op, concurrency: 4, duration: 150 * time.Millisecond, warmup: 20 * time.Millisecond,
				keys: 5, size: 100, resource: "bench"}
			if err := cfg.validate(); err != nil {
				t.Fatal(err)
			}
			keys, err := pregenerate(ctx, target, cfg.keys, cfg.concurrency, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			r := &benchRun{cfg: cfg, target: target, keys: keys, opTimeout: time.Second}
			if cfg.usesPlaintext() {
				r.plaintext = bytes.Repeat([]byte{'p'}, cfg.size)
			}
			if op == benchDecrypt {
				if r.ciphertexts, err = preencrypt(ctx, target, keys, r.plaintext, cfg.concurrency, time.Second); err != nil {
					t.Fatal(err)
				}
				for i, ct := range r.ciphertexts {
					if want := "ct:" + keys[i] + ":" + strings.Repeat("p", 100); string(ct) != want {
						t.Fatalf("ciphertext %d = %q, want %q", i, ct, want)
					}
				}
				if target.encs.Load() != 5 {
					t.Fatalf("setup made %d encrypts, want 5", target.encs.Load())
				}
			}
			encsBefore := target.encs.Load()
			rep := r.run(ctx)
			if len(rep.Ops) != 1 || rep.Ops[0].Op != op || rep.Ops[0].Count == 0 || rep.Ops[0].Errors != 0 {
				t.Fatalf("ops = %+v", rep.Ops)
			}
			if rep.Total.Count != rep.Ops[0].Count || rep.Keys != 5 {
				t.Fatalf("report %+v", rep)
			}
			ran := map[string]int64{benchEncrypt: target.encs.Load() - encsBefore, benchDecrypt: target.decs.Load(),
				benchDataKey: target.dataKey.Load()}
			for name, n := range ran {
				if (n > 0) != (name == op) {
					t.Errorf("--op %s ran %d %s operations", op, n, name)
				}
			}
			if target.gets.Load() != 0 || target.gens.Load() != 5 {
				t.Errorf("--op %s ran %d gets and %d generates", op, target.gets.Load(), target.gens.Load())
			}

			var text bytes.Buffer
			if err := rep.writeText(&text); err != nil {
				t.Fatal(err)
			}
			wantSize := op != benchDataKey
			if !strings.HasPrefix(text.String(), "op="+op+" ") || strings.Contains(text.String(), " size=100 ") != wantSize {
				t.Errorf("text report:\n%s", text.String())
			}
			if (rep.Size == 100) != wantSize {
				t.Errorf("report size %d", rep.Size)
			}
		})
	}
}

func TestPreencrypt_StopsOnError(t *testing.T) {
	failing := &failingTarget{}
	gkids := make([]string, 1000)
	if _, err := preencrypt(context.Background(), failing, gkids, []byte("x"), 4, time.Second); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("err = %v, want FailedPrecondition", err)
	}
	if n := failing.calls.Load(); n > 4 {
		t.Errorf("%d calls after the first failure", n)
	}
}
