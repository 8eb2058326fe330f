package fsm

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
)

// TestFSM_SetKeyState applies state changes: each needs the expected
// revision, an allowed transition and a record that changes nothing but
// its life cycle; a batch reads the record it replaced, and readers see the
// new record once it is applied.
func TestFSM_SetKeyState(t *testing.T) {
	f := mustOpen(t)
	setup := readSetup(t)
	f.ApplyBatch(logs(1, setup...))
	idx := uint64(len(setup))
	cur, err := f.Key(readK1)
	if err != nil {
		t.Fatal(err)
	}
	next := func(from *cofferv1.KeyRecord, st cofferv1.KeyState, edit func(*cofferv1.KeyRecord)) *cofferv1.KeyRecord {
		n := proto.CloneOf(from)
		n.State, n.Revision, n.StateChangedUnixNano = st, from.GetRevision()+1, 5000
		if st == cofferv1.KeyState_KEY_STATE_DESTROYED {
			n.WrappedMaterial = nil
		}
		if edit != nil {
			edit(n)
		}
		return n
	}
	apply := func(rec *cofferv1.KeyRecord, expected uint64) Result {
		t.Helper()
		d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_SET_KEY_STATE, &cofferv1.SetKeyStateCommand{Key: rec, ExpectedRevision: expected})
		if err != nil {
			t.Fatal(err)
		}
		idx++
		return f.Apply(logs(idx, d)[0]).(Result)
	}
	deact := cofferv1.KeyState_KEY_STATE_DEACTIVATED
	for _, c := range []struct {
		name string
		rec  *cofferv1.KeyRecord
		exp  uint64
		want error
	}{
		{"stale revision", next(cur, deact, nil), cur.GetRevision() + 5, ErrConflict},
		{"resource changed", next(cur, deact, func(r *cofferv1.KeyRecord) { r.Resource = "res/other" }), cur.GetRevision(), ErrInvalidCommand},
		{"revision skipped", next(cur, deact, func(r *cofferv1.KeyRecord) { r.Revision += 3 }), cur.GetRevision(), ErrInvalidCommand},
		{"material dropped", next(cur, deact, func(r *cofferv1.KeyRecord) { r.WrappedMaterial = nil }), cur.GetRevision(), ErrInvalidCommand},
		{"destroyed with material", next(cur, cofferv1.KeyState_KEY_STATE_DESTROYED, func(r *cofferv1.KeyRecord) { r.WrappedMaterial = []byte("x") }), cur.GetRevision(), ErrInvalidCommand},
		{"back to pre-active", next(cur, cofferv1.KeyState_KEY_STATE_PRE_ACTIVE, nil), cur.GetRevision(), ErrKeyState},
		{"no such key", next(cur, deact, func(r *cofferv1.KeyRecord) { r.Gkid = readK1[:len(readK1)-1] + "9" }), cur.GetRevision(), ErrNotFound},
	} {
		if res := apply(c.rec, c.exp); !errors.Is(res.Err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, res.Err, c.want)
		}
	}
	if got, _ := f.Key(readK1); !proto.Equal(got, cur) {
		t.Fatal("a refused state change changed the record")
	}
	// Deactivate, then in one batch compromise and decide a decrypt.
	d1 := next(cur, deact, nil)
	if res := apply(d1, cur.GetRevision()); res.Err != nil {
		t.Fatal(res.Err)
	}
	if got, _ := f.Key(readK1); got.GetState() != deact {
		t.Fatalf("after the change the reader sees %v", got.GetState())
	}
	d2 := next(d1, cofferv1.KeyState_KEY_STATE_COMPROMISED, func(r *cofferv1.KeyRecord) { r.Compromised = true })
	change, err := Encode(cofferv1.CommandType_COMMAND_TYPE_SET_KEY_STATE, &cofferv1.SetKeyStateCommand{Key: d2, ExpectedRevision: d1.GetRevision()})
	if err != nil {
		t.Fatal(err)
	}
	read := readBatch(t, []*cofferv1.AuditEntry{readEntry("client:c0", "get", readK1), readEntry("client:c0", "describe", readK1)}, nil)
	out := f.ApplyBatch(logs(idx+1, change, read))
	if r := out[0].(Result); r.Err != nil {
		t.Fatal(r.Err)
	}
	r := out[1].(Result)
	if len(r.Reads) != 2 || r.Reads[0].Refusal != cofferv1.ReadRefusal_READ_REFUSAL_KEY_STATE || r.Reads[1].Refusal != cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED {
		t.Fatalf("get decided after the compromise in the same batch: %+v", r.Reads)
	}
	entries, _, err := f.AuditEntries(0, 100, AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if last := entries[len(entries)-1]; last.GetReason() != authz.CompromisedKey {
		t.Errorf("a granted describe of the compromised key: reason %q, want %q", last.GetReason(), authz.CompromisedKey)
	}
}
