package node

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The WAN profile raises Raft's timeouts; fields given beside a profile
// override it; durations are strings.
func TestRaftTimings_Profiles(t *testing.T) {
	var r RaftTimings
	if err := json.Unmarshal([]byte(`{"profile":"wan","commit_timeout":"30ms"}`), &r); err != nil {
		t.Fatal(err)
	}
	if r.HeartbeatTimeout.Std() != 1500*time.Millisecond || r.CommitTimeout.Std() != 30*time.Millisecond || r.SnapshotThreshold != 16384 {
		t.Fatalf("wan with an override: %+v", r)
	}
	if err := json.Unmarshal([]byte(`{"heartbeat_timeout":"500ms"}`), &r); err != nil || r.HeartbeatTimeout.Std() != 500*time.Millisecond ||
		r.ElectionTimeout.Std() != 250*time.Millisecond {
		t.Fatalf("lan with an override: %+v %v", r, err)
	}
	for in, want := range map[string]string{
		`{"profile":"moon"}`:          "raft.profile",
		`{"heartbeat_timeout":250e6}`: `"250ms"`,
		`{"heartbeat":"1s"}`:          "unknown field",
	} {
		if err := json.Unmarshal([]byte(in), &r); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want an error naming %s", in, err, want)
		}
	}
	c := DefaultConfig()
	c.Raft = WANRaftTimings()
	b, err := json.Marshal(c.Raft)
	if err != nil || !strings.Contains(string(b), `"heartbeat_timeout":"1.5s"`) || !strings.Contains(string(b), `"profile":"wan"`) {
		t.Fatalf("marshal: %s %v", b, err)
	}
}
