package chaos

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The model accepts what a correct cluster may answer and refuses what it
// may not: each history is checked as written.
func TestModel(t *testing.T) {
	gen := func(call, ret int64, gk string) Op {
		return Op{Kind: OpGenerate, Gkid: gk, Call: call, Return: ret, Outcome: Ok}
	}
	get := func(call, ret int64, gk, m string) Op {
		return Op{Kind: OpGet, Gkid: gk, Material: m, Call: call, Return: ret, Outcome: Ok}
	}
	refused := func(k Kind, call, ret int64, gk, code string) Op {
		return Op{Kind: k, Gkid: gk, Call: call, Return: ret, Outcome: Failed, Code: code}
	}
	write := func(k Kind, call, ret int64, o Outcome) Op {
		return Op{Kind: k, Call: call, Return: ret, Outcome: o}
	}
	list := func(call, ret int64, keys ...string) Op {
		return Op{Kind: OpList, Keys: keys, Call: call, Return: ret, Outcome: Ok}
	}
	for _, tc := range []struct {
		name string
		ops  []Op
		want porcupine.CheckResult
	}{
		{"read your write", []Op{gen(0, 1, "k1"), get(2, 3, "k1", "m1"), get(4, 5, "k1", "m1")}, porcupine.Ok},
		{"material changed", []Op{gen(0, 1, "k1"), get(2, 3, "k1", "m1"), get(4, 5, "k1", "m2")}, porcupine.Illegal},
		{"acknowledged key lost from list", []Op{gen(0, 1, "k1"), list(2, 3)}, porcupine.Illegal},
		{"list concurrent with generate", []Op{gen(0, 3, "k1"), list(1, 2)}, porcupine.Ok},
		{"key from nowhere", []Op{list(0, 1, "k9")}, porcupine.Illegal},
		{"key of an unknown generate", []Op{write(OpGenerate, 0, 1, Unknown), list(2, 3, "k9"), get(4, 5, "k9", "m9")}, porcupine.Ok},
		{"get after acknowledged revoke", []Op{gen(0, 1, "k1"), write(OpRevoke, 2, 3, Ok), get(4, 5, "k1", "m1")}, porcupine.Illegal},
		{"get after acknowledged deactivate", []Op{gen(0, 1, "k1"), write(OpDeactivate, 2, 3, Ok), get(4, 5, "k1", "m1")}, porcupine.Illegal},
		{"get concurrent with revoke", []Op{gen(0, 1, "k1"), write(OpRevoke, 2, 5, Ok), get(3, 4, "k1", "m1")}, porcupine.Ok},
		{"get after revoke and an unknown grant", []Op{gen(0, 1, "k1"), write(OpRevoke, 2, 3, Ok), write(OpGrant, 4, 5, Unknown), get(6, 7, "k1", "m1")}, porcupine.Ok},
		{"get after revoke and a failed grant", []Op{gen(0, 1, "k1"), write(OpRevoke, 2, 3, Ok), write(OpGrant, 4, 5, Failed), get(6, 7, "k1", "m1")}, porcupine.Illegal},
		{"denied while granted", []Op{gen(0, 1, "k1"), refused(OpGet, 2, 3, "k1", "PermissionDenied")}, porcupine.Illegal},
		{"denied after revoke", []Op{gen(0, 1, "k1"), write(OpRevoke, 2, 3, Ok), refused(OpGet, 4, 5, "k1", "PermissionDenied")}, porcupine.Ok},
		{"acknowledged key not found", []Op{gen(0, 1, "k1"), refused(OpDescribe, 2, 3, "k1", "NotFound")}, porcupine.Illegal},
		{"revoke of a rule that exists not found", []Op{refused(OpRevoke, 0, 1, "", "NotFound")}, porcupine.Illegal},
		{"grant of an existing rule refused while revoked", []Op{write(OpRevoke, 0, 1, Ok), refused(OpGrant, 2, 3, "", "AlreadyExists")}, porcupine.Illegal},
		{"grant of an existing rule refused", []Op{refused(OpGrant, 0, 1, "", "AlreadyExists")}, porcupine.Ok},
		{"second revoke not found", []Op{write(OpRevoke, 0, 1, Ok), refused(OpRevoke, 2, 3, "", "NotFound")}, porcupine.Ok},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range tc.ops {
				tc.ops[i].ID = i
			}
			got, err := Linearizable(tc.ops, 10*time.Second, "")
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

// The revocation check flags a get acknowledged after an acknowledged
// revoke only when no grant could have come between.
func TestCheckRevocations(t *testing.T) {
	get := Op{ID: 9, Kind: OpGet, Gkid: "k1", Call: 50, Return: 60, Outcome: Ok}
	for _, tc := range []struct {
		name string
		ops  []Op
		want int
	}{
		{"released after revoke", []Op{{ID: 1, Kind: OpRevoke, Call: 10, Return: 20, Outcome: Ok}, get}, 1},
		{"released after deactivate", []Op{{ID: 1, Kind: OpDeactivate, Call: 10, Return: 20, Outcome: Ok}, get}, 1},
		{"regranted between", []Op{{ID: 1, Kind: OpRevoke, Call: 10, Return: 20, Outcome: Ok}, {ID: 2, Kind: OpGrant, Call: 30, Return: 40, Outcome: Ok}, get}, 0},
		{"unknown grant", []Op{{ID: 1, Kind: OpRevoke, Call: 10, Return: 20, Outcome: Ok}, {ID: 2, Kind: OpGrant, Call: 5, Return: 6, Outcome: Unknown}, get}, 0},
		{"refused grant", []Op{{ID: 1, Kind: OpRevoke, Call: 10, Return: 20, Outcome: Ok}, {ID: 2, Kind: OpGrant, Call: 30, Return: 40, Outcome: Failed}, get}, 1},
		{"grant only before the later revoke", []Op{{ID: 1, Kind: OpRevoke, Call: 10, Return: 20, Outcome: Ok}, {ID: 2, Kind: OpGrant, Call: 21, Return: 22, Outcome: Ok},
			{ID: 3, Kind: OpRevoke, Call: 30, Return: 40, Outcome: Ok}, get}, 1},
		{"revoke concurrent with the get", []Op{{ID: 1, Kind: OpRevoke, Call: 45, Return: 55, Outcome: Ok}, get}, 0},
		{"other partition", []Op{{ID: 1, Kind: OpRevoke, Part: 1, Call: 10, Return: 20, Outcome: Ok}, get}, 0},
	} {
		rep := &Report{}
		(&Runner{}).checkRevocations(rep, tc.ops)
		if len(rep.Violations) != tc.want {
			t.Errorf("%s: %d violations %v, want %d", tc.name, len(rep.Violations), rep.Violations, tc.want)
		}
	}
}
