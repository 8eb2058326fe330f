package fsm

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// versionsFixture is the read setup with encrypt, decrypt and datakey
// granted to c0 on res/**, and k1's use policy limited to max encryptions
// per version.
func versionsFixture(t *testing.T, max uint64) (*FSM, uint64) {
	t.Helper()
	f := mustOpen(t)
	var setup [][]byte
	for _, c := range readSetupCommands() {
		if ck, ok := c.m.(*cofferv1.CreateKeyCommand); ok && ck.GetKey().GetGkid() == readK1 {
			ck.Key.UsePolicy = &cofferv1.KeyUsePolicy{MaxEncryptions: max}
		}
		d, err := Encode(c.t, c.m)
		if err != nil {
			t.Fatal(err)
		}
		setup = append(setup, d)
	}
	grant, err := Encode(cofferv1.CommandType_COMMAND_TYPE_PUT_ACL_RULE, &cofferv1.PutAclRuleCommand{
		Rule: &cofferv1.AclRule{Id: "r1", Subject: "group:g", Operations: []string{"encrypt", "decrypt", "datakey"}, ResourcePattern: "res/**"}})
	if err != nil {
		t.Fatal(err)
	}
	setup = append(setup, grant)
	f.ApplyBatch(logs(1, setup...))
	return f, uint64(len(setup))
}

// TestFSM_EncryptionCounts counts granted encryptions per key version in
// Apply, decided there or on a node, and refuses one past the use policy's
// limit; decrypts and refusals count nothing.
func TestFSM_EncryptionCounts(t *testing.T) {
	f, idx := versionsFixture(t, 3)
	stale := readEntry("client:c0", "encrypt", readK1)
	stale.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED // decided on a node
	entries := []*cofferv1.AuditEntry{
		readEntry("client:c0", "encrypt", readK1),
		readEntry("client:c0", "datakey", readK1),
		readEntry("client:c0", "decrypt", readK1),
		stale,
		readEntry("client:c0", "encrypt", readK1), // the fourth: past the limit
		readEntry("client:c0", "encrypt", readK4), // no grant: not counted
	}
	idx++
	res := f.Apply(logs(idx, readBatch(t, entries, map[int]bool{3: true}))[0]).(Result)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	want := []cofferv1.ReadRefusal{
		cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED,
		cofferv1.ReadRefusal_READ_REFUSAL_USES_EXHAUSTED, cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED,
	}
	for i, w := range want {
		if r := res.Reads[i]; r.Refusal != w {
			t.Errorf("read %d: %v %q, want %v", i, r.Refusal, r.Detail, w)
		}
	}
	if r := res.Reads[3]; !strings.Contains(r.Detail, "rotate the key") || r.Err() == nil {
		t.Errorf("exhausted: %q, err %v", r.Detail, r.Err())
	}
	if r := res.Reads[0]; r.KeyVersion != 1 {
		t.Errorf("granted encrypt names version %d, want 1", r.KeyVersion)
	}
	if n, err := f.Encryptions(readK1, 1); err != nil || n != 3 {
		t.Fatalf("k1 version 1 counts %d (%v), want 3", n, err)
	}
	if n, _ := f.Encryptions(readK4, 1); n != 0 {
		t.Fatalf("k4 counts %d, want 0", n)
	}
	// The granted entries name the version used.
	got, _, err := f.AuditEntries(f.AuditHeadSeq()-6, 6, AuditFilter{})
	if err != nil || len(got) != 6 {
		t.Fatalf("entries: %d, %v", len(got), err)
	}
	for i, want := range []uint32{1, 1, 1, 0, 0, 0} { // the node-decided entry keeps what its node wrote
		if got[i].GetKeyVersion() != want {
			t.Errorf("entry %d (%s): key version %d, want %d", i, got[i].GetOperation(), got[i].GetKeyVersion(), want)
		}
	}
}

// TestFSM_ChangeKeyVersions applies rotations and retirements: each needs
// the expected revision and a record that changes only its versions as the
// change says; decrypts of a retired version are refused, and a rotation
// restarts the count.
func TestFSM_ChangeKeyVersions(t *testing.T) {
	f, idx := versionsFixture(t, 1)
	cur, err := f.Key(readK1)
	if err != nil {
		t.Fatal(err)
	}
	apply := func(rec *cofferv1.KeyRecord, expected uint64, ch cofferv1.ChangeKeyCommand_Change) Result {
		t.Helper()
		d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_CHANGE_KEY, &cofferv1.ChangeKeyCommand{Key: rec, ExpectedRevision: expected, Change: ch})
		if err != nil {
			t.Fatal(err)
		}
		idx++
		return f.Apply(logs(idx, d)[0]).(Result)
	}
	rotate := func(from *cofferv1.KeyRecord, edit func(*cofferv1.KeyRecord)) *cofferv1.KeyRecord {
		n := proto.CloneOf(from)
		n.Versions = append(n.Versions, &cofferv1.KeyVersionRecord{Version: max(from.GetVersion(), 1), CreatedUnixNano: from.GetCreatedUnixNano(),
			WrappedMaterial: from.GetWrappedMaterial(), Escrow: from.GetEscrow()})
		if from.GetVersionCreatedUnixNano() != 0 {
			n.Versions[len(n.Versions)-1].CreatedUnixNano = from.GetVersionCreatedUnixNano()
		}
		n.Version, n.VersionCreatedUnixNano, n.Revision, n.WrappedMaterial = max(from.GetVersion(), 1)+1, 3000, from.GetRevision()+1, []byte("new material")
		if edit != nil {
			edit(n)
		}
		return n
	}
	rot, ret := cofferv1.ChangeKeyCommand_CHANGE_ROTATE, cofferv1.ChangeKeyCommand_CHANGE_RETIRE
	for _, c := range []struct {
		name string
		rec  *cofferv1.KeyRecord
		exp  uint64
		ch   cofferv1.ChangeKeyCommand_Change
		want error
	}{
		{"stale revision", rotate(cur, nil), cur.GetRevision() + 1, rot, ErrConflict},
		{"resource changed", rotate(cur, func(r *cofferv1.KeyRecord) { r.Resource = "res/x" }), cur.GetRevision(), rot, ErrInvalidCommand},
		{"version skipped", rotate(cur, func(r *cofferv1.KeyRecord) { r.Version = 5 }), cur.GetRevision(), rot, ErrInvalidCommand},
		{"old version dropped", rotate(cur, func(r *cofferv1.KeyRecord) { r.Versions = nil }), cur.GetRevision(), rot, ErrInvalidCommand},
		{"old material dropped", rotate(cur, func(r *cofferv1.KeyRecord) { r.Versions[0].WrappedMaterial = nil }), cur.GetRevision(), rot, ErrInvalidCommand},
		{"use policy changed", rotate(cur, func(r *cofferv1.KeyRecord) { r.UsePolicy = nil }), cur.GetRevision(), rot, ErrInvalidCommand},
		{"no change named", rotate(cur, nil), cur.GetRevision(), cofferv1.ChangeKeyCommand_CHANGE_UNSPECIFIED, ErrInvalidCommand},
		{"retire without versions", rotate(cur, nil), cur.GetRevision(), ret, ErrInvalidCommand},
	} {
		if res := apply(c.rec, c.exp, c.ch); !errors.Is(res.Err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, res.Err, c.want)
		}
	}
	if got, _ := f.Key(readK1); !proto.Equal(got, cur) {
		t.Fatal("a refused change changed the record")
	}
	// Use up version 1 (limit 1), rotate, and encrypt under version 2.
	decide := func(entries ...*cofferv1.AuditEntry) []ReadResult {
		t.Helper()
		idx++
		res := f.Apply(logs(idx, readBatch(t, entries, nil))[0]).(Result)
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		return res.Reads
	}
	if r := decide(readEntry("client:c0", "encrypt", readK1), readEntry("client:c0", "encrypt", readK1)); r[0].Refusal != 0 || r[1].Refusal != cofferv1.ReadRefusal_READ_REFUSAL_USES_EXHAUSTED {
		t.Fatalf("before rotation: %v, %v", r[0].Refusal, r[1].Refusal)
	}
	v2 := rotate(cur, nil)
	if res := apply(v2, cur.GetRevision(), rot); res.Err != nil {
		t.Fatal(res.Err)
	}
	old := readEntry("client:c0", "decrypt", readK1)
	old.KeyVersion = 1
	missing := readEntry("client:c0", "decrypt", readK1)
	missing.KeyVersion = 7
	r := decide(readEntry("client:c0", "encrypt", readK1), old, missing)
	if r[0].Refusal != 0 || r[0].KeyVersion != 2 || r[1].Refusal != 0 || r[1].KeyVersion != 1 || r[2].Refusal != cofferv1.ReadRefusal_READ_REFUSAL_KEY_VERSION {
		t.Fatalf("after rotation: %+v", r)
	}
	if n, _ := f.Encryptions(readK1, 2); n != 1 {
		t.Fatalf("version 2 counts %d, want 1", n)
	}
	// Retire version 1: its decrypts are refused from then on.
	v2r := proto.CloneOf(v2)
	v2r.Revision++
	v2r.Versions[0].WrappedMaterial, v2r.Versions[0].Escrow, v2r.Versions[0].RetiredUnixNano = nil, nil, 4000
	if res := apply(v2r, v2.GetRevision(), ret); res.Err != nil {
		t.Fatal(res.Err)
	}
	old = readEntry("client:c0", "decrypt", readK1)
	old.KeyVersion = 1
	if r := decide(old); r[0].Refusal != cofferv1.ReadRefusal_READ_REFUSAL_KEY_VERSION || !strings.Contains(r[0].Detail, "retired") {
		t.Fatalf("decrypt of a retired version: %v %q", r[0].Refusal, r[0].Detail)
	}
	// A state change keeps the versions as they are.
	d := proto.CloneOf(v2r)
	d.State, d.Revision, d.StateChangedUnixNano = cofferv1.KeyState_KEY_STATE_DEACTIVATED, v2r.GetRevision()+1, 5000
	d.Versions = nil
	ds, err := Encode(cofferv1.CommandType_COMMAND_TYPE_SET_KEY_STATE, &cofferv1.SetKeyStateCommand{Key: d, ExpectedRevision: v2r.GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	idx++
	if res := f.Apply(logs(idx, ds)[0]).(Result); !errors.Is(res.Err, ErrInvalidCommand) {
		t.Fatalf("state change dropping versions: %v", res.Err)
	}
}
