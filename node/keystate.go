package node

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// The key life cycle: SetKeyState moves a key through its states
// (cofferv1.KeyState). It is a write like any other (a row of the write
// table): the leader authorises it against the key's resource ("state", or
// "destroy" for DESTROYED), checks the transition, builds the next record
// (the material re-sealed under the record's new associated data, or gone
// for DESTROYED) and proposes it with the request's audit entry, which names
// the old and new state. Apply checks the transition again against
// committed state; from then on every node decides every use of the key
// with the new state (authz.Snapshot.DecideKeyRead).

// maxStateReason bounds SetKeyStateRequest.reason.
const maxStateReason = 256

// stateOp is the operation that moving a key to state to needs.
func stateOp(to cofferv1.KeyState) authz.Op {
	if to == cofferv1.KeyState_KEY_STATE_DESTROYED {
		return authz.OpDestroy
	}
	return authz.OpState
}

func validateSetKeyState(req *cofferv1.SetKeyStateRequest) error {
	if err := validateGKID(req.GetGkid()); err != nil {
		return err
	}
	switch req.GetState() {
	case cofferv1.KeyState_KEY_STATE_ACTIVE, cofferv1.KeyState_KEY_STATE_DEACTIVATED,
		cofferv1.KeyState_KEY_STATE_COMPROMISED, cofferv1.KeyState_KEY_STATE_DESTROYED:
	default:
		return fmt.Errorf("%w: a key can be moved to ACTIVE, DEACTIVATED, COMPROMISED or DESTROYED, not %v", ErrInvalidArgument, req.GetState())
	}
	if err := validReason(req.GetReason(), maxStateReason); err != nil {
		return err
	}
	if req.GetDestroyEscrow() && req.GetState() != cofferv1.KeyState_KEY_STATE_DESTROYED {
		return fmt.Errorf("%w: destroy_escrow goes with state DESTROYED", ErrInvalidArgument)
	}
	return nil
}

// setKeyState executes a state change on the leader.
func (s *service) setKeyState(ctx context.Context, r *request, req *cofferv1.SetKeyStateRequest) (*cofferv1.SetKeyStateResponse, error) {
	c, id, to := r.caller, req.GetGkid(), req.GetState()
	op := stateOp(to)
	r.entry.Operation = string(op)
	if err := s.replica.ensureLeaderReady(); err != nil {
		return nil, err
	}
	now := time.Now()
	cur, err := s.decideHere(c, op, id, r.entry, now)
	if err != nil {
		return nil, err
	}
	e := r.entry
	e.Gkid = id
	from := authz.KeyStateAt(cur, now)
	if from == to {
		// Already there (a retry of a change that was acknowledged, or a
		// second officer): nothing changes, and the entry says so.
		e.Reason = clip("state "+authz.StateName(to)+", unchanged"+reasonSuffix(req.GetReason()), maxStateReason+64)
		return &cofferv1.SetKeyStateResponse{Key: keyMetadata(cur)}, nil
	}
	e.Reason = clip("state "+authz.StateName(from)+" -> "+authz.StateName(to)+reasonSuffix(req.GetReason()), maxStateReason+64)
	if !authz.KeyTransitionAllowed(from, to) {
		return nil, fmt.Errorf("%w: key %s is %s and cannot become %s", fsm.ErrKeyState, id, authz.StateName(from), authz.StateName(to))
	}
	var keep time.Time // escrow copies kept until then (zero: not kept)
	if n := escrowCopiesOf(cur); to == cofferv1.KeyState_KEY_STATE_DESTROYED && n > 0 && !req.GetDestroyEscrow() {
		what := escrowDeletion{material: "key " + id, after: " after a destroy", deleting: "destroying the key", command: "coffer key destroy"}
		if keep, err = s.escrowKept(cur, n, now, e, what); err != nil {
			return nil, err
		}
	}
	next := proto.CloneOf(cur)
	next.State, next.Revision, next.StateChangedUnixNano = to, cur.GetRevision()+1, now.UnixNano()
	if to == cofferv1.KeyState_KEY_STATE_COMPROMISED {
		next.Compromised = true
	}
	if to == cofferv1.KeyState_KEY_STATE_DESTROYED {
		// Crypto-shredding: the next record carries no wrapped material of
		// any version, and escrow copies only until the policy's retention
		// ends (keep), if it has one and destroy_escrow was not asked.
		next.WrappedMaterial = nil
		next.Escrow, next.EscrowPurgeUnixNano = keptCopies(next.GetEscrow(), 0, keep)
		for _, v := range next.GetVersions() {
			v.WrappedMaterial = nil
			v.Escrow, v.EscrowPurgeUnixNano = keptCopies(v.GetEscrow(), v.GetEscrowPurgeUnixNano(), keep)
			if v.GetRetiredUnixNano() == 0 {
				v.RetiredUnixNano = now.UnixNano()
			}
		}
	} else if err := s.reseal(cur, next); err != nil {
		return nil, err
	}
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_SET_KEY_STATE,
		&cofferv1.SetKeyStateCommand{Key: next, ExpectedRevision: cur.GetRevision(), Audit: e})
	if err != nil {
		return nil, err
	}
	return &cofferv1.SetKeyStateResponse{Key: keyMetadata(res.Key)}, nil
}

// reseal seals cur's material into next, whose associated data differs
// (state, revision, times): the keystore opens it under cur's and seals it
// under next's, with the policy's current KEK.
func (s *service) reseal(cur, next *cofferv1.KeyRecord) error {
	material, err := s.barrier.OpenKey(cur)
	if err != nil {
		return err
	}
	defer clear(material)
	pol, err := s.barrier.VerifiedPolicy(cur.GetPolicy())
	if err != nil {
		return err
	}
	return s.barrier.SealKey(pol, next, material)
}

func reasonSuffix(reason string) string {
	if reason == "" {
		return ""
	}
	return ": " + reason
}

// escrowCopiesOf counts the escrow copies of every version of rec.
func escrowCopiesOf(rec *cofferv1.KeyRecord) int {
	n := len(rec.GetEscrow())
	for _, v := range rec.GetVersions() {
		n += len(v.GetEscrow())
	}
	return n
}

// escrowDeletion names, for escrowKept's words, material being deleted
// that has escrow copies.
type escrowDeletion struct {
	material, after, deleting, command string
}

// escrowKept is when the n escrow copies of rec's material, deleted at now
// without destroy_escrow, are purged under its policy's escrow retention,
// and says so in e's reason. A policy without a retention keeps none: the
// deletion is refused until destroy_escrow deletes the copies with it.
func (s *service) escrowKept(rec *cofferv1.KeyRecord, n int, now time.Time, e *cofferv1.AuditEntry, d escrowDeletion) (time.Time, error) {
	pol, err := s.barrier.VerifiedPolicy(rec.GetPolicy())
	if err != nil {
		return time.Time{}, err
	}
	keep := time.Duration(pol.GetEscrowRetentionNanos())
	if keep <= 0 {
		return time.Time{}, fmt.Errorf("%w: %s has %d escrow copies, the last way to recover it, and policy %s keeps none%s (no escrow retention); %s destroys them too: ask again with destroy_escrow (%s --destroy-escrow)",
			ErrPrecondition, d.material, n, rec.GetPolicy(), d.after, d.deleting, d.command)
	}
	until := now.Add(keep)
	e.Reason = clip(e.GetReason()+fmt.Sprintf("; %d escrow copies kept until %s (escrow retention of policy %s)", n, until.UTC().Format(time.RFC3339), rec.GetPolicy()), maxStateReason+128)
	return until, nil
}

// keptCopies is what stays of escrow copies whose material is deleted: the
// copies until keep (an earlier purge time stands), or nothing when keep is
// zero.
func keptCopies(copies []*cofferv1.EscrowCopy, purge int64, keep time.Time) ([]*cofferv1.EscrowCopy, int64) {
	if keep.IsZero() || len(copies) == 0 {
		return nil, 0
	}
	if purge != 0 && purge < keep.UnixNano() {
		return copies, purge
	}
	return copies, keep.UnixNano()
}
