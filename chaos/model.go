package chaos

import (
	"fmt"
	"hash/fnv"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
)

// The model the history is checked against, one partition at a time: a
// partition is a resource with its keys, the reader client that uses them
// and the one grant that lets it. Partitions share nothing, so the history
// is linearizable if and only if each partition's is (porcupine checks them
// separately).
//
// A partition's state:
//   - keys: gkid -> the key's material digest ("" until a get shows it)
//     and its life-cycle state (active, deactivated, destroyed), with the
//     changes of unknown outcome that may still take effect (pending);
//   - ghosts: keys created by a generate whose outcome is unknown and not
//     yet seen (a list may show them; the first operation that proves a
//     gkid exists binds one to it, active and unread);
//   - grant: whether the reader's rule exists;
//   - active: whether the reader client is active.
//
// The reader's uses of a key (get, encrypt, decrypt) need the grant and an
// active reader ("may read"). Get and encrypt need the key active, decrypt
// only not destroyed; a decrypt must return the plaintext the encrypt that
// made its ciphertext sent (only acknowledged encrypts feed decrypts). A
// state change (deactivate: from active; destroy: from any state) moves
// the key; asking for the state it is in succeeds and changes nothing;
// describe returns the current state.
//
// An operation with an unknown outcome may take effect at any time after
// its call, or never: its return is taken as the end of time and a write's
// step yields both the state with and without its effect. Two kinds of
// write keep that to one state instead, taken within the write's own call
// and return (lingers), so that the set of states a partition may be in
// does not double with each:
//   - a generate's leaves one more ghost: a ghost only ever permits, so the
//     state with one more ghost accepts everything the state without it
//     does;
//   - a key state change's is pending on its key. A key's states only move
//     forward (active, deactivated, destroyed) and repeating a change does
//     nothing, so a key with pending changes may be in its recorded state
//     or in any state they reach; an operation that observes it keeps the
//     lowest state that fits what it saw, from which the pending changes
//     still reach the others.
//
// Unknown reads constrain nothing. A failed operation changed nothing, and
// what it says must hold, in the order the cluster decides (caller, key,
// grant, key state):
//   - PermissionDenied or Unauthenticated on a use needs the reader unable
//     to read, or the key absent (a refusal hides whether it exists);
//   - FailedPrecondition on a use needs the reader able to read and the
//     key in a state that refuses it; on a state change, a key whose state
//     cannot become the one asked for;
//   - NotFound needs the key absent (for revoke: the rule);
//   - AlreadyExists on a grant needs the rule present.
//
// Other refusals (InvalidArgument, Aborted for a concurrent change of the
// same key, ...) constrain nothing.
type partState struct {
	keys   map[string]key
	ghosts int
	grant  bool
	active bool
	// keysHash is the XOR of keyHash over keys, kept as keys change.
	keysHash uint64
}

// keyState is a key's life-cycle state; the zero value is active.
type keyState uint8

const (
	keyActive keyState = iota
	keyDeactivated
	keyDestroyed
)

func (k keyState) String() string {
	switch k {
	case keyActive:
		return StateActive
	case keyDeactivated:
		return StateDeactivated
	case keyDestroyed:
		return StateDestroyed
	}
	return fmt.Sprintf("state(%d)", uint8(k))
}

// parseState reads Op.State; ok is false for any other state.
func parseState(s string) (keyState, bool) {
	switch s {
	case StateActive:
		return keyActive, true
	case StateDeactivated:
		return keyDeactivated, true
	case StateDestroyed:
		return keyDestroyed, true
	}
	return 0, false
}

// canBecome reports whether a key in state from may move to state to (to
// different from from): deactivated from active, destroyed from any.
func canBecome(from, to keyState) bool {
	switch to {
	case keyDeactivated:
		return from == keyActive
	case keyDestroyed:
		return from != keyDestroyed
	}
	return false
}

// allows reports whether a key in state st may be used by the reader for
// op: get and encrypt while active, decrypt until destroyed.
func (st keyState) allows(op Kind) bool {
	if op == OpDecrypt {
		return st != keyDestroyed
	}
	return st == keyActive
}

// key is what the model knows of a key. It is comparable.
type key struct {
	// material is the digest of the material; "" until a get shows it.
	material string
	// state is the lowest state the key may be in; pending holds the
	// states (bit 1<<state) changes of unknown outcome may still move it
	// to, only those above state.
	state   keyState
	pending uint8
}

// may reports whether k may be in state x: its own, or one its pending
// changes reach (deactivated only from active, destroyed from any).
func (k key) may(x keyState) bool {
	switch {
	case x == k.state:
		return true
	case x == keyDeactivated:
		return k.state == keyActive && k.pending&(1<<keyDeactivated) != 0
	case x == keyDestroyed:
		return k.pending&(1<<keyDestroyed) != 0
	}
	return false
}

// observe returns k as an operation that saw it in a state fits finds it:
// in the lowest such state it may be in, with its pending changes above
// it. ok is false if k may be in none.
func (k key) observe(fits func(keyState) bool) (key, bool) {
	for x := keyActive; x <= keyDestroyed; x++ {
		if k.may(x) && fits(x) {
			k.state = x
			return k.normal(), true
		}
	}
	return k, false
}

// normal drops the pending changes that can no longer move k.
func (k key) normal() key {
	for x := keyActive; x <= k.state; x++ {
		k.pending &^= 1 << x
	}
	return k
}

func keyHash(k string, v key) uint64 {
	f := fnv.New64a()
	f.Write([]byte(k))
	f.Write([]byte{0})
	f.Write([]byte(v.material))
	f.Write([]byte{0, byte(v.state), v.pending})
	return f.Sum64()
}

// with returns a copy of s changed by f; f may change keys only through
// set.
func (s partState) with(f func(*partState)) partState {
	n := s
	f(&n)
	return n
}

// set returns a copy of s whose key k is v.
func (s partState) set(k string, v key) partState {
	n := s
	n.keys = make(map[string]key, len(s.keys)+1)
	for kk, vv := range s.keys {
		n.keys[kk] = vv
	}
	if old, ok := s.keys[k]; ok {
		n.keysHash ^= keyHash(k, old)
	}
	n.keys[k] = v
	n.keysHash ^= keyHash(k, v)
	return n
}

// bind returns key gk as an operation that proves it exists sees it, and
// the state in which it does: s itself if the model knows gk, or s with
// one ghost bound to gk (active, unread). ok is false if gk cannot exist.
func (s partState) bind(gk string) (key, partState, bool) {
	if k, ok := s.keys[gk]; ok {
		return k, s, true
	}
	if s.ghosts == 0 {
		return key{}, s, false
	}
	n := s.set(gk, key{})
	n.ghosts--
	return key{}, n, true
}

func (s partState) mayRead() bool { return s.grant && s.active }

func denied(code string) bool {
	return code == codes.PermissionDenied.String() || code == codes.Unauthenticated.String()
}

// refusedUse checks a failed get, encrypt or decrypt against s.
func refusedUse(s partState, op Op) []any {
	k, present := s.keys[op.Gkid]
	switch {
	case denied(op.Code):
		if s.mayRead() && present {
			return nil
		}
	case op.Code == codes.NotFound.String():
		if present {
			return nil
		}
	case op.Code == codes.FailedPrecondition.String():
		// An unbound ghost is active: it allows every use.
		if !present || !s.mayRead() {
			return nil
		}
		k, ok := k.observe(func(x keyState) bool { return !x.allows(op.Kind) })
		if !ok {
			return nil
		}
		return []any{s.set(op.Gkid, k)}
	}
	return []any{s}
}

func stepPart(state, in, _ any) []any {
	s, op := state.(partState), in.(Op)
	one := []any{s}
	if op.Outcome == Unknown && !op.Kind.isWrite() {
		return one
	}
	switch op.Kind {
	case OpGenerate:
		switch op.Outcome {
		case Ok:
			if _, dup := s.keys[op.Gkid]; dup {
				return nil
			}
			return []any{s.set(op.Gkid, key{})}
		case Unknown:
			return []any{s.with(func(n *partState) { n.ghosts++ })}
		}
		return one
	case OpGet, OpEncrypt, OpDecrypt:
		if op.Outcome == Failed {
			return refusedUse(s, op)
		}
		k, n, ok := s.bind(op.Gkid)
		if !ok || !s.mayRead() {
			return nil
		}
		if k, ok = k.observe(func(x keyState) bool { return x.allows(op.Kind) }); !ok {
			return nil
		}
		switch op.Kind {
		case OpDecrypt:
			if op.Plaintext != op.Want {
				return nil
			}
		case OpGet:
			switch k.material {
			case op.Material:
			case "":
				k.material = op.Material
			default:
				return nil
			}
		}
		return []any{n.set(op.Gkid, k)}
	case OpDescribe:
		if op.Outcome == Failed {
			if _, ok := s.keys[op.Gkid]; ok && op.Code == codes.NotFound.String() {
				return nil
			}
			return one
		}
		k, n, ok := s.bind(op.Gkid)
		if !ok {
			return nil
		}
		if op.State == "" {
			return []any{n}
		}
		st, known := parseState(op.State)
		if k, ok = k.observe(func(x keyState) bool { return x == st }); !known || !ok {
			return nil
		}
		return []any{n.set(op.Gkid, k)}
	case OpList:
		if op.Outcome != Ok {
			return one
		}
		got := make(map[string]bool, len(op.Keys))
		for _, g := range op.Keys {
			got[g] = true
		}
		for g := range s.keys {
			if !got[g] {
				return nil
			}
		}
		if len(got)-len(s.keys) > s.ghosts {
			return nil
		}
		return one
	case OpKeyRotate:
		return stepRotate(s, op)
	case OpKeyDeactivate, OpKeyDestroy:
		to := keyDeactivated
		if op.Kind == OpKeyDestroy {
			to = keyDestroyed
		}
		k, n, ok := s.bind(op.Gkid)
		switch op.Outcome {
		case Ok:
			if !ok {
				return nil
			}
			if k, ok = k.observe(func(x keyState) bool { return x == to || canBecome(x, to) }); !ok {
				return nil
			}
			k.state = to
			return []any{n.set(op.Gkid, k.normal())}
		case Unknown:
			if !ok {
				return one
			}
			k.pending |= 1 << to
			return []any{n.set(op.Gkid, k.normal())}
		}
		k, present := s.keys[op.Gkid]
		switch op.Code {
		case codes.NotFound.String():
			if present {
				return nil
			}
		case codes.FailedPrecondition.String():
			// "cannot become": an unbound ghost is active, and both
			// changes are allowed from active.
			if !present {
				return nil
			}
			if k, ok = k.observe(func(x keyState) bool { return x != to && !canBecome(x, to) }); !ok {
				return nil
			}
			return []any{s.set(op.Gkid, k)}
		}
		return one
	case OpGrant, OpRevoke, OpActivate, OpDeactivate:
		apply := func(n *partState) {
			switch op.Kind {
			case OpGrant:
				n.grant = true
			case OpRevoke:
				n.grant = false
			case OpActivate:
				n.active = true
			case OpDeactivate:
				n.active = false
			}
		}
		switch op.Outcome {
		case Ok:
			return []any{s.with(apply)}
		case Unknown:
			return []any{s, s.with(apply)}
		}
		// The rule has a fixed id: a grant of an existing rule is refused
		// as AlreadyExists, a revoke of a missing one as NotFound.
		if op.Kind == OpRevoke && op.Code == codes.NotFound.String() && s.grant ||
			op.Kind == OpGrant && op.Code == codes.AlreadyExists.String() && !s.grant {
			return nil
		}
		return one
	}
	return nil
}

func equalPart(a, b any) bool {
	x, y := a.(partState), b.(partState)
	if x.ghosts != y.ghosts || x.grant != y.grant || x.active != y.active || x.keysHash != y.keysHash || len(x.keys) != len(y.keys) {
		return false
	}
	for k, v := range x.keys {
		if w, ok := y.keys[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func hashPart(a any) uint64 {
	s := a.(partState)
	h := s.keysHash*31 + uint64(s.ghosts)
	if s.grant {
		h = h*31 + 1
	}
	if s.active {
		h = h*31 + 2
	}
	return h
}

// lingers reports whether the model's step of an unknown write of kind k
// keeps its effect possible at any later time (a generate's ghost, a key
// state change pending on its key). Such a write is linearized within its
// own call and return: taking its step there permits everything taking it
// later would, and a write whose return is the end of time stays a
// candidate at every point of the search, which multiplies the orders the
// checker must try before it can call a history illegal.
func lingers(k Kind) bool {
	return k == OpGenerate || k == OpKeyDeactivate || k == OpKeyDestroy
}

// Model is the porcupine model of the workload.
func Model() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			by := map[int][]porcupine.Operation{}
			for _, o := range h {
				p := o.Input.(Op).Part
				by[p] = append(by[p], o)
			}
			keys := make([]int, 0, len(by))
			for p := range by {
				keys = append(keys, p)
			}
			sort.Ints(keys)
			var out [][]porcupine.Operation
			for _, p := range keys {
				out = append(out, by[p])
			}
			return out
		},
		Init:  func() []any { return []any{partState{keys: map[string]key{}, grant: true, active: true}} },
		Step:  stepPart,
		Equal: equalPart,
		Hash:  hashPart,
		DescribeOperation: func(in, _ any) string {
			op := in.(Op)
			s := fmt.Sprintf("#%d %s@%s %s", op.ID, op.Kind, op.Node, op.Outcome)
			if op.Code != "" {
				s += " " + op.Code
			}
			if op.Gkid != "" {
				s += " " + op.Gkid
			}
			if op.Material != "" {
				s += " m=" + short(op.Material)
			}
			if op.State != "" {
				s += " state=" + op.State
			}
			if op.Plaintext != "" {
				s += " p=" + short(op.Plaintext)
			}
			if op.Kind == OpDecrypt {
				s += fmt.Sprintf(" of #%d want=%s", op.Encrypted, short(op.Want))
			}
			if op.Kind == OpList && op.Outcome == Ok {
				s += fmt.Sprintf(" %d keys", len(op.Keys))
			}
			return s
		},
		DescribeState: func(a any) string {
			s := a.(partState)
			var b strings.Builder
			n := map[keyState]int{}
			for _, k := range s.keys {
				n[k.state]++
			}
			fmt.Fprintf(&b, "grant=%v active=%v keys=%d (deactivated %d, destroyed %d) ghosts=%d", s.grant, s.active, len(s.keys), n[keyDeactivated], n[keyDestroyed], s.ghosts)
			return b.String()
		},
	}
	return nm.ToModel()
}

// porcupineHistory turns recorded operations into porcupine's: an unknown
// write's return is the end of time, except where the model's step keeps
// its effect possible from then on (lingers).
func porcupineHistory(ops []Op) []porcupine.Operation {
	out := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		ret := op.Return
		if op.Outcome == Unknown && op.Kind.isWrite() && !lingers(op.Kind) {
			ret = math.MaxInt64
		}
		out = append(out, porcupine.Operation{ClientId: op.Worker, Input: op, Output: op, Call: op.Call, Return: ret})
	}
	return out
}

// Linearizable checks the history against Model within timeout and, when
// it is not linearizable and vizPath is set, writes porcupine's
// visualisation there.
func Linearizable(ops []Op, timeout time.Duration, vizPath string) (porcupine.CheckResult, error) {
	m := Model()
	res, info := porcupine.CheckOperationsVerbose(m, porcupineHistory(ops), timeout)
	if res == porcupine.Illegal && vizPath != "" {
		if err := porcupine.VisualizePath(m, info, vizPath); err != nil {
			return res, err
		}
	}
	return res, nil
}

// stepRotate is a rotation: acknowledged, the key was active at that point
// (nothing the model holds changes: gets read version 1, decrypts any
// version); refused as FailedPrecondition, it was not; refused as NotFound,
// the key was unknown there.
func stepRotate(s partState, op Op) []any {
	one := []any{s}
	if op.Outcome == Unknown {
		return one
	}
	k, present := s.keys[op.Gkid]
	switch {
	case op.Outcome == Ok:
		k, n, ok := s.bind(op.Gkid)
		if !ok {
			return nil
		}
		if k, ok = k.observe(func(x keyState) bool { return x == keyActive }); !ok {
			return nil
		}
		return []any{n.set(op.Gkid, k)}
	case op.Code == codes.NotFound.String():
		if present {
			return nil
		}
	case op.Code == codes.FailedPrecondition.String():
		// An unbound ghost is active: it rotates.
		if !present {
			return nil
		}
		k, ok := k.observe(func(x keyState) bool { return x != keyActive })
		if !ok {
			return nil
		}
		return []any{s.set(op.Gkid, k)}
	}
	return one
}
