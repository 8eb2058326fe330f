package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/fsm"
)

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
