package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

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
