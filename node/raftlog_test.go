package node

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/coffer-kms/coffer/internal/testenv"
)

// TestNode_RaftLogsThroughSlog checks that Raft's own log lines reach the
// node's slog logger with the node's id, as component=raft, and only from
// Warn up: a restarted single-node cluster must call an election (a Raft
// warning), and Raft's Info lines (entering follower state) stay out.
func TestNode_RaftLogsThroughSlog(t *testing.T) {
	tc := mustCluster(t, 1, nil)
	tc.stop(0)
	var buf testenv.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n, err := New(tc.cfgs[0], mustSoftwareKeystore(t, tc.masterKey), logger)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[0] = n
	tc.waitLeader()

	id := tc.cfgs[0].ID
	var election bool
	for _, line := range strings.Split(buf.String(), "\n") {
		if !strings.Contains(line, "component=raft") {
			continue
		}
		if !strings.Contains(line, "node="+id) {
			t.Errorf("raft line without node=%s: %s", id, line)
		}
		if strings.Contains(line, "entering follower state") || !strings.Contains(line, "level=WARN") && !strings.Contains(line, "level=ERROR") {
			t.Errorf("raft line below Warn: %s", line)
		}
		if strings.Contains(line, "starting election") {
			election = true
		}
	}
	if !election {
		t.Fatalf("no raft election warning with node=%s in the node's log:\n%s", id, buf.String())
	}
}
