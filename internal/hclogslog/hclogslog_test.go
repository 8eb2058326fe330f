package hclogslog

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// records decodes the JSON lines a handler wrote.
func records(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		out = append(out, m)
	}
	buf.Reset()
	return out
}

func mustLogger(t *testing.T, handlerLevel slog.Level, level hclog.Level) (*Logger, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	sl := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: handlerLevel})).With("node", "n1")
	return New(sl, "raft", level), &buf
}

func TestLogger_Levels(t *testing.T) {
	l, buf := mustLogger(t, slog.LevelDebug-4, hclog.Trace)
	l.Trace("t")
	l.Debug("d")
	l.Info("i")
	l.Warn("w")
	l.Error("e")
	l.Log(hclog.NoLevel, "n")
	l.Log(hclog.Off, "off")
	want := []struct{ msg, level string }{{"t", "DEBUG-4"}, {"d", "DEBUG"}, {"i", "INFO"}, {"w", "WARN"}, {"e", "ERROR"}, {"n", "INFO"}}
	got := records(t, buf)
	if len(got) != len(want) {
		t.Fatalf("got %d records, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i]["msg"] != w.msg || got[i]["level"] != w.level || got[i]["node"] != "n1" || got[i][NameKey] != "raft" {
			t.Errorf("record %d = %v, want msg %q level %s node n1 component raft", i, got[i], w.msg, w.level)
		}
	}
}

func TestLogger_Filters(t *testing.T) {
	// The adapter's level drops what is below it.
	l, buf := mustLogger(t, slog.LevelDebug-4, hclog.Warn)
	l.Info("dropped")
	l.Warn("kept")
	if got := records(t, buf); len(got) != 1 || got[0]["msg"] != "kept" {
		t.Fatalf("at Warn: %v", got)
	}
	if l.IsInfo() || !l.IsWarn() || !l.IsError() {
		t.Errorf("IsInfo %v IsWarn %v IsError %v at Warn", l.IsInfo(), l.IsWarn(), l.IsError())
	}
	// So does the handler's.
	l, buf = mustLogger(t, slog.LevelError, hclog.Trace)
	l.Warn("dropped")
	if l.IsWarn() || !l.IsError() {
		t.Errorf("IsWarn %v IsError %v under an Error handler", l.IsWarn(), l.IsError())
	}
	if got := records(t, buf); len(got) != 0 {
		t.Fatalf("under an Error handler: %v", got)
	}
	// SetLevel reaches derived loggers both ways.
	l, buf = mustLogger(t, slog.LevelDebug, hclog.Info)
	sub := l.Named("autopilot").With("k", "v")
	sub.SetLevel(hclog.Error)
	l.Warn("dropped")
	sub.Warn("dropped")
	if got := records(t, buf); len(got) != 0 || l.GetLevel() != hclog.Error {
		t.Fatalf("after SetLevel(Error): level %v, %v", l.GetLevel(), got)
	}
	l.SetLevel(hclog.Off)
	l.Error("dropped")
	if got := records(t, buf); len(got) != 0 {
		t.Fatalf("at Off: %v", got)
	}
}

func TestLogger_NamesAndArgs(t *testing.T) {
	l, buf := mustLogger(t, slog.LevelDebug, hclog.Debug)
	ap := l.Named("autopilot").With("server", "s1")
	ap.Info("hello", "n", 3, "f", hclog.Fmt("%d-%s", 7, "x"), "h", hclog.Hex(255), "q", hclog.Quote("a b"), 42, "k", "lone")
	l.ResetNamed("other").Info("reset")
	got := records(t, buf)
	if len(got) != 2 {
		t.Fatalf("records: %v", got)
	}
	r := got[0]
	for k, want := range map[string]any{NameKey: "raft.autopilot", "node": "n1", "server": "s1", "n": float64(3), "f": "7-x",
		"h": "0xff", "q": `"a b"`, "42": "k", hclog.MissingKey: "lone"} {
		if r[k] != want {
			t.Errorf("%s = %v, want %v (record %v)", k, r[k], want, r)
		}
	}
	if ap.Name() != "raft.autopilot" || got[1][NameKey] != "other" {
		t.Errorf("names: %q, %v", ap.Name(), got[1][NameKey])
	}
	if ia := ap.ImpliedArgs(); len(ia) != 2 || ia[0] != "server" || ia[1] != "s1" {
		t.Errorf("ImpliedArgs = %v", ia)
	}
}

func TestLogger_StandardLogger(t *testing.T) {
	l, buf := mustLogger(t, slog.LevelDebug, hclog.Debug)
	std := l.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	std.Print("[WARN] raft: careful")
	std.Print("[ERR] bad")
	std.Print("plain")
	l.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}).Print("forced")
	got := records(t, buf)
	want := []struct{ msg, level string }{{"raft: careful", "WARN"}, {"bad", "ERROR"}, {"plain", "INFO"}, {"forced", "ERROR"}}
	if len(got) != len(want) {
		t.Fatalf("records: %v", got)
	}
	for i, w := range want {
		if got[i]["msg"] != w.msg || got[i]["level"] != w.level {
			t.Errorf("record %d = %v, want %q at %s", i, got[i], w.msg, w.level)
		}
	}
}

func TestLogger_Source(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{AddSource: true})), "raft", hclog.Info)
	l.Warn("here")
	l.Log(hclog.Warn, "here too")
	for _, r := range records(t, &buf) {
		src, _ := r["source"].(map[string]any)
		if f, _ := src["file"].(string); !strings.HasSuffix(f, "hclogslog_test.go") {
			t.Errorf("source of %q = %v, want this test file", r["msg"], src)
		}
	}
}

func TestNew_NilDiscards(t *testing.T) {
	l := New(nil, "raft", hclog.Trace)
	l.Error("nowhere")
	if l.IsError() {
		t.Error("a nil slog logger reports Error enabled")
	}
}
