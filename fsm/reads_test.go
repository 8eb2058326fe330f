package fsm

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

const (
	readK1 = "k1-abcdefghij-00000000000000000000000001"
	readK2 = "k1-abcdefghij-00000000000000000000000002"
	readK3 = "k1-abcdefghij-00000000000000000000000003"
	readK4 = "k1-abcdefghij-00000000000000000000000004"
)

// readSetup returns the commands of a small state: client c0 (group g),
// rule r0 granting get and describe on res/**, and keys k1 (res/1), k2
// (expired), k3 (use policy allows describe only), k4 (elsewhere: other/1).
func readSetup(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	for _, c := range readSetupCommands() {
		d, err := Encode(c.t, c.m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

type setupCommand struct {
	t cofferv1.CommandType
	m proto.Message
}

func readSetupCommands() []setupCommand {
	k2, k3 := keyRec(readK2, "default", "res/2"), keyRec(readK3, "default", "res/3")
	k2.UsePolicy = &cofferv1.KeyUsePolicy{NotAfter: timestamppb.New(time.Unix(1000, 0))}
	k3.UsePolicy = &cofferv1.KeyUsePolicy{Operations: []string{"describe"}}
	return []setupCommand{
		{cofferv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &cofferv1.InitClusterCommand{
			Info: &cofferv1.ClusterInfo{ClusterId: "abcdefghij", CreatedUnixNano: 1}, DefaultPolicy: policy("default")}},
		{cofferv1.CommandType_COMMAND_TYPE_PUT_CLIENT, &cofferv1.PutClientCommand{
			Client: &cofferv1.ClientRecord{Name: "c0", Active: true, Groups: []string{"g"}, Revision: 1}}},
		{cofferv1.CommandType_COMMAND_TYPE_PUT_ACL_RULE, &cofferv1.PutAclRuleCommand{
			Rule: &cofferv1.AclRule{Id: "r0", Subject: "group:g", Operations: []string{"get", "describe"}, ResourcePattern: "res/**"}}},
		{cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{Key: keyRec(readK1, "default", "res/1")}},
		{cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{Key: k2}},
		{cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{Key: k3}},
		{cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{Key: keyRec(readK4, "default", "other/1")}},
	}
}

func readEntry(caller, op, gkid string) *cofferv1.AuditEntry {
	return &cofferv1.AuditEntry{
		TimeUnixNano: time.Unix(2000, 0).UnixNano(), Node: "n1", Caller: caller, Operation: op, Gkid: gkid,
		Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, Reason: "Internal: the read was not decided",
	}
}

// readBatch encodes an audit batch in which every entry but those in plain
// is a decided read.
func readBatch(t *testing.T, entries []*cofferv1.AuditEntry, plain map[int]bool) []byte {
	t.Helper()
	var decide []*cofferv1.ReadDecision
	for i := range entries {
		if !plain[i] {
			decide = append(decide, &cofferv1.ReadDecision{Entry: uint32(i), CertSerial: "1f"})
		}
	}
	d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, &cofferv1.AuditBatchCommand{Entries: entries, Decide: decide})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestFSM_DecidedReads(t *testing.T) {
	f := mustOpen(t)
	setup := readSetup(t)
	f.ApplyBatch(logs(1, setup...))
	plainEntry := &cofferv1.AuditEntry{TimeUnixNano: 1, Node: "n1", Caller: "client:c0", Operation: "list", Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED}
	entries := []*cofferv1.AuditEntry{
		readEntry("client:c0", "get", readK1), // granted
		plainEntry,                            // not decided: keeps its outcome
		readEntry("client:c9", "get", readK1), // unregistered
		readEntry("client:c0", "get", "k1-abcdefghij-00000000000000000000000099"), // no such key
		readEntry("client:c0", "get", readK2),                                     // expired at the request's time
		readEntry("client:c0", "get", readK3),                                     // use policy: describe only
		readEntry("client:c0", "describe", readK3),                                // granted
		readEntry("client:c0", "get", readK4),                                     // no grant on other/**
	}
	res := f.Apply(logs(uint64(len(setup)+1), readBatch(t, entries, map[int]bool{1: true}))[0]).(Result)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	want := []struct {
		refusal cofferv1.ReadRefusal
		outcome cofferv1.AuditOutcome
		reason  string
	}{
		{cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, ""},
		{cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED, "PermissionDenied: permission denied: client c9 is not registered"},
		// c0 holds no grant on every resource: it is not told the key does
		// not exist.
		{cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED, "PermissionDenied: permission denied: key k1-abcdefghij-00000000000000000000000099 does not exist, or client:c0 holds no grant for get on it"},
		{cofferv1.ReadRefusal_READ_REFUSAL_EXPIRED, cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, "FailedPrecondition: key has expired: key " + readK2},
		{cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED, "PermissionDenied: permission denied: the use policy of key " + readK3 + " does not allow get"},
		{cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, ""},
		{cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED, "PermissionDenied: permission denied: "},
	}
	if len(res.Reads) != len(want) {
		t.Fatalf("%d decisions, want %d", len(res.Reads), len(want))
	}
	stored, _, err := f.AuditEntries(0, 100, AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	bySeq := map[uint64]*cofferv1.AuditEntry{}
	for _, e := range stored {
		bySeq[e.GetSeq()] = e
	}
	for i, w := range want {
		r := res.Reads[i]
		if r.Refusal != w.refusal {
			t.Errorf("read %d: refusal %v (%s), want %v", i, r.Refusal, r.Detail, w.refusal)
		}
		e := bySeq[r.Seq]
		if e == nil {
			t.Fatalf("read %d: no stored entry at seq %d", i, r.Seq)
		}
		if e.GetOutcome() != w.outcome || !strings.HasPrefix(e.GetReason(), w.reason) {
			t.Errorf("read %d: stored %v %q, want %v %q...", i, e.GetOutcome(), e.GetReason(), w.outcome, w.reason)
		}
		// The caller is told what the entry records.
		var re *RefusalError
		if err := r.Err(); (err == nil) != (w.refusal == cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED) {
			t.Errorf("read %d: error %v for refusal %v", i, err, w.refusal)
		} else if errors.As(err, &re) && re.Code.String()+": "+re.Message != e.GetReason() {
			t.Errorf("read %d: caller told %v %q, entry records %q", i, re.Code, re.Message, e.GetReason())
		}
		if !strings.Contains(w.reason, "does not exist") && e.GetResource() == "" {
			t.Errorf("read %d: stored entry has no resource", i)
		}
	}
	if e := bySeq[res.Reads[0].Seq+1]; e.GetOperation() != "list" || e.GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
		t.Errorf("undecided entry changed: %v", e)
	}
}

// A read decided in the same batch as an access change sees the change,
// whether the replica applies the entries together or one by one.
func TestFSM_DecidedReadsSeeEarlierChangesInTheBatch(t *testing.T) {
	setup := readSetup(t)
	del, err := Encode(cofferv1.CommandType_COMMAND_TYPE_DELETE_ACL_RULE, &cofferv1.DeleteAclRuleCommand{Id: "r0"})
	if err != nil {
		t.Fatal(err)
	}
	put := setup[2]
	get := func() []byte { return readBatch(t, []*cofferv1.AuditEntry{readEntry("client:c0", "get", readK1)}, nil) }
	tail := [][]byte{get(), del, get(), put, get()}
	wantGranted := []bool{true, false, true}

	together, oneByOne := mustOpen(t), mustOpen(t)
	together.ApplyBatch(logs(1, setup...))
	oneByOne.ApplyBatch(logs(1, setup...))
	start := uint64(len(setup) + 1)
	outT := together.ApplyBatch(logs(start, tail...))
	var outO []interface{}
	for i, d := range tail {
		outO = append(outO, oneByOne.Apply(logs(start+uint64(i), d)[0]))
	}
	for _, out := range [][]interface{}{outT, outO} {
		for i, k := range []int{0, 2, 4} {
			r := out[k].(Result).Reads[0]
			if granted := r.Refusal == cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED; granted != wantGranted[i] {
				t.Errorf("read %d: granted=%v (%v %s), want %v", i, granted, r.Refusal, r.Detail, wantGranted[i])
			}
		}
	}
	if mustHash(t, together) != mustHash(t, oneByOne) {
		t.Fatal("replicas diverged")
	}
}

func TestFSM_InvalidReadDecisions(t *testing.T) {
	e := readEntry("client:c0", "get", readK1)
	for name, c := range map[string]*cofferv1.AuditBatchCommand{
		"out of range": {Entries: []*cofferv1.AuditEntry{e}, Decide: []*cofferv1.ReadDecision{{Entry: 1}}},
		"twice":        {Entries: []*cofferv1.AuditEntry{e}, Decide: []*cofferv1.ReadDecision{{Entry: 0}, {Entry: 0}}},
		"not a read": {Entries: []*cofferv1.AuditEntry{{TimeUnixNano: 1, Node: "n1", Caller: "client:c0", Operation: "generate", Gkid: readK1,
			Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED}}, Decide: []*cofferv1.ReadDecision{{Entry: 0}}},
	} {
		t.Run(name, func(t *testing.T) {
			if err := ValidateBatch(c.GetEntries(), c.GetDecide(), nil); !errors.Is(err, ErrInvalidCommand) {
				t.Fatalf("ValidateBatch: %v", err)
			}
			f := mustOpen(t)
			setup := readSetup(t)
			f.ApplyBatch(logs(1, setup...))
			d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, c)
			if err != nil {
				t.Fatal(err)
			}
			// Committed anyway: nothing is decided and the entries keep what
			// their node recorded, alike on every replica.
			res := f.Apply(logs(uint64(len(setup)+1), d)[0]).(Result)
			if !errors.Is(res.Err, ErrInvalidCommand) || res.Reads != nil {
				t.Fatalf("result %+v", res)
			}
			stored, _, err := f.AuditEntries(0, 100, AuditFilter{Operation: c.GetEntries()[0].GetOperation()})
			if err != nil || len(stored) != 1 || stored[0].GetOutcome() != c.GetEntries()[0].GetOutcome() {
				t.Fatalf("stored %v, %v", stored, err)
			}
		})
	}
}

// A batch with decided reads needs a replica that can decide them; every
// other command stays readable by replicas of the previous version.
func TestFSM_DecidedReadsNeedVersion2(t *testing.T) {
	for _, c := range []struct {
		payload *cofferv1.AuditBatchCommand
		want    uint32
	}{
		{&cofferv1.AuditBatchCommand{Entries: []*cofferv1.AuditEntry{readEntry("client:c0", "get", readK1)}}, 1},
		{&cofferv1.AuditBatchCommand{Entries: []*cofferv1.AuditEntry{readEntry("client:c0", "get", readK1)},
			Decide: []*cofferv1.ReadDecision{{Entry: 0}}}, 2},
		{&cofferv1.AuditBatchCommand{Entries: []*cofferv1.AuditEntry{readEntry("client:c0", "get", readK1), readEntry("client:c0", "encrypt", readK1)},
			Decide: []*cofferv1.ReadDecision{{Entry: 0}, {Entry: 1}}}, CryptoVersion},
		// An undecided encrypt entry (a refusal) needs no new version.
		{&cofferv1.AuditBatchCommand{Entries: []*cofferv1.AuditEntry{readEntry("client:c0", "get", readK1), readEntry("client:c0", "encrypt", readK1)},
			Decide: []*cofferv1.ReadDecision{{Entry: 0}}}, 2},
	} {
		d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, c.payload)
		if err != nil {
			t.Fatal(err)
		}
		var cmd cofferv1.Command
		if err := proto.Unmarshal(d, &cmd); err != nil {
			t.Fatal(err)
		}
		if cmd.GetVersion() != c.want {
			t.Errorf("%d decisions: version %d, want %d", len(c.payload.GetDecide()), cmd.GetVersion(), c.want)
		}
	}
	if CommandVersion < 2 {
		t.Fatalf("this build reads up to version %d", CommandVersion)
	}
}

// A use of a key by the data encryption service is decided like a get, and
// only in a batch written as CryptoVersion: one committed as an older
// version (which an older build would have refused) decides nothing.
func TestFSM_DecidedCryptoReads(t *testing.T) {
	f := mustOpen(t)
	setup := readSetup(t)
	grant, err := Encode(cofferv1.CommandType_COMMAND_TYPE_PUT_ACL_RULE, &cofferv1.PutAclRuleCommand{
		Rule: &cofferv1.AclRule{Id: "r1", Subject: "group:g", Operations: []string{"encrypt", "decrypt"}, ResourcePattern: "res/**"}})
	if err != nil {
		t.Fatal(err)
	}
	setup = append(setup, grant)
	f.ApplyBatch(logs(1, setup...))
	idx := uint64(len(setup) + 1)
	entries := []*cofferv1.AuditEntry{
		readEntry("client:c0", "encrypt", readK1), // granted
		readEntry("client:c0", "decrypt", readK3), // use policy: describe only
		readEntry("client:c0", "datakey", readK1), // no grant for datakey
	}
	decide := []*cofferv1.ReadDecision{{Entry: 0, CertSerial: "1f"}, {Entry: 1, CertSerial: "1f"}, {Entry: 2, CertSerial: "1f"}}
	payload, err := proto.Marshal(&cofferv1.AuditBatchCommand{Entries: entries, Decide: decide})
	if err != nil {
		t.Fatal(err)
	}
	old, err := proto.Marshal(&cofferv1.Command{Type: cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, Version: 2, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	if res := f.Apply(logs(idx, old)[0]).(Result); !errors.Is(res.Err, ErrInvalidCommand) {
		t.Fatalf("version 2 batch deciding encrypt: %v, want ErrInvalidCommand", res.Err)
	}
	res := f.Apply(logs(idx+1, readBatch(t, entries, nil))[0]).(Result)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	want := []struct {
		refusal cofferv1.ReadRefusal
		detail  string
	}{
		{cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, ""},
		{cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, "does not allow decrypt"},
		{cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, "holds no grant for datakey"},
	}
	for i, w := range want {
		if r := res.Reads[i]; r.Refusal != w.refusal || !strings.Contains(r.Detail, w.detail) {
			t.Errorf("read %d: %v %q, want %v %q", i, r.Refusal, r.Detail, w.refusal, w.detail)
		}
	}
}
