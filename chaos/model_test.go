package chaos

import (
	"fmt"
	"math/rand/v2"
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
	enc := func(call, ret int64, gk, plain string) Op {
		return Op{Kind: OpEncrypt, Gkid: gk, Plaintext: plain, Call: call, Return: ret, Outcome: Ok}
	}
	dec := func(call, ret int64, gk, got, want string) Op {
		return Op{Kind: OpDecrypt, Gkid: gk, Plaintext: got, Want: want, Call: call, Return: ret, Outcome: Ok}
	}
	change := func(k Kind, call, ret int64, gk string, o Outcome) Op {
		return Op{Kind: k, Gkid: gk, Call: call, Return: ret, Outcome: o}
	}
	describe := func(call, ret int64, gk, state string) Op {
		return Op{Kind: OpDescribe, Gkid: gk, State: state, Call: call, Return: ret, Outcome: Ok}
	}
	const precondition = "FailedPrecondition"
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

		// The data encryption service and the key life cycle.
		{"decrypt what was encrypted", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), dec(4, 5, "k1", "p1", "p1")}, porcupine.Ok},
		{"decrypt returns other plaintext", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), dec(4, 5, "k1", "p2", "p1")}, porcupine.Illegal},
		{"decrypt after acknowledged destroy", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), change(OpKeyDestroy, 4, 5, "k1", Ok), dec(6, 7, "k1", "p1", "p1")}, porcupine.Illegal},
		{"decrypt concurrent with destroy", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), change(OpKeyDestroy, 4, 7, "k1", Ok), dec(5, 6, "k1", "p1", "p1")}, porcupine.Ok},
		{"decrypt refused after acknowledged destroy", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), change(OpKeyDestroy, 4, 5, "k1", Ok), refused(OpDecrypt, 6, 7, "k1", precondition)}, porcupine.Ok},
		{"decrypt of a deactivated key", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), change(OpKeyDeactivate, 4, 5, "k1", Ok), dec(6, 7, "k1", "p1", "p1")}, porcupine.Ok},
		{"decrypt of a deactivated key refused", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), change(OpKeyDeactivate, 4, 5, "k1", Ok), refused(OpDecrypt, 6, 7, "k1", precondition)}, porcupine.Illegal},
		{"decrypt after revoke", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), write(OpRevoke, 4, 5, Ok), dec(6, 7, "k1", "p1", "p1")}, porcupine.Illegal},
		{"encrypt after acknowledged deactivate", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Ok), enc(4, 5, "k1", "p1")}, porcupine.Illegal},
		{"encrypt refused after acknowledged deactivate", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Ok), refused(OpEncrypt, 4, 5, "k1", precondition)}, porcupine.Ok},
		{"encrypt of an active key refused for its state", []Op{gen(0, 1, "k1"), refused(OpEncrypt, 2, 3, "k1", precondition)}, porcupine.Illegal},
		{"get after acknowledged deactivate of the key", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Ok), get(4, 5, "k1", "m1")}, porcupine.Illegal},
		{"get of an active key refused for its state", []Op{gen(0, 1, "k1"), refused(OpGet, 2, 3, "k1", precondition)}, porcupine.Illegal},
		{"get of a destroyed key refused", []Op{gen(0, 1, "k1"), change(OpKeyDestroy, 2, 3, "k1", Ok), refused(OpGet, 4, 5, "k1", precondition)}, porcupine.Ok},
		{"state refusal while revoked", []Op{gen(0, 1, "k1"), change(OpKeyDestroy, 2, 3, "k1", Ok), write(OpRevoke, 4, 5, Ok), refused(OpGet, 6, 7, "k1", precondition)}, porcupine.Illegal},
		{"unknown destroy: decrypt still works", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), change(OpKeyDestroy, 4, 5, "k1", Unknown), dec(6, 7, "k1", "p1", "p1")}, porcupine.Ok},
		{"unknown destroy: decrypt refused", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), change(OpKeyDestroy, 4, 5, "k1", Unknown), refused(OpDecrypt, 6, 7, "k1", precondition)}, porcupine.Ok},
		{"unknown destroy took effect, then decrypt", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), change(OpKeyDestroy, 4, 5, "k1", Unknown),
			refused(OpDecrypt, 6, 7, "k1", precondition), dec(8, 9, "k1", "p1", "p1")}, porcupine.Illegal},
		{"unknown deactivate seen, then an active key", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Unknown), describe(4, 5, "k1", StateDeactivated), get(6, 7, "k1", "m1")}, porcupine.Illegal},
		{"unknown deactivate taking effect late", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Unknown), get(4, 5, "k1", "m1"), describe(6, 7, "k1", StateDeactivated)}, porcupine.Ok},
		{"unknown deactivate and destroy", []Op{gen(0, 1, "k1"), enc(2, 3, "k1", "p1"), change(OpKeyDeactivate, 4, 5, "k1", Unknown), change(OpKeyDestroy, 6, 7, "k1", Unknown),
			refused(OpGet, 8, 9, "k1", precondition), dec(10, 11, "k1", "p1", "p1"), describe(12, 13, "k1", StateDestroyed)}, porcupine.Ok},
		{"unknown destroy seen, then deactivated", []Op{gen(0, 1, "k1"), change(OpKeyDestroy, 2, 3, "k1", Unknown), refused(OpDecrypt, 4, 5, "k1", precondition), describe(6, 7, "k1", StateDeactivated)}, porcupine.Illegal},
		{"unknown deactivate cannot destroy", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Unknown), refused(OpDecrypt, 4, 5, "k1", precondition)}, porcupine.Illegal},
		{"deactivate refused after an unknown destroy", []Op{gen(0, 1, "k1"), change(OpKeyDestroy, 2, 3, "k1", Unknown), refused(OpKeyDeactivate, 4, 5, "k1", precondition), get(6, 7, "k1", "m1")}, porcupine.Illegal},
		{"repeated destroy", []Op{gen(0, 1, "k1"), change(OpKeyDestroy, 2, 3, "k1", Ok), change(OpKeyDestroy, 4, 5, "k1", Ok)}, porcupine.Ok},
		{"repeated deactivate", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Ok), change(OpKeyDeactivate, 4, 5, "k1", Ok)}, porcupine.Ok},
		{"deactivate after destroy acknowledged", []Op{gen(0, 1, "k1"), change(OpKeyDestroy, 2, 3, "k1", Ok), change(OpKeyDeactivate, 4, 5, "k1", Ok)}, porcupine.Illegal},
		{"deactivate after destroy refused", []Op{gen(0, 1, "k1"), change(OpKeyDestroy, 2, 3, "k1", Ok), refused(OpKeyDeactivate, 4, 5, "k1", precondition)}, porcupine.Ok},
		{"deactivate of an active key refused", []Op{gen(0, 1, "k1"), refused(OpKeyDeactivate, 2, 3, "k1", precondition)}, porcupine.Illegal},
		{"destroy of a deactivated key", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Ok), change(OpKeyDestroy, 4, 5, "k1", Ok), describe(6, 7, "k1", StateDestroyed)}, porcupine.Ok},
		{"describe shows the state", []Op{gen(0, 1, "k1"), describe(2, 3, "k1", StateActive), change(OpKeyDeactivate, 4, 5, "k1", Ok), describe(6, 7, "k1", StateDeactivated)}, porcupine.Ok},
		{"describe shows a state left behind", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Ok), describe(4, 5, "k1", StateActive)}, porcupine.Illegal},
		{"state change of a key of an unknown generate", []Op{write(OpGenerate, 0, 1, Unknown), list(2, 3, "k9"), change(OpKeyDestroy, 4, 5, "k9", Ok), describe(6, 7, "k9", StateDestroyed)}, porcupine.Ok},
		{"state change of a key from nowhere", []Op{change(OpKeyDestroy, 0, 1, "k9", Ok)}, porcupine.Illegal},
		{"state change of an acknowledged key not found", []Op{gen(0, 1, "k1"), refused(OpKeyDestroy, 2, 3, "k1", "NotFound")}, porcupine.Illegal},

		// Rotation: gets read version 1 and decrypts any version, so it
		// changes nothing they see; it needs an active key.
		{"rotation keeps version 1 and old ciphertexts", []Op{gen(0, 1, "k1"), get(2, 3, "k1", "m1"), enc(4, 5, "k1", "p1"), change(OpKeyRotate, 6, 7, "k1", Ok),
			get(8, 9, "k1", "m1"), dec(10, 11, "k1", "p1", "p1")}, porcupine.Ok},
		{"rotation of a deactivated key acknowledged", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Ok), change(OpKeyRotate, 4, 5, "k1", Ok)}, porcupine.Illegal},
		{"rotation of an active key refused", []Op{gen(0, 1, "k1"), refused(OpKeyRotate, 2, 3, "k1", precondition)}, porcupine.Illegal},
		{"rotation refused after an unknown deactivate", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Unknown), refused(OpKeyRotate, 4, 5, "k1", precondition),
			describe(6, 7, "k1", StateDeactivated)}, porcupine.Ok},
		{"rotation refused, then an active key", []Op{gen(0, 1, "k1"), change(OpKeyDeactivate, 2, 3, "k1", Unknown), refused(OpKeyRotate, 4, 5, "k1", precondition),
			get(6, 7, "k1", "m1")}, porcupine.Illegal},
		{"rotation of an acknowledged key not found", []Op{gen(0, 1, "k1"), refused(OpKeyRotate, 2, 3, "k1", "NotFound")}, porcupine.Illegal},
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

// Unknown state changes of many keys keep the check fast: each is pending
// on its key rather than doubling the states the partition may be in.
func TestModelManyUnknownChanges(t *testing.T) {
	var ops []Op
	const n = 64
	for i := 0; i < n; i++ {
		gk := fmt.Sprintf("k%d", i)
		ops = append(ops, Op{Kind: OpGenerate, Gkid: gk, Call: int64(i), Return: int64(i) + 1, Outcome: Ok})
	}
	for i := 0; i < n; i++ {
		k := OpKeyDeactivate
		if i%2 == 1 {
			k = OpKeyDestroy
		}
		ops = append(ops, Op{Kind: k, Gkid: fmt.Sprintf("k%d", i), Call: int64(100 + i), Return: int64(101 + i), Outcome: Unknown})
	}
	for i := 0; i < n; i++ {
		at := int64(1000 + 10*i)
		ops = append(ops, Op{Kind: OpGet, Gkid: fmt.Sprintf("k%d", i), Material: "m", Call: at, Return: at + 1, Outcome: Ok})
	}
	for i := range ops {
		ops[i].ID = i
	}
	start := time.Now()
	got, err := Linearizable(ops, 20*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	if got != porcupine.Ok || time.Since(start) > 5*time.Second {
		t.Fatalf("got %s in %v, want Ok within 5s", got, time.Since(start))
	}
}

// The key-state check flags a use acknowledged after an acknowledged state
// change of its key that forbids it.
func TestCheckKeyStates(t *testing.T) {
	destroy := Op{ID: 1, Kind: OpKeyDestroy, Gkid: "k1", Call: 10, Return: 20, Outcome: Ok}
	deactivate := Op{ID: 1, Kind: OpKeyDeactivate, Gkid: "k1", Call: 10, Return: 20, Outcome: Ok}
	use := func(k Kind, call int64) Op {
		return Op{ID: 9, Kind: k, Gkid: "k1", Call: call, Return: call + 10, Outcome: Ok}
	}
	for _, tc := range []struct {
		name string
		ops  []Op
		want int
	}{
		{"decrypt after destroy", []Op{destroy, use(OpDecrypt, 30)}, 1},
		{"get after destroy", []Op{destroy, use(OpGet, 30)}, 1},
		{"decrypt after deactivate", []Op{deactivate, use(OpDecrypt, 30)}, 0},
		{"encrypt after deactivate", []Op{deactivate, use(OpEncrypt, 30)}, 1},
		{"decrypt concurrent with destroy", []Op{destroy, use(OpDecrypt, 15)}, 0},
		{"unknown destroy", []Op{{ID: 1, Kind: OpKeyDestroy, Gkid: "k1", Call: 10, Return: 20, Outcome: Unknown}, use(OpDecrypt, 30)}, 0},
		{"other key", []Op{destroy, {ID: 9, Kind: OpDecrypt, Gkid: "k2", Call: 30, Return: 40, Outcome: Ok}}, 0},
	} {
		rep := &Report{}
		(&Runner{}).checkKeyStates(rep, tc.ops)
		if len(rep.Violations) != tc.want {
			t.Errorf("%s: %d violations %v, want %d", tc.name, len(rep.Violations), rep.Violations, tc.want)
		}
	}
}

// The key-version check flags a rotation that repeats a version, or goes
// back after another was acknowledged, and an encrypt under an older
// version than an acknowledged rotation made.
func TestCheckKeyVersions(t *testing.T) {
	rot := func(id int, call int64, v uint32) Op {
		return Op{ID: id, Kind: OpKeyRotate, Gkid: "k1", Call: call, Return: call + 10, Outcome: Ok, KeyVersion: v}
	}
	enc := func(call int64, v uint32) Op {
		return Op{ID: 9, Kind: OpEncrypt, Gkid: "k1", Call: call, Return: call + 10, Outcome: Ok, KeyVersion: v}
	}
	for _, tc := range []struct {
		name string
		ops  []Op
		want int
	}{
		{"two rotations in order", []Op{rot(1, 0, 2), rot(2, 20, 3), enc(40, 3)}, 0},
		{"concurrent rotations", []Op{rot(1, 0, 3), rot(2, 5, 2)}, 0},
		{"a version made twice", []Op{rot(1, 0, 2), rot(2, 5, 2)}, 1},
		{"a later rotation made an older version", []Op{rot(1, 0, 3), rot(2, 20, 2)}, 1},
		{"encrypt under the old version after a rotation", []Op{rot(1, 0, 2), enc(20, 1)}, 1},
		{"encrypt concurrent with a rotation", []Op{rot(1, 0, 2), enc(5, 1)}, 0},
		{"unknown rotation", []Op{{ID: 1, Kind: OpKeyRotate, Gkid: "k1", Call: 0, Return: 10, Outcome: Unknown}, enc(20, 1)}, 0},
	} {
		rep := &Report{}
		(&Runner{}).checkKeyVersions(rep, tc.ops)
		if len(rep.Violations) != tc.want {
			t.Errorf("%s: %d violations %v, want %d", tc.name, len(rep.Violations), rep.Violations, tc.want)
		}
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
		{"decrypt after revoke", []Op{{ID: 1, Kind: OpRevoke, Call: 10, Return: 20, Outcome: Ok}, {ID: 9, Kind: OpDecrypt, Gkid: "k1", Call: 50, Return: 60, Outcome: Ok}}, 1},
		{"encrypt after deactivate", []Op{{ID: 1, Kind: OpDeactivate, Call: 10, Return: 20, Outcome: Ok}, {ID: 9, Kind: OpEncrypt, Gkid: "k1", Call: 50, Return: 60, Outcome: Ok}}, 1},
	} {
		rep := &Report{}
		(&Runner{}).checkRevocations(rep, tc.ops)
		if len(rep.Violations) != tc.want {
			t.Errorf("%s: %d violations %v, want %d", tc.name, len(rep.Violations), rep.Violations, tc.want)
		}
	}
}

// The workload's operation mix sums to 1000, and its state changes keep
// to their share of a partition's keys.
func TestWorkloadPick(t *testing.T) {
	total := 0
	for _, x := range weights {
		total += x.w
	}
	if total != 1000 {
		t.Fatalf("weights sum to %d, want 1000", total)
	}
	w := &Workload{cfg: WorkloadConfig{Parts: 1, MaxKeysPerPart: 800}, pools: make([][]string, 1), count: make([]int, 1),
		sealed: make([][]sealed, 1), retired: make([][]string, 1), marked: []map[string]bool{{}}, deactivated: make([]int, 1), destroyed: make([]int, 1)}
	rng := rand.New(rand.NewPCG(1, 2))
	if k, _, _ := w.pick(rng, OpKeyDestroy, 0); k != OpList {
		t.Fatalf("destroy without keys became %s, want list", k)
	}
	if k, _, _ := w.pick(rng, OpDecrypt, 0); k != OpList {
		t.Fatalf("decrypt without keys became %s, want list", k)
	}
	for i := 0; i < 20; i++ {
		w.pools[0] = append(w.pools[0], fmt.Sprintf("k%d", i))
	}
	if k, gk, _ := w.pick(rng, OpDecrypt, 0); k != OpEncrypt || gk == "" {
		t.Fatalf("decrypt without ciphertexts became %s %q, want an encrypt", k, gk)
	}
	w.sealed[0] = []sealed{{gkid: "k3", ciphertext: []byte("c"), plaintext: "p", op: 7}}
	if k, gk, ct := w.pick(rng, OpDecrypt, 0); k != OpDecrypt || gk != "k3" || ct == nil || ct.op != 7 {
		t.Fatalf("decrypt picked %s %q %v", k, gk, ct)
	}
	targets := map[string]bool{}
	for i := 0; i < 200; i++ {
		for _, k := range []Kind{OpKeyDeactivate, OpKeyDestroy} {
			got, gk, _ := w.pick(rng, k, 0)
			if got != k || gk == "" {
				t.Fatalf("%s became %s %q", k, got, gk)
			}
			targets[gk] = true
		}
	}
	if len(targets) > 20/deactivateShare+20/destroyShare || w.deactivated[0] != 20/deactivateShare || w.destroyed[0] != 20/destroyShare {
		t.Fatalf("state changes went to %d keys (deactivate %d, destroy %d) of 20", len(targets), w.deactivated[0], w.destroyed[0])
	}
}
