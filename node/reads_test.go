package node

import (
	"log/slog"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// A read refused in Apply must reach the caller, and the log, with the same
// words as one this node refuses itself: the entry Apply writes and the
// error the caller gets are built in two places.
func TestReadRefusalMatchesApplyReason(t *testing.T) {
	n := &Node{logger: slog.New(slog.DiscardHandler)}
	for r := range cofferv1.ReadRefusal_name {
		refusal := cofferv1.ReadRefusal(r)
		if refusal == cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED {
			continue
		}
		err := n.readRefusal(authz.OpGet, "k", fsm.ReadResult{Refusal: refusal, Detail: "some detail"})
		if err == nil {
			t.Fatalf("%v: no error", refusal)
		}
		e := &cofferv1.AuditEntry{}
		setOutcome(e, err)
		if want := fsm.RefusalReason(refusal, "some detail"); e.GetReason() != want {
			t.Errorf("%v: the node records %q, Apply records %q", refusal, e.GetReason(), want)
		}
	}
}
