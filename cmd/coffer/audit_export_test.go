package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
