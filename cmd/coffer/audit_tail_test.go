package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coffer-kms/coffer/internal/testenv"
)

func TestCLI_AuditTail(t *testing.T) {
	l, env := mustAuditNode(t, 10)
	out := mustRun(t, env, "audit", "tail", "-n", "3")
	if got := strings.Join(tableSeqs(t, out), ","); got != "8,9,10" {
		t.Fatalf("tail -n 3: %s\n%s", got, out)
	}
	out = mustRun(t, env, "-o", "json", "audit", "tail", "-n", "30")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 10 || !strings.HasPrefix(lines[0], `{"seq":"1",`) || !strings.HasPrefix(lines[9], `{"seq":"10",`) {
		t.Fatalf("tail -o json:\n%s", out)
	}

	// Filtered, -n counts matches (denied: every third entry), in one query.
	l.mu.Lock()
	l.queries = nil
	l.mu.Unlock()
	out = mustRun(t, env, "audit", "tail", "-n", "2", "--outcome", "denied")
	if got := strings.Join(tableSeqs(t, out), ","); got != "6,9" {
		t.Fatalf("tail -n 2 --outcome denied: %s\n%s", got, out)
	}
	// A node older than newest: the matches among the newest n entries.
	l.mu.Lock()
	nq := len(l.queries)
	l.oldQuery = true
	l.mu.Unlock()
	if nq != 1 {
		t.Fatalf("tail -n 2 --outcome denied sent %d queries, want 1", nq)
	}
	out = mustRun(t, env, "audit", "tail", "-n", "3", "--outcome", "denied")
	if got := strings.Join(tableSeqs(t, out), ","); got != "9" {
		t.Fatalf("tail -n 3 --outcome denied against an older node: %s\n%s", got, out)
	}
	out = mustRun(t, env, "audit", "tail", "-n", "30", "--outcome", "denied")
	if got := strings.Join(tableSeqs(t, out), ","); got != "3,6,9" {
		t.Fatalf("tail -n 30 --outcome denied against an older node: %s\n%s", got, out)
	}
	l.mu.Lock()
	l.oldQuery = false
	l.mu.Unlock()

	// -f prints new entries until interrupted, then exits 0. This node
	// cannot stream, so it polls.
	out, errOut := followTail(t, env, []string{"-n", "2", "--interval", "100ms"}, func() { l.add(12) }, "k10", "k12")
	if got := strings.Join(tableSeqs(t, out), ","); got != "9,10,11,12" {
		t.Fatalf("tail -f printed %s:\n%s", got, out)
	}
	if !strings.Contains(errOut, "polling every 100ms") {
		t.Fatalf("tail -f against a node that cannot stream does not say it polls: %q", errOut)
	}
}

// TestCLI_AuditTailFilters: tail -f passes its filters to the stream, which
// sends only matching entries.
func TestCLI_AuditTailFilters(t *testing.T) {
	l, env := mustAuditNode(t, 14)
	l.mu.Lock()
	l.streaming = true
	l.mu.Unlock()
	// Every third entry is a refusal of client ops: there are only four.
	out, _ := followTail(t, env, []string{"-n", "5", "--outcome", "Denied", "--client", "ops", "--op", "get"}, nil, "k12")
	if got := strings.Join(tableSeqs(t, out), ","); got != "3,6,9,12" {
		t.Fatalf("tail -f --outcome denied --client ops printed %s:\n%s", got, out)
	}
	l.mu.Lock()
	req := l.followReqs[0]
	l.mu.Unlock()
	if req.GetOutcome() != "denied" || req.GetCaller() != "client:ops" || req.GetOperation() != "get" || !req.GetFromNewest() || req.GetNewest() != 5 {
		t.Fatalf("follow request %v", req)
	}
}

// followTail runs audit tail -f with args until each of marks has been
// printed, calling next after each but the last (to add entries), then
// interrupts it, checks that it exits 0, and returns its output and stderr.
func followTail(t *testing.T, env envMap, args []string, next func(), marks ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := &testenv.Buffer{}
	var errOut testenv.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"audit", "tail", "-f"}, args...), streams{in: strings.NewReader(""), out: w, err: &errOut}, env.get)
	}()
	for i, m := range marks {
		waitFor(t, func() bool { return strings.Contains(w.String(), m) })
		if i < len(marks)-1 {
			next()
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Fatalf("tail -f ended with %d, stderr %q", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("tail -f did not stop when interrupted")
	}
	return w.String(), errOut.String()
}

// TestCLI_AuditTailStreams: tail -f follows one stream, and when the node
// drops it, resumes after the last entry printed: nothing twice, nothing
// lost, and no polling.
func TestCLI_AuditTailStreams(t *testing.T) {
	l, env := mustAuditNode(t, 10)
	l.mu.Lock()
	l.streaming, l.dropOnce = true, true
	l.mu.Unlock()
	n := uint64(11)
	out, errOut := followTail(t, env, []string{"-n", "2"}, func() { n++; l.add(n) }, "k10", "k12", "k13")
	if got := strings.Join(tableSeqs(t, out), ","); got != "9,10,11,12,13" {
		t.Fatalf("tail -f printed %s:\n%s", got, out)
	}
	// Rows printed as they arrive line up with the header.
	for _, col := range []string{"TIME", "OP", "TARGET"} {
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		at := strings.Index(lines[0], col)
		field := slices.Index(strings.Fields(lines[0]), col)
		for _, line := range lines[1:] {
			f := strings.Fields(line)
			if field >= len(f) || !strings.HasPrefix(line[at:], f[field]) {
				t.Fatalf("column %s is not at %d in %q:\n%s", col, at, line, out)
			}
		}
	}
	l.mu.Lock()
	follows, queries := fmt.Sprint(l.follows), len(l.queries)
	l.mu.Unlock()
	if follows != "[8 10]" {
		t.Fatalf("follow streams started after %s, want [8 10] (the newest 2, then a resume after the dropped first message)", follows)
	}
	if queries != 0 || errOut != "" {
		t.Fatalf("%d queries (want none: the stream starts with the newest entries), stderr %q", queries, errOut)
	}
}

// TestCLI_AuditTailGivesUpAtTimeout: tail -f rides through a dropped
// stream, but when the cluster stays without a leader it gives up after
// --timeout (not the client library's default) with the retry history.
func TestCLI_AuditTailGivesUpAtTimeout(t *testing.T) {
	l, env := mustAuditNode(t, 10)
	l.mu.Lock()
	l.streaming, l.dropOnce, l.downAfterDrop = true, true, true
	l.mu.Unlock()
	// The command's context has no deadline, as in a terminal: --timeout
	// is what bounds the outage.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, errOut testenv.Buffer
	done := make(chan int, 1)
	start := time.Now()
	go func() {
		done <- run(ctx, []string{"--timeout", "1s", "audit", "tail", "-f", "-n", "2"},
			streams{in: strings.NewReader(""), out: &stdout, err: &errOut}, env.get)
	}()
	var code int
	select {
	case code = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("tail -f still running 10s into an outage, with --timeout 1s")
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Fatalf("tail -f gave up after %v, want about --timeout 1s", elapsed)
	}
	out, stderr := stdout.String(), errOut.String()
	if code != exitFailure || !strings.Contains(out, "k10") {
		t.Fatalf("exit %d, output %q, stderr %q", code, out, stderr)
	}
	for _, want := range []string{"coffer: Unavailable: gave up after ", "(context deadline exceeded)", ": no leader"} {
		if !strings.Contains(stderr, want) {
			t.Fatalf("stderr %q lacks %q", stderr, want)
		}
	}
}
