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
// partition is a resource with its keys, the reader client that reads them
// and the one grant that lets it. Partitions share nothing, so the history
// is linearizable if and only if each partition's is (porcupine checks them
// separately).
//
// A partition's state:
//   - keys: gkid -> digest of the material ("" until a get shows it);
//   - ghosts: keys created by a generate whose outcome is unknown and not
//     yet seen (a list may show them; a get of an unseen gkid binds one);
//   - grant: whether the reader's rule exists;
//   - active: whether the reader client is active.
//
// An operation with an unknown outcome may take effect at any time after
// its call, or never: its return is taken as the end of time and a write's
// step yields both the state with and without its effect. (A generate's is
// one state: a ghost only ever permits, so the state with one more ghost
// accepts everything the state without it does.) Unknown reads constrain
// nothing. A failed operation changed nothing, and what it says
// must hold: a get refused as PermissionDenied or Unauthenticated needs the
// reader's grant revoked or the reader deactivated; NotFound needs the key
// absent (or, for revoke, the rule).
type partState struct {
	keys   map[string]string
	ghosts int
	grant  bool
	active bool
	// keysHash is the XOR of keyHash over keys, kept as keys change.
	keysHash uint64
}

func keyHash(k, v string) uint64 {
	f := fnv.New64a()
	f.Write([]byte(k))
	f.Write([]byte{0})
	f.Write([]byte(v))
	return f.Sum64()
}

// with returns a copy of s changed by f; f may change keys only through
// set.
func (s partState) with(f func(*partState)) partState {
	n := s
	f(&n)
	return n
}

// set returns a copy of s whose key k has material v.
func (s partState) set(k, v string) partState {
	n := s
	n.keys = make(map[string]string, len(s.keys)+1)
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

func (s partState) mayRead() bool { return s.grant && s.active }

func denied(code string) bool {
	return code == codes.PermissionDenied.String() || code == codes.Unauthenticated.String()
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
			return []any{s.set(op.Gkid, "")}
		case Unknown:
			return []any{s.with(func(n *partState) { n.ghosts++ })}
		}
		return one
	case OpGet:
		switch op.Outcome {
		case Ok:
			if !s.mayRead() {
				return nil
			}
			m, ok := s.keys[op.Gkid]
			switch {
			case ok && m == op.Material:
				return one
			case ok && m == "":
				return []any{s.set(op.Gkid, op.Material)}
			case !ok && s.ghosts > 0:
				n := s.set(op.Gkid, op.Material)
				n.ghosts--
				return []any{n}
			}
			return nil
		case Failed:
			if denied(op.Code) && s.mayRead() {
				if _, ok := s.keys[op.Gkid]; ok {
					return nil
				}
			}
			if op.Code == codes.NotFound.String() {
				if _, ok := s.keys[op.Gkid]; ok {
					return nil
				}
			}
		}
		return one
	case OpDescribe:
		_, ok := s.keys[op.Gkid]
		if op.Outcome == Ok && !ok && s.ghosts == 0 {
			return nil
		}
		if op.Outcome == Failed && op.Code == codes.NotFound.String() && ok {
			return nil
		}
		return one
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
		Init:  func() []any { return []any{partState{keys: map[string]string{}, grant: true, active: true}} },
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
				s += " m=" + op.Material[:12]
			}
			if op.Kind == OpList && op.Outcome == Ok {
				s += fmt.Sprintf(" %d keys", len(op.Keys))
			}
			return s
		},
		DescribeState: func(a any) string {
			s := a.(partState)
			var b strings.Builder
			fmt.Fprintf(&b, "grant=%v active=%v keys=%d ghosts=%d", s.grant, s.active, len(s.keys), s.ghosts)
			return b.String()
		},
	}
	return nm.ToModel()
}

// porcupineHistory turns recorded operations into porcupine's: an unknown
// write's return is the end of time.
func porcupineHistory(ops []Op) []porcupine.Operation {
	out := make([]porcupine.Operation, 0, len(ops))
	for _, op := range ops {
		ret := op.Return
		if op.Outcome == Unknown && op.Kind.isWrite() {
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
