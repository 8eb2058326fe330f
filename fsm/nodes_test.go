package fsm

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func pinCmd(t *testing.T, id string, fp byte, onlyIfAbsent bool) []byte {
	t.Helper()
	data, err := Encode(cofferv1.CommandType_COMMAND_TYPE_PIN_NODE, &cofferv1.PinNodeCommand{
		Node: &cofferv1.NodeRecord{Id: id, CertSha256: bytes.Repeat([]byte{fp}, 32), CertSerial: "ab"}, OnlyIfAbsent: onlyIfAbsent})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// A member's first admission pins its certificate; a later admission keeps
// it; an explicit pin replaces it; a malformed pin changes nothing; the
// pins survive a snapshot.
func TestFSM_PinNode(t *testing.T) {
	f := mustOpen(t)
	bad, err := Encode(cofferv1.CommandType_COMMAND_TYPE_PIN_NODE, &cofferv1.PinNodeCommand{Node: &cofferv1.NodeRecord{Id: "n3", CertSha256: []byte{1}}})
	if err != nil {
		t.Fatal(err)
	}
	res := f.ApplyBatch(logs(1, pinCmd(t, "n1", 1, true), pinCmd(t, "n1", 2, true), pinCmd(t, "n2", 3, true), pinCmd(t, "n2", 4, false), bad))
	want := []byte{1, 1, 3, 4}
	for i, w := range want {
		r := res[i].(Result)
		if r.Err != nil || r.Node.GetCertSha256()[0] != w {
			t.Fatalf("command %d: %+v; want pin %d", i, r, w)
		}
	}
	if r := res[1].(Result); !r.Duplicate {
		t.Fatal("a second admission was not reported as keeping the first pin")
	}
	if r := res[4].(Result); !errors.Is(r.Err, ErrInvalidCommand) {
		t.Fatalf("malformed pin: %v; want ErrInvalidCommand", r.Err)
	}
	pins := f.NodePins()
	if len(pins) != 2 || pins["n1"].GetCertSha256()[0] != 1 || pins["n2"].GetCertSha256()[0] != 4 {
		t.Fatalf("pins = %v", pins)
	}
	if _, err := f.NodeRecord("n3"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("malformed pin stored: %v", err)
	}

	g := mustOpen(t)
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f).Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got := g.NodePins(); len(got) != 2 || got["n2"].GetCertSha256()[0] != 4 {
		t.Fatalf("restored pins = %v", got)
	}
}

// Pins whose integrity tag does not verify are left out of the view, so
// the member counts as not admitted.
func TestFSM_PinNodeVerified(t *testing.T) {
	cfg := DefaultConfig(t.TempDir())
	cfg.VerifyRecord = func(path []byte, _ proto.Message, _ *cofferv1.ClusterInfo) error {
		if string(path) == "n/n2" {
			return errors.New("tag mismatch")
		}
		return nil
	}
	f, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	initCmd, err := Encode(cofferv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &cofferv1.InitClusterCommand{
		Info: &cofferv1.ClusterInfo{ClusterId: "abcdefghij", CreatedUnixNano: 1}, DefaultPolicy: policy("default")})
	if err != nil {
		t.Fatal(err)
	}
	f.ApplyBatch(logs(1, initCmd, pinCmd(t, "n1", 1, true), pinCmd(t, "n2", 2, true)))
	if pins := f.NodePins(); len(pins) != 1 || pins["n1"] == nil {
		t.Fatalf("pins = %v; want only n1", pins)
	}
}
