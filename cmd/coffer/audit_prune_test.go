package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

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
