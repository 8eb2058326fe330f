package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// testAuditKey returns a deterministic Ed25519 node key.
func testAuditKey(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
}

// writeTrustedKey writes key's public half as a PEM file and returns its
// path.
func writeTrustedKey(t *testing.T, dir, name string, key ed25519.PrivateKey) string {
	t.Helper()
	pemBytes, err := audit.MarshalPublicKeyPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// testCheckpoint is a checkpoint to sign after entry seq.
type testCheckpoint struct {
	seq    uint64
	signer string
	key    ed25519.PrivateKey
}

// testEntry returns the unlinked entry seq of the test logs; tweak, if set,
// may change it (a different history).
func testEntry(seq uint64, tweak func(*cofferv1.AuditEntry)) *cofferv1.AuditEntry {
	e := &cofferv1.AuditEntry{
		TimeUnixNano: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano() + int64(seq)*int64(time.Second),
		Node:         "n1",
		Caller:       "client:app",
		Operation:    "get",
		Gkid:         fmt.Sprintf("k%d", seq),
		Resource:     "payments/db",
		Outcome:      cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED,
		RequestId:    fmt.Sprintf("req-%d", seq),
	}
	if seq%3 == 0 {
		e.Caller = "client:ops"
		e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED
		e.Reason = "no grant for get on payments/db"
	}
	if tweak != nil {
		tweak(e)
	}
	return e
}

// buildExport returns the export of entries 1..n, linked with audit.Link,
// with the given checkpoints signed with audit.Sign after their entries.
func buildExport(t *testing.T, n uint64, cps []testCheckpoint, tweak func(*cofferv1.AuditEntry)) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := audit.NewWriter(&buf)
	prev := audit.GenesisHash()
	for seq := uint64(1); seq <= n; seq++ {
		e := testEntry(seq, tweak)
		audit.Link(prev, seq, e)
		prev = e.GetHash()
		if err := w.WriteEntry(e); err != nil {
			t.Fatal(err)
		}
		for _, c := range cps {
			if c.seq != seq {
				continue
			}
			cp := &cofferv1.AuditCheckpoint{Seq: seq, Head: e.GetHash(), TimeUnixNano: e.GetTimeUnixNano() + 1, Signer: c.signer}
			if err := audit.Sign(cp, c.key); err != nil {
				t.Fatal(err)
			}
			if err := w.WriteCheckpoint(cp); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func writeTestFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// editLine applies strings.Replace(old, new) to the line of entry seq.
func editLine(t *testing.T, export []byte, seq uint64, old, new string) []byte {
	t.Helper()
	lines := strings.SplitAfter(string(export), "\n")
	prefix := fmt.Sprintf(`{"type":"entry","seq":%d,`, seq)
	for i, l := range lines {
		if strings.HasPrefix(l, prefix) {
			if !strings.Contains(l, old) {
				t.Fatalf("entry %d has no %q: %s", seq, old, l)
			}
			lines[i] = strings.Replace(l, old, new, 1)
			return []byte(strings.Join(lines, ""))
		}
	}
	t.Fatalf("no entry %d in the export", seq)
	return nil
}

func TestCLI_AuditUsageErrors(t *testing.T) {
	dir := t.TempDir()
	exp := writeTestFile(t, dir, "export.jsonl", nil)
	key := writeTrustedKey(t, dir, "n1.pub", testAuditKey(1))
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"head bad consistency", []string{"audit", "head", "--consistency", "eventual"}, "consistency"},
		{"head extra argument", []string{"audit", "head", "now"}, "none"},
		{"query bad since", []string{"audit", "query", "--since", "yesterday"}, "--since"},
		{"query negative since", []string{"audit", "query", "--since", "-1h"}, "--since"},
		{"query zero days", []string{"audit", "query", "--since", "0d"}, "--since"},
		{"query bad until", []string{"audit", "query", "--until", "2024-13-01T00:00:00Z"}, "--until"},
		{"query since after until", []string{"audit", "query", "--since", "1h", "--until", "2h"}, "must be before --until"},
		{"query client and caller", []string{"audit", "query", "--client", "app", "--caller", "client:app"}, "not both"},
		{"query bad client", []string{"audit", "query", "--client", "a:b"}, "--client"},
		{"query blank caller", []string{"audit", "query", "--caller", " "}, "--caller"},
		{"query bad outcome", []string{"audit", "query", "--outcome", "maybe"}, "--outcome"},
		{"query big limit", []string{"audit", "query", "--limit", "5000"}, "--limit"},
		{"query bad after", []string{"audit", "query", "--after", "-1"}, "--after"},
		{"query argument", []string{"audit", "query", "x"}, "takes 0 argument"},
		{"tail negative", []string{"audit", "tail", "-n", "-1"}, "-n must be"},
		{"tail too many", []string{"audit", "tail", "-n", "5000"}, "-n must be"},
		{"tail fast interval", []string{"audit", "tail", "-f", "--interval", "1ms"}, "--interval"},
		{"tail slow interval", []string{"audit", "tail", "-f", "--interval", "1h"}, "--interval"},
		{"tail bad outcome", []string{"audit", "tail", "-f", "--outcome", "maybe"}, "--outcome"},
		{"tail client and caller", []string{"audit", "tail", "--client", "a", "--caller", "client:a"}, "not both"},
		{"export csv", []string{"audit", "export", "--format", "csv"}, "only jsonl"},
		{"export argument", []string{"audit", "export", "out.jsonl"}, "takes 0 argument"},
		{"verify without key", []string{"audit", "verify", "--file", exp}, "--trusted-key is required"},
		{"verify blank key", []string{"audit", "verify", "--file", exp, "--trusted-key", ""}, "--trusted-key is blank"},
		{"verify without source", []string{"audit", "verify", "--trusted-key", key}, "exactly one of --file or --data-dir"},
		{"verify two sources", []string{"audit", "verify", "--file", exp, "--data-dir", dir, "--trusted-key", key}, "exactly one"},
		{"prune without a bound", []string{"audit", "prune"}, "--up-to SEQ (1 or more) or --before TIME is required"},
		{"prune with two bounds", []string{"audit", "prune", "--up-to", "4", "--before", "90d"}, "not both"},
		{"prune before a bad time", []string{"audit", "prune", "--before", "last tuesday"}, "--before"},
		{"unknown audit command", []string{"audit", "delete"}, "unknown command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, nil, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d (stderr %q)", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tc.wantErr)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
}

func TestParseAuditTime(t *testing.T) {
	now := time.Date(2024, 5, 10, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"2024-05-01T08:30:00Z", time.Date(2024, 5, 1, 8, 30, 0, 0, time.UTC)},
		{"2024-05-01T10:30:00.5+02:00", time.Date(2024, 5, 1, 8, 30, 0, 5e8, time.UTC)},
		{"1h", now.Add(-time.Hour)},
		{"90m", now.Add(-90 * time.Minute)},
		{"1h-ago", now.Add(-time.Hour)},
		{"2h30m ago", now.Add(-150 * time.Minute)},
		{"7d", now.Add(-7 * 24 * time.Hour)},
	} {
		ts, err := parseAuditTime("since", tc.in, now)
		if err != nil || !ts.AsTime().Equal(tc.want) {
			t.Errorf("parseAuditTime(%q) = %v, %v; want %v", tc.in, ts.AsTime(), err, tc.want)
		}
	}
	if ts, err := parseAuditTime("since", " ", now); ts != nil || err != nil {
		t.Errorf("blank = %v, %v; want no bound", ts, err)
	}
	for _, bad := range []string{"1x", "-5m", "0s", "d", "1.5d", "99999999d", "ago"} {
		if _, err := parseAuditTime("since", bad, now); err == nil {
			t.Errorf("parseAuditTime(%q) accepted", bad)
		}
	}
}

func TestCell(t *testing.T) {
	for in, want := range map[string]string{
		"":                   "-",
		"plain text":         "plain text",
		"two\nlines\there":   "two lines here",
		"red\x1b[31mALERT":   `red\u001b[31mALERT`,
		"rtl\u202eexe.txt":   `rtl\u202eexe.txt`,
		"naïve résumé":       "naïve résumé",
		"bell\a and nul\x00": `bell\u0007 and nul\u0000`,
	} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %q, want %q", in, got, want)
		}
	}
}

// verifyFixture is a signed export of six entries: checkpoints at 3 (n1)
// and 5 (n2), entry 6 uncovered.
type verifyFixture struct {
	dir      string
	export   []byte
	file     string
	key1     string
	key2     string
	cps      []testCheckpoint
	keyFlags []string
}

func mustVerifyFixture(t *testing.T) verifyFixture {
	t.Helper()
	dir := t.TempDir()
	k1, k2 := testAuditKey(1), testAuditKey(2)
	cps := []testCheckpoint{{3, "n1", k1}, {5, "n2", k2}}
	export := buildExport(t, 6, cps, nil)
	f := verifyFixture{dir: dir, export: export, cps: cps,
		file: writeTestFile(t, dir, "export.jsonl", export),
		key1: writeTrustedKey(t, dir, "n1.pub", k1),
		key2: writeTrustedKey(t, dir, "n2.pub", k2),
	}
	f.keyFlags = []string{"--trusted-key", f.key1, "--trusted-key", f.key2}
	return f
}

func (f verifyFixture) args(extra ...string) []string {
	return append(append([]string{"audit", "verify"}, f.keyFlags...), extra...)
}

// TestCLI_AuditVerify runs `audit verify` offline (no cluster settings in
// the environment) against exports built here.
func TestCLI_AuditVerify(t *testing.T) {
	f := mustVerifyFixture(t)

	t.Run("passes", func(t *testing.T) {
		out := mustRun(t, nil, f.args("--file", f.file)...)
		for _, want := range []string{"audit chain verified:", f.file, "6 (seq 1..6)", "2, covering up to seq 5",
			audit.KeyFingerprint(mustPKIX(t, testAuditKey(1))), audit.KeyFingerprint(mustPKIX(t, testAuditKey(2))),
			"1 entry after seq 5, hash-linked but not signed"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("json", func(t *testing.T) {
		out := mustRun(t, nil, f.args("-o", "json", "--file", f.file)...)
		var got verifyJSON
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out)
		}
		r := got.Report
		if !got.OK || got.Error != nil || got.TrustedKeys != 2 || r.Entries != 6 || r.FirstSeq != 1 || r.LastSeq != 6 ||
			r.Checkpoints != 2 || r.CoveredSeq != 5 || r.Uncovered != 1 || len(r.Signers) != 2 || len(r.Head) != 64 {
			t.Fatalf("report %+v", got)
		}
	})

	t.Run("stdin", func(t *testing.T) {
		var out, errOut bytes.Buffer
		code := run(context.Background(), f.args("--file", "-"), streams{in: bytes.NewReader(f.export), out: &out, err: &errOut}, envMap{}.get)
		if code != exitOK || !strings.Contains(out.String(), "standard input") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
		}
	})

	fails := func(t *testing.T, args []string, want string) (string, string) {
		t.Helper()
		code, out, stderr := runCLI(t, nil, args...)
		if code != exitFailure {
			t.Fatalf("exit %d, want %d (stderr %q)", code, exitFailure, stderr)
		}
		if !strings.Contains(stderr, want) {
			t.Fatalf("stderr %q, want it to contain %q", stderr, want)
		}
		return out, stderr
	}

	t.Run("edited line", func(t *testing.T) {
		edited := writeTestFile(t, f.dir, "edited.jsonl", editLine(t, f.export, 4, `"gkid":"k4"`, `"gkid":"k9"`))
		out, _ := fails(t, f.args("--file", edited), "audit: chain broken at seq 4 (bad-hash): ")
		if out != "" {
			t.Fatalf("stdout %q on failure", out)
		}
		out, _ = fails(t, f.args("-o", "json", "--file", edited), "chain broken at seq 4 (bad-hash)")
		var got verifyJSON
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out)
		}
		if got.OK || got.Error == nil || got.Error.Seq != 4 || got.Error.Kind != audit.KindBadHash || got.Report.LastSeq != 3 {
			t.Fatalf("JSON %+v, error %+v", got, got.Error)
		}
	})

	t.Run("dropped line", func(t *testing.T) {
		lines := strings.SplitAfter(string(f.export), "\n")
		var kept []string
		for _, l := range lines {
			if !strings.HasPrefix(l, `{"type":"entry","seq":2,`) {
				kept = append(kept, l)
			}
		}
		gap := writeTestFile(t, f.dir, "gap.jsonl", []byte(strings.Join(kept, "")))
		fails(t, f.args("--file", gap), "chain broken at seq 2 (gap)")
	})

	t.Run("untrusted signer", func(t *testing.T) {
		fails(t, []string{"audit", "verify", "--file", f.file, "--trusted-key", f.key1}, "chain broken at seq 5 (untrusted-key)")
	})

	t.Run("strict", func(t *testing.T) {
		fails(t, f.args("--strict", "--file", f.file), "chain broken at seq 6 (uncovered-tail)")
	})

	t.Run("pinned", func(t *testing.T) {
		// The export itself kept as the auditor's record: reproduced.
		out := mustRun(t, nil, f.args("--file", f.file, "--pinned", f.file)...)
		if !strings.Contains(out, "2 kept checkpoint(s) reproduced") {
			t.Fatalf("output:\n%s", out)
		}
		// History rewritten from entry 2 on and re-signed with the same
		// (stolen) keys: it verifies alone, but not against what was kept.
		rewritten := buildExport(t, 6, f.cps, func(e *cofferv1.AuditEntry) {
			if e.GetRequestId() == "req-2" {
				e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED
			}
		})
		rf := writeTestFile(t, f.dir, "rewritten.jsonl", rewritten)
		mustRun(t, nil, f.args("--file", rf)...)
		fails(t, f.args("--file", rf, "--pinned", f.file), "chain broken at seq 3 (pinned)")
		// A log cut before a kept checkpoint.
		short := writeTestFile(t, f.dir, "short.jsonl", buildExport(t, 4, f.cps[:1], nil))
		fails(t, f.args("--file", short, "--pinned", f.file), "chain broken at seq 5 (truncated)")
		// A pinned file without checkpoints is refused.
		none := writeTestFile(t, f.dir, "none.jsonl", buildExport(t, 2, nil, nil))
		fails(t, f.args("--file", f.file, "--pinned", none), "holds no checkpoint")
	})

	t.Run("pruned", func(t *testing.T) {
		// The export of a log pruned up to the checkpoint at 3: its marker,
		// then entries 4.. and the checkpoint at 5.
		var buf bytes.Buffer
		w := audit.NewWriter(&buf)
		rd := audit.NewReader(bytes.NewReader(f.export))
		for {
			it, err := rd.Next()
			if err != nil {
				break
			}
			switch {
			case it.Checkpoint != nil && it.Checkpoint.GetSeq() == 3:
				m, err := audit.NewPruneMarker(it.Checkpoint)
				if err != nil {
					t.Fatal(err)
				}
				err = w.WriteMarker(m)
				if err != nil {
					t.Fatal(err)
				}
			case it.Entry != nil && it.Entry.GetSeq() <= 3:
			default:
				if err := w.Write(it); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		pruned := writeTestFile(t, f.dir, "pruned.jsonl", buf.Bytes())
		// Kept checkpoints at 1, 3 and 5: the one at 1 predates the marker.
		kept := writeTestFile(t, f.dir, "kept.jsonl", buildExport(t, 6, append([]testCheckpoint{{1, "n1", testAuditKey(1)}}, f.cps...), nil))
		out := mustRun(t, nil, f.args("--file", pruned, "--pinned", kept)...)
		for _, want := range []string{"3 (seq 4..6)", "entries before seq 4, replaced by a signed marker", "2, covering up to seq 5",
			"2 kept checkpoint(s) reproduced; 1 predate the prune marker"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("unreadable", func(t *testing.T) {
		bad := writeTestFile(t, f.dir, "bad.jsonl", append(append([]byte{}, f.export...), "not json\n"...))
		fails(t, f.args("--file", bad), "cannot be read")
		fails(t, f.args("--file", filepath.Join(f.dir, "missing.jsonl")), "no such file")
		fails(t, []string{"audit", "verify", "--file", f.file, "--trusted-key", f.file}, "trusted keys")
	})
}

func mustPKIX(t *testing.T, key ed25519.PrivateKey) []byte {
	t.Helper()
	tk, err := audit.NewTrustedKeys(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return tk.PKIX()[0]
}

// mustAuditDataDir writes a node data directory whose state holds entries
// 1..n, applied through the state machine, with a checkpoint at cpAt signed
// by key.
func mustAuditDataDir(t *testing.T, n, cpAt uint64, key ed25519.PrivateKey) string {
	t.Helper()
	dataDir := t.TempDir()
	f, err := fsm.Open(fsm.DefaultConfig(filepath.Join(dataDir, "state")))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	index := uint64(0)
	propose := func(data []byte) {
		t.Helper()
		index++
		res, ok := f.Apply(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: data}).(fsm.Result)
		if !ok || res.Err != nil {
			t.Fatalf("apply at %d: %v", index, res.Err)
		}
	}
	batch := func(from, to uint64) {
		t.Helper()
		c := &cofferv1.AuditBatchCommand{}
		for seq := from; seq <= to; seq++ {
			c.Entries = append(c.Entries, testEntry(seq, nil))
		}
		data, err := fsm.Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, c)
		if err != nil {
			t.Fatal(err)
		}
		propose(data)
	}
	batch(1, cpAt)
	seq, head, err := f.AuditHead()
	if err != nil || seq != cpAt {
		t.Fatalf("AuditHead = %d, %v", seq, err)
	}
	cp := &cofferv1.AuditCheckpoint{Seq: seq, Head: head, TimeUnixNano: 1, Signer: "n1"}
	if err := audit.Sign(cp, key); err != nil {
		t.Fatal(err)
	}
	data, err := fsm.Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_CHECKPOINT, &cofferv1.AuditCheckpointCommand{Checkpoint: cp})
	if err != nil {
		t.Fatal(err)
	}
	propose(data)
	if n > cpAt {
		batch(cpAt+1, n)
	}
	return dataDir
}

func TestCLI_AuditVerifyDataDir(t *testing.T) {
	keyDir := t.TempDir()
	key := writeTrustedKey(t, keyDir, "n1.pub", testAuditKey(1))
	dataDir := mustAuditDataDir(t, 7, 5, testAuditKey(1))

	out := mustRun(t, nil, "audit", "verify", "--data-dir", dataDir, "--trusted-key", key)
	for _, want := range []string{"data directory " + dataDir, "7 (seq 1..7)", "1, covering up to seq 5", "2 entries after seq 5"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	code, _, stderr := runCLI(t, nil, "audit", "verify", "--strict", "--data-dir", dataDir, "--trusted-key", key)
	if code != exitFailure || !strings.Contains(stderr, "chain broken at seq 6 (uncovered-tail)") {
		t.Fatalf("--strict: exit %d, stderr %q", code, stderr)
	}
	other := writeTrustedKey(t, keyDir, "other.pub", testAuditKey(9))
	code, _, stderr = runCLI(t, nil, "audit", "verify", "--data-dir", dataDir, "--trusted-key", other)
	if code != exitFailure || !strings.Contains(stderr, "chain broken at seq 5 (untrusted-key)") {
		t.Fatalf("untrusted key: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runCLI(t, nil, "audit", "verify", "--data-dir", keyDir, "--trusted-key", key)
	if code != exitFailure || !strings.Contains(stderr, "no state store") {
		t.Fatalf("not a data directory: exit %d, stderr %q", code, stderr)
	}
}

// auditLog is an in-memory AuditService over a linked, signed chain.
type auditLog struct {
	cofferv1.UnimplementedAuditServiceServer

	key ed25519.PrivateKey

	mu      sync.Mutex
	entries []*cofferv1.AuditEntry
	cps     map[uint64]*cofferv1.AuditCheckpoint
	queries []*cofferv1.AuditQueryRequest
	prunes  []uint64
	// streaming makes Follow work (else it is Unimplemented, as on an old
	// node); dropOnce ends the first stream after its first message, as a
	// failing node would; follows records each stream's after_seq.
	streaming, dropOnce bool
	// downAfterDrop makes every stream after the dropped one fail with
	// "no leader", as a cluster that lost its leader for good; down is set
	// once that has begun.
	downAfterDrop, down bool
	follows             []uint64
	pruneReqs           []*cofferv1.AuditPruneRequest
	// oldQuery answers queries as a node older than newest: it ignores it.
	oldQuery   bool
	followReqs []*cofferv1.AuditFollowRequest
}

// Follow sends the entries after after_seq, then new ones as add appends
// them, until the caller goes away.
func (l *auditLog) Follow(req *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer) error {
	l.mu.Lock()
	if !l.streaming {
		l.mu.Unlock()
		return status.Error(codes.Unimplemented, "unknown method Follow")
	}
	if l.down {
		l.mu.Unlock()
		return status.Error(codes.Unavailable, "no leader")
	}
	after := req.GetAfterSeq()
	if req.GetFromNewest() {
		after = uint64(len(l.entries))
		if newest := l.newest(int(req.GetNewest()), req); len(newest) > 0 {
			after = newest[0].GetSeq() - 1
		}
	}
	l.follows = append(l.follows, after)
	l.followReqs = append(l.followReqs, req)
	l.mu.Unlock()
	for {
		l.mu.Lock()
		var out []*cofferv1.AuditEntry
		for _, e := range l.entries {
			if e.GetSeq() > after && matches(e, req) {
				out = append(out, e)
			}
		}
		if n := len(l.entries); n > 0 && len(out) == 0 {
			after = max(after, uint64(n)) // scanned, none matched
		}
		drop := l.dropOnce && len(out) > 0
		if drop {
			l.dropOnce = false
			l.down = l.downAfterDrop
		}
		head := uint64(len(l.entries))
		l.mu.Unlock()
		if len(out) > 0 {
			if err := stream.Send(&cofferv1.AuditFollowResponse{Entries: out, HeadSeq: head}); err != nil {
				return err
			}
			after = out[len(out)-1].GetSeq()
		}
		if drop {
			return status.Error(codes.Unavailable, "node stopping")
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// add appends entries up to seq n, signing a checkpoint after every entry
// whose seq is in cpAt.
func (l *auditLog) add(n uint64, cpAt ...uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := audit.GenesisHash()
	if len(l.entries) > 0 {
		prev = l.entries[len(l.entries)-1].GetHash()
	}
	for seq := uint64(len(l.entries)) + 1; seq <= n; seq++ {
		e := testEntry(seq, nil)
		audit.Link(prev, seq, e)
		prev = e.GetHash()
		l.entries = append(l.entries, e)
		for _, c := range cpAt {
			if c == seq {
				cp := &cofferv1.AuditCheckpoint{Seq: seq, Head: e.GetHash(), TimeUnixNano: e.GetTimeUnixNano(), Signer: "n1"}
				if err := audit.Sign(cp, l.key); err != nil {
					panic(err)
				}
				l.cps[seq] = cp
			}
		}
	}
}

// matches applies a query's or a follow's filters to e.
func matches(e *cofferv1.AuditEntry, req interface {
	GetCaller() string
	GetOutcome() string
	GetOperation() string
	GetGkid() string
}) bool {
	return (req.GetCaller() == "" || e.GetCaller() == req.GetCaller()) &&
		(req.GetOutcome() == "" || outcomeName(e.GetOutcome()) == req.GetOutcome()) &&
		(req.GetOperation() == "" || e.GetOperation() == req.GetOperation()) &&
		(req.GetGkid() == "" || e.GetGkid() == req.GetGkid())
}

// Query follows fsm.AuditEntries: entries after after_seq matching the
// filters, at most limit, and the last seq scanned.
func (l *auditLog) Query(_ context.Context, req *cofferv1.AuditQueryRequest) (*cofferv1.AuditQueryResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.queries = append(l.queries, req)
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 100
	}
	if limit > maxAuditPage {
		return nil, status.Error(codes.InvalidArgument, "limit must be at most 1000")
	}
	if n := req.GetNewest(); n > 0 && !l.oldQuery {
		head := uint64(len(l.entries))
		return &cofferv1.AuditQueryResponse{Entries: l.newest(int(n), req), LastSeq: head, HeadSeq: head}, nil
	}
	resp := &cofferv1.AuditQueryResponse{LastSeq: req.GetAfterSeq(), HeadSeq: uint64(len(l.entries))}
	for _, e := range l.entries {
		if e.GetSeq() <= req.GetAfterSeq() {
			continue
		}
		resp.LastSeq = e.GetSeq()
		if matches(e, req) {
			resp.Entries = append(resp.Entries, e)
		}
		if len(resp.Entries) >= limit {
			break
		}
	}
	return resp, nil
}

// newest returns the newest n entries that match req, in seq order, as
// fsm.NewestAuditEntries does. Call with l.mu held.
func (l *auditLog) newest(n int, req interface {
	GetCaller() string
	GetOutcome() string
	GetOperation() string
	GetGkid() string
}) []*cofferv1.AuditEntry {
	var out []*cofferv1.AuditEntry
	for i := len(l.entries) - 1; i >= 0 && len(out) < n; i-- {
		if matches(l.entries[i], req) {
			out = append(out, l.entries[i])
		}
	}
	slices.Reverse(out)
	return out
}

type chunkSender struct {
	stream cofferv1.AuditService_ExportServer
}

func (c chunkSender) Write(p []byte) (int, error) {
	if err := c.stream.Send(&cofferv1.AuditExportChunk{Data: append([]byte(nil), p...)}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (l *auditLog) Export(req *cofferv1.AuditExportRequest, stream cofferv1.AuditService_ExportServer) error {
	l.mu.Lock()
	entries, cps := l.entries, l.cps
	l.mu.Unlock()
	w := audit.NewWriter(chunkSender{stream})
	for _, e := range entries {
		if e.GetSeq() <= req.GetAfterSeq() {
			continue
		}
		if err := w.WriteEntry(e); err != nil {
			return err
		}
		if cp, ok := cps[e.GetSeq()]; ok {
			if err := w.WriteCheckpoint(cp); err != nil {
				return err
			}
		}
	}
	return w.Flush()
}

func (l *auditLog) Prune(_ context.Context, req *cofferv1.AuditPruneRequest) (*cofferv1.AuditPruneResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prunes = append(l.prunes, req.GetUpToSeq())
	l.pruneReqs = append(l.pruneReqs, req)
	upTo := req.GetUpToSeq()
	if req.GetBefore() != nil {
		// As fsm.CheckpointBefore: oldest first, up to the first signed at
		// or after the time.
		seqs := slices.Sorted(maps.Keys(l.cps))
		for _, seq := range seqs {
			if l.cps[seq].GetTimeUnixNano() >= req.GetBefore().AsTime().UnixNano() {
				break
			}
			upTo = seq
		}
		if upTo == 0 {
			return &cofferv1.AuditPruneResponse{}, nil
		}
	}
	for seq := upTo; seq > 0; seq-- {
		if cp, ok := l.cps[seq]; ok {
			m, err := audit.NewPruneMarker(cp)
			if err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
			return &cofferv1.AuditPruneResponse{Marker: m, Pruned: m.GetFirstSeq() - 1}, nil
		}
	}
	return nil, status.Errorf(codes.FailedPrecondition, "no checkpoint at or below %d", upTo)
}

func (l *auditLog) lastQuery() *cofferv1.AuditQueryRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.queries[len(l.queries)-1]
}

// mustAuditNode starts an auditLog of n entries (checkpoints at cpAt) over
// mTLS and returns it with the environment that reaches it.
func mustAuditNode(t *testing.T, n uint64, cpAt ...uint64) (*auditLog, envMap) {
	t.Helper()
	pki := newTestPKI(t, "audit-test-ca")
	caFile, issue := pki.caFile, pki.issue
	serverTLS, err := issue(transport.Identity{Kind: transport.KindNode, Name: "n1"}).ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &auditLog{key: testAuditKey(1), cps: map[uint64]*cofferv1.AuditCheckpoint{}}
	l.add(n, cpAt...)
	gs := grpc.NewServer(transport.ServerOptions(serverTLS, transport.DefaultGRPCLimits())...)
	cofferv1.RegisterAuditServiceServer(gs, l)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cli := issue(transport.Identity{Kind: transport.KindClient, Name: "cli"})
	return l, envMap{envAddr: lis.Addr().String(), envCA: caFile, envCert: cli.CertFile, envKey: cli.KeyFile}
}

// tableSeqs returns the SEQ column of an audit table, header excluded.
func tableSeqs(t *testing.T, out string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "SEQ ") {
		t.Fatalf("no table header:\n%s", out)
	}
	var seqs []string
	for _, l := range lines[1:] {
		if l == "SEQ" || strings.HasPrefix(l, "SEQ ") {
			continue
		}
		seqs = append(seqs, strings.Fields(l)[0])
	}
	return seqs
}

func TestCLI_AuditQuery(t *testing.T) {
	l, env := mustAuditNode(t, 10, 5)

	code, out, stderr := runCLI(t, env, "audit", "query", "--limit", "4")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if got := strings.Join(tableSeqs(t, out), ","); got != "1,2,3,4" {
		t.Fatalf("seqs %s, want 1,2,3,4:\n%s", got, out)
	}
	header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	if strings.Join(header, " ") != "SEQ TIME NODE CALLER OP OUTCOME TARGET REASON" {
		t.Fatalf("header %q", header)
	}
	if !strings.Contains(out, "2024-05-01T12:00:03.000Z  n1    client:ops  get  denied   k3      no grant for get on payments/db") {
		t.Errorf("row 3 not as expected:\n%s", out)
	}
	if !strings.Contains(stderr, "run again with --after 4") {
		t.Errorf("stderr %q, want the next --after", stderr)
	}

	// Filters reach the server; the page ends early at the limit.
	code, out, stderr = runCLI(t, env, "audit", "query", "--client", "ops", "--outcome", "Denied", "--op", "get",
		"--gkid", "k6", "--after", "2", "--since", "2024-05-01T00:00:00Z", "--until", "1h")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	req := l.lastQuery()
	if req.GetCaller() != "client:ops" || req.GetOutcome() != "denied" || req.GetOperation() != "get" || req.GetGkid() != "k6" ||
		req.GetAfterSeq() != 2 || !req.GetSince().AsTime().Equal(time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)) ||
		time.Since(req.GetUntil().AsTime().Add(time.Hour)) > time.Minute {
		t.Fatalf("request %v", req)
	}
	if got := strings.Join(tableSeqs(t, out), ","); got != "6" {
		t.Fatalf("seqs %s, want 6", got)
	}
	if !strings.Contains(stderr, "no more entries: later ones will follow --after 10") {
		t.Errorf("stderr %q", stderr)
	}
	mustRun(t, env, "audit", "query", "--caller", "node:n1")
	if l.lastQuery().GetCaller() != "node:n1" {
		t.Fatalf("caller %q", l.lastQuery().GetCaller())
	}

	// --all follows pages to the head.
	before := len(l.queries)
	code, out, stderr = runCLI(t, env, "audit", "query", "--all", "--limit", "3")
	if code != exitOK || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if got := strings.Join(tableSeqs(t, out), ","); got != "1,2,3,4,5,6,7,8,9,10" {
		t.Fatalf("--all seqs %s", got)
	}
	if n := len(l.queries) - before; n != 4 {
		t.Fatalf("--all made %d queries, want 4", n)
	}

	// JSON: the AuditQueryResponse shape, also when following pages.
	for _, tc := range []struct {
		args      []string
		first     uint64
		n         int
		lastSeq   uint64
		wantPages int
	}{
		{[]string{"--limit", "2", "--after", "3"}, 4, 2, 5, 1},
		{[]string{"--all", "--limit", "3", "--after", "3"}, 4, 7, 10, 3},
	} {
		before := len(l.queries)
		out = mustRun(t, env, append([]string{"-o", "json", "audit", "query"}, tc.args...)...)
		var resp cofferv1.AuditQueryResponse
		if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatalf("%v: output is not an AuditQueryResponse: %v\n%s", tc.args, err, out)
		}
		e := resp.GetEntries()
		if len(e) != tc.n || e[0].GetSeq() != tc.first || e[len(e)-1].GetSeq() != tc.first+uint64(tc.n)-1 ||
			resp.GetLastSeq() != tc.lastSeq || resp.GetHeadSeq() != 10 {
			t.Fatalf("%v: %v", tc.args, &resp)
		}
		if n := len(l.queries) - before; n != tc.wantPages {
			t.Fatalf("%v: %d queries, want %d", tc.args, n, tc.wantPages)
		}
	}
	out = mustRun(t, env, "-o", "json", "audit", "query", "--after", "10")
	if !strings.Contains(out, `"entries": []`) || !strings.Contains(out, `"last_seq": "10"`) {
		t.Fatalf("empty page JSON:\n%s", out)
	}
}

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

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCLI_AuditExportAndVerify(t *testing.T) {
	_, env := mustAuditNode(t, 9, 4, 8)
	dir := t.TempDir()
	key := writeTrustedKey(t, dir, "n1.pub", testAuditKey(1))

	// To standard output: exactly the export, verifiable offline.
	out := mustRun(t, env, "audit", "export")
	if n := strings.Count(out, "\n"); n != 11 {
		t.Fatalf("export has %d lines, want 9 entries and 2 checkpoints:\n%s", n, out)
	}
	stdoutFile := writeTestFile(t, dir, "stdout.jsonl", []byte(out))
	vout := mustRun(t, nil, "audit", "verify", "--file", stdoutFile, "--trusted-key", key)
	if !strings.Contains(vout, "9 (seq 1..9)") || !strings.Contains(vout, "2, covering up to seq 8") {
		t.Fatalf("verify:\n%s", vout)
	}

	// To a new private file, never over an existing one.
	path := filepath.Join(dir, "audit.jsonl")
	got := mustRun(t, env, "audit", "export", "--out", path)
	if !strings.Contains(got, "exported "+path) {
		t.Fatalf("output %q", got)
	}
	data, err := os.ReadFile(path)
	if err != nil || string(data) != out {
		t.Fatalf("file holds %q, %v; want the stdout export", data, err)
	}
	if m := fileMode(t, path); m != 0o600 {
		t.Fatalf("export file mode %v, want 0600", m)
	}
	code, _, stderr := runCLI(t, env, "audit", "export", "--out", path)
	if code != exitFailure || !strings.Contains(stderr, "already exists") {
		t.Fatalf("second export: exit %d, stderr %q", code, stderr)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".audit-export-") {
			t.Fatalf("temporary file %s left behind", e.Name())
		}
	}

	// --after and JSON output.
	path2 := filepath.Join(dir, "tail.jsonl")
	got = mustRun(t, env, "-o", "json", "audit", "export", "--after", "7", "--out", path2)
	var summary struct {
		File     string `json:"file"`
		Bytes    int64  `json:"bytes"`
		AfterSeq uint64 `json:"after_seq"`
	}
	if err := json.Unmarshal([]byte(got), &summary); err != nil || summary.File != path2 || summary.AfterSeq != 7 || summary.Bytes == 0 {
		t.Fatalf("JSON summary %q: %+v, %v", got, summary, err)
	}
	data, _ = os.ReadFile(path2)
	if !strings.HasPrefix(string(data), `{"type":"entry","seq":8,`) {
		t.Fatalf("--after 7 export starts %q", data)
	}

	// A server without the service: the error, and no file.
	code, _, stderr = runCLI(t, envMap{envAddr: "127.0.0.1:1", envCA: env[envCA], envCert: env[envCert], envKey: env[envKey], envTimeout: "2s"},
		"audit", "export", "--out", filepath.Join(dir, "never.jsonl"))
	if code != exitFailure || !strings.Contains(stderr, "Unavailable") {
		t.Fatalf("unreachable: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "never.jsonl")); !os.IsNotExist(err) {
		t.Fatalf("failed export left a file: %v", err)
	}
}

func TestCLI_AuditPrune(t *testing.T) {
	l, env := mustAuditNode(t, 9, 4, 8)
	out := mustRun(t, env, "audit", "prune", "--up-to", "7")
	for _, want := range []string{"pruned entries:      4", "first remaining seq: 5", "checkpoint seq:      4", "checkpoint signer:   n1"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out = mustRun(t, env, "-o", "json", "audit", "prune", "--up-to", "9")
	var resp cofferv1.AuditPruneResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil || resp.GetMarker().GetFirstSeq() != 9 {
		t.Fatalf("JSON %q: %v", out, err)
	}
	code, _, stderr := runCLI(t, env, "audit", "prune", "--up-to", "3")
	if code != exitFailure || !strings.Contains(stderr, "FailedPrecondition") {
		t.Fatalf("prune below every checkpoint: exit %d, stderr %q", code, stderr)
	}
	l.mu.Lock()
	if len(l.prunes) != 3 || l.prunes[0] != 7 {
		t.Fatalf("prunes %v", l.prunes)
	}
	l.mu.Unlock()

	// By age: entry n and its checkpoint are n seconds after 12:00.
	out = mustRun(t, env, "audit", "prune", "--before", "2024-05-01T12:00:06Z")
	if !strings.Contains(out, "first remaining seq: 5") {
		t.Fatalf("prune --before: %s", out)
	}
	l.mu.Lock()
	req := l.pruneReqs[len(l.pruneReqs)-1]
	l.mu.Unlock()
	if req.GetUpToSeq() != 0 || !req.GetBefore().AsTime().Equal(time.Date(2024, 5, 1, 12, 0, 6, 0, time.UTC)) {
		t.Fatalf("prune --before sent %v", req)
	}
	out = mustRun(t, env, "audit", "prune", "--before", "2000-01-01T00:00:00Z")
	if !strings.Contains(out, "nothing to prune") {
		t.Fatalf("prune --before 2000: %q", out)
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
