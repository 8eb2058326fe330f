package fsm

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func writeEntry(node string, at int64, requestID string) *cofferv1.AuditEntry {
	return &cofferv1.AuditEntry{TimeUnixNano: at, Node: node, Caller: "client:c0", Operation: "generate",
		RequestId: requestID, Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED}
}

func fallbackBatch(t *testing.T, entries ...*cofferv1.AuditEntry) []byte {
	t.Helper()
	c := &cofferv1.AuditBatchCommand{Entries: entries}
	for i := range entries {
		c.Fallback = append(c.Fallback, uint32(i))
	}
	d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, c)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func failed(e *cofferv1.AuditEntry) *cofferv1.AuditEntry {
	e.Outcome, e.Reason = cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, "Unavailable: leadership lost"
	return e
}

// A node that cannot tell whether its change committed records a fallback
// entry; Apply links it only if the change's own entry (or another
// fallback for the same request) was not linked before it, so the request
// has exactly one entry either way.
func TestFSM_FallbackEntries(t *testing.T) {
	f := mustOpen(t)
	setup := readSetup(t)
	f.ApplyBatch(logs(1, setup...))
	idx := uint64(len(setup) + 1)
	apply := func(d []byte) Result {
		t.Helper()
		r := f.Apply(logs(idx, d)[0]).(Result)
		idx++
		return r
	}
	count := func(requestID string) int {
		t.Helper()
		entries, _, err := f.AuditEntries(0, 1000, AuditFilter{})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range entries {
			if e.GetRequestId() == requestID {
				n++
			}
		}
		return n
	}
	at := time.Unix(5000, 0).UnixNano()

	// The change committed (its entry linked); the fallbacks from the
	// leader and from the accepting node are both dropped.
	create := createCommand(t, "k1-abcdefghij-00000000000000000000000042", "r1", writeEntry("n2", at, "r1"))
	if r := apply(create); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := apply(fallbackBatch(t, failed(writeEntry("n2", at, "r1")), failed(writeEntry("n2", at, "r1")))); r.Skipped != 2 {
		t.Fatalf("skipped %d fallbacks of a committed change, want 2", r.Skipped)
	}
	if n := count("r1"); n != 1 {
		t.Fatalf("request r1 has %d entries, want 1", n)
	}

	// The change never committed: the first fallback is its one entry.
	if r := apply(fallbackBatch(t, failed(writeEntry("n2", at+1, "r2")))); r.Skipped != 0 {
		t.Fatal("the only entry of a request was dropped")
	}
	if r := apply(fallbackBatch(t, failed(writeEntry("n3", at+1, "r2")), failed(writeEntry("n2", at+1, "r2")))); r.Skipped != 1 {
		t.Fatalf("skipped %d, want 1 (another node's entry is another request)", r.Skipped)
	}
	if n := count("r2"); n != 2 {
		t.Fatalf("request r2 (from n2 and n3) has %d entries, want 2", n)
	}

	// The same within one Raft batch.
	create3 := createCommand(t, "k1-abcdefghij-00000000000000000000000043", "r3", writeEntry("n2", at+2, "r3"))
	out := f.ApplyBatch(logs(idx, create3, fallbackBatch(t, failed(writeEntry("n2", at+2, "r3")))))
	idx += 2
	if r := out[1].(Result); r.Skipped != 1 {
		t.Fatalf("skipped %d fallbacks of a change in the same batch, want 1", r.Skipped)
	}

	// The accepting node gave up first: its fallback is linked, and the
	// change, committed after it, is refused without a second entry, so
	// the one entry (failed) is true.
	if r := apply(fallbackBatch(t, failed(writeEntry("n2", at+3, "r4")))); r.Skipped != 0 {
		t.Fatal("the only entry of a request was dropped")
	}
	gkid4 := "k1-abcdefghij-00000000000000000000000044"
	create4 := createCommand(t, gkid4, "r4", writeEntry("n2", at+3, "r4"))
	if r := apply(create4); !errors.Is(r.Err, ErrAbandoned) {
		t.Fatalf("a change committed after its request's fallback: err %v, want ErrAbandoned", r.Err)
	}
	if _, err := f.Key(gkid4); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the abandoned change was applied: %v", err)
	}
	if n := count("r4"); n != 1 {
		t.Fatalf("request r4 has %d entries, want 1", n)
	}
	// The same command committed twice changes nothing the second time.
	if r := apply(create); !errors.Is(r.Err, ErrAbandoned) {
		t.Fatalf("a repeated command: err %v, want ErrAbandoned", r.Err)
	}
	if n := count("r1"); n != 1 {
		t.Fatalf("request r1 has %d entries after its command repeated, want 1", n)
	}

	// A version 1 change, written by a build without that rule, is applied
	// as that build applied it, so replaying an old log gives the same
	// state.
	if r := apply(fallbackBatch(t, failed(writeEntry("n2", at+4, "r5")))); r.Skipped != 0 {
		t.Fatal("the only entry of a request was dropped")
	}
	gkid5 := "k1-abcdefghij-00000000000000000000000045"
	create5 := createCommand(t, gkid5, "r5", writeEntry("n2", at+4, "r5"))
	if v := commandOf(t, create5).GetVersion(); v != 3 {
		t.Fatalf("a change carrying its entry is version %d, want 3", v)
	}
	if r := apply(withVersion(t, create5, 1)); r.Err != nil {
		t.Fatalf("version 1 change after a fallback: %v, want applied", r.Err)
	}
	if _, err := f.Key(gkid5); err != nil {
		t.Fatalf("version 1 change after a fallback was not applied: %v", err)
	}

	// Commands proposed outside an audited request carry an empty entry,
	// which names no request: each is applied.
	for i, gk := range []string{"k1-abcdefghij-00000000000000000000000046", "k1-abcdefghij-00000000000000000000000047"} {
		d := createCommand(t, gk, "", &cofferv1.AuditEntry{})
		if r := apply(d); r.Err != nil {
			t.Fatalf("command %d with an empty entry: %v", i, r.Err)
		}
	}

	// Entries that are not fallbacks are always linked.
	plain, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, &cofferv1.AuditBatchCommand{
		Entries: []*cofferv1.AuditEntry{failed(writeEntry("n2", at, "r1"))}})
	if err != nil {
		t.Fatal(err)
	}
	apply(plain)
	if n := count("r1"); n != 2 {
		t.Fatalf("a plain entry was dropped: r1 has %d entries", n)
	}

	// A checkpoint an hour and more later forgets r1's change, so a
	// fallback that late is linked again.
	entries, _, err := f.AuditEntries(0, 1000, AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	last := entries[len(entries)-1]
	cp, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_CHECKPOINT, &cofferv1.AuditCheckpointCommand{Checkpoint: &cofferv1.AuditCheckpoint{
		Seq: last.GetSeq(), Head: last.GetHash(), TimeUnixNano: at + int64(2*time.Hour), Signer: "n1",
		Signature: []byte("signature"), PublicKey: []byte("public key")}})
	if err != nil {
		t.Fatal(err)
	}
	if r := apply(cp); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := apply(fallbackBatch(t, failed(writeEntry("n2", at, "r1")))); r.Skipped != 0 {
		t.Fatal("a change older than the retention is still remembered")
	}
}

func commandOf(t *testing.T, d []byte) *cofferv1.Command {
	t.Helper()
	var cmd cofferv1.Command
	if err := proto.Unmarshal(d, &cmd); err != nil {
		t.Fatal(err)
	}
	return &cmd
}

// withVersion re-encodes a command as an older build would have written it.
func withVersion(t *testing.T, d []byte, v uint32) []byte {
	t.Helper()
	cmd := commandOf(t, d)
	cmd.Version = v
	out, err := proto.MarshalOptions{Deterministic: true}.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func createCommand(t *testing.T, gkid, requestID string, e *cofferv1.AuditEntry) []byte {
	t.Helper()
	d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{
		Key: keyRec(gkid, "default", "res/9"), RequestId: requestID, Audit: e})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// An abandoned change is counted under its own outcome in
// coffer_fsm_commands_total, not as an unnamed error.
func TestErrorLabelNamesAbandoned(t *testing.T) {
	err := fmt.Errorf("%w (request %q)", ErrAbandoned, "r1")
	if got := errorLabel(err); got != ErrAbandoned.Error() {
		t.Fatalf("label %q, want %q", got, ErrAbandoned.Error())
	}
}
