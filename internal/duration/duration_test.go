package duration

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestDuration_JSON(t *testing.T) {
	var v struct {
		D Duration `json:"d"`
	}
	if err := json.Unmarshal([]byte(`{"d":"250ms"}`), &v); err != nil || v.D.Std() != 250*time.Millisecond {
		t.Fatalf("250ms: %v %v", v.D, err)
	}
	b, err := json.Marshal(v)
	if err != nil || string(b) != `{"d":"250ms"}` {
		t.Fatalf("marshal: %s %v", b, err)
	}
	if err := json.Unmarshal([]byte(`{"d":250000000}`), &v); err == nil || !strings.Contains(err.Error(), `"250ms"`) {
		t.Fatalf("a number: %v", err)
	}
	if err := json.Unmarshal([]byte(`{"d":"soon"}`), &v); err == nil {
		t.Fatal("accepted a malformed duration")
	}
}
