package node

import (
	"strings"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// Repeats of one refusal within the window are counted, not queued one by
// one; closing the window queues one entry that says how many there were.
// Other kinds of refusal are recorded on their own.
func TestRefusalAuditor_CountsRepeats(t *testing.T) {
	r := &sideAuditor{seen: map[refusalKey]*refusalCount{}, wake: make(chan struct{}, 1)}
	entry := func(reason string) *cofferv1.AuditEntry {
		return &cofferv1.AuditEntry{Caller: "node:n9", Operation: string(doorRaft), Reason: reason,
			Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED}
	}
	k := refusalKey{caller: "node:n9", door: doorRaft, cause: "not a member"}
	if !r.add(entry("first"), k) {
		t.Fatal("the first refusal of a kind was not recorded")
	}
	for range 41 {
		if r.add(entry("again"), k) {
			t.Fatal("a repeat within the window was recorded on its own")
		}
	}
	other := refusalKey{caller: "node:n9", door: doorForward, cause: "not a member"}
	if !r.add(entry("other door"), other) {
		t.Fatal("another kind of refusal was not recorded")
	}
	if len(r.q) != 2 {
		t.Fatalf("queued %d entries, want 2", len(r.q))
	}
	r.closeWindows(time.Now().Add(refusalWindow / 2))
	if len(r.q) != 2 {
		t.Fatalf("a window closed early: %d entries", len(r.q))
	}
	r.closeWindows(time.Now().Add(refusalWindow + time.Second))
	if len(r.q) != 3 || !strings.Contains(r.q[2].GetReason(), "refused 41 more times like this") || !strings.HasSuffix(r.q[2].GetReason(), ": first") {
		t.Fatalf("after the window: %d entries, last %q", len(r.q), r.q[len(r.q)-1].GetReason())
	}
	if len(r.seen) != 0 {
		t.Fatalf("closed windows still remembered: %v", r.seen)
	}
	// After the window, the kind is recorded afresh.
	if !r.add(entry("later"), k) {
		t.Fatal("a refusal after the window was not recorded")
	}
}
