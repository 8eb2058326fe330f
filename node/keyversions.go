package node

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// Key versions: rotation adds a version of a key's material under the same
// GKID, retirement deletes an older version's material. Both are writes
// like a state change (rows of the write table): the leader authorises them
// against the key's resource ("rotate"; "destroy" for a retirement), builds
// and seals the next record, and proposes it with the request's audit
// entry; Apply checks that only the versions changed (fsm/keyversions.go).
// The leader also rotates keys on its own when their use policy says so, or
// before their newest version nears the random-nonce bound (maintainKeys).

func validateRotateKey(req *cofferv1.RotateKeyRequest) error {
	if err := validateGKID(req.GetGkid()); err != nil {
		return err
	}
	return validReason(req.GetReason(), maxStateReason)
}

func validateRetireKeyVersion(req *cofferv1.RetireKeyVersionRequest) error {
	if err := validateGKID(req.GetGkid()); err != nil {
		return err
	}
	if req.GetVersion() == 0 {
		return fmt.Errorf("%w: name the version to retire (versions start at 1)", ErrInvalidArgument)
	}
	return validReason(req.GetReason(), maxStateReason)
}

// rotateKey executes RotateKey on the leader.
func (s *service) rotateKey(ctx context.Context, r *request, req *cofferv1.RotateKeyRequest) (*cofferv1.RotateKeyResponse, error) {
	if err := s.replica.ensureLeaderReady(); err != nil {
		return nil, err
	}
	cur, err := s.decideHere(r.caller, authz.OpRotate, req.GetGkid(), r.entry, time.Now())
	if err != nil {
		return nil, err
	}
	r.entry.Gkid = req.GetGkid()
	rec, err := s.rotate(ctx, r, cur, req.GetReason())
	if err != nil {
		return nil, err
	}
	return &cofferv1.RotateKeyResponse{Key: s.describe(rec)}, nil
}

// rotate builds and proposes cur's next version: fresh material from the
// keystore, sealed under the policy's current KEK with its own escrow
// copies; the newest version's material re-sealed as an older version, its
// escrow copies kept with it. r.entry records the versions.
func (s *service) rotate(ctx context.Context, r *request, cur *cofferv1.KeyRecord, reason string) (*cofferv1.KeyRecord, error) {
	id := cur.GetGkid()
	now := time.Now()
	if st := authz.KeyStateAt(cur, now); st != cofferv1.KeyState_KEY_STATE_ACTIVE {
		return nil, fmt.Errorf("%w: key %s is %s; only an active key is rotated", fsm.ErrKeyState, id, authz.StateName(st))
	}
	n, _, _, _ := materialLen(cur.GetAlgorithm())
	if n == 0 {
		return nil, fmt.Errorf("%w: key %s is %v, which the service does not generate", ErrPrecondition, id, cur.GetAlgorithm())
	}
	pol, err := s.barrier.VerifiedPolicy(cur.GetPolicy())
	if err != nil {
		return nil, err
	}
	old, err := s.barrier.OpenKey(cur)
	if err != nil {
		return nil, err
	}
	defer clear(old)
	fresh, err := s.barrier.Random(n)
	if err != nil {
		return nil, fmt.Errorf("draw random bytes: %w", err)
	}
	defer clear(fresh)
	from := authz.NewestVersion(cur)
	next := proto.CloneOf(cur)
	kept := &cofferv1.KeyVersionRecord{Version: from, CreatedUnixNano: authz.NewestVersionCreated(cur).UnixNano(), Escrow: cur.GetEscrow()}
	if err := s.barrier.SealVersion(pol, next, kept, old); err != nil {
		return nil, err
	}
	next.Versions = append(next.Versions, kept)
	next.Version, next.VersionCreatedUnixNano, next.Revision = from+1, now.UnixNano(), cur.GetRevision()+1
	if next.Escrow, err = escrowCopies(pol, id, fresh); err != nil {
		return nil, err
	}
	if err := s.barrier.SealKey(pol, next, fresh); err != nil {
		return nil, err
	}
	e := r.entry
	e.Resource, e.Policy, e.KeyVersion = cur.GetResource(), cur.GetPolicy(), from+1
	e.Reason = clip("version "+strconv.FormatUint(uint64(from), 10)+" -> "+strconv.FormatUint(uint64(from+1), 10)+reasonSuffix(reason), maxStateReason+64)
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_CHANGE_KEY,
		&cofferv1.ChangeKeyCommand{Key: next, ExpectedRevision: cur.GetRevision(), Audit: e, Change: cofferv1.ChangeKeyCommand_CHANGE_ROTATE})
	if err != nil {
		return nil, err
	}
	metricKeyRotations.Inc()
	return res.Key, nil
}

// retireKeyVersion executes RetireKeyVersion on the leader: the version's
// material and escrow copies leave the record (the newest version's
// material is re-sealed, since the record's associated data covers its
// older versions).
func (s *service) retireKeyVersion(ctx context.Context, r *request, req *cofferv1.RetireKeyVersionRequest) (*cofferv1.RetireKeyVersionResponse, error) {
	if err := s.replica.ensureLeaderReady(); err != nil {
		return nil, err
	}
	id, v := req.GetGkid(), req.GetVersion()
	now := time.Now()
	cur, err := s.decideHere(r.caller, authz.OpDestroy, id, r.entry, now)
	if err != nil {
		return nil, err
	}
	e := r.entry
	e.Gkid, e.KeyVersion = id, v
	if cur.GetState() == cofferv1.KeyState_KEY_STATE_DESTROYED {
		return nil, fmt.Errorf("%w: key %s is destroyed; every version's material is gone", fsm.ErrKeyState, id)
	}
	newest := authz.NewestVersion(cur)
	old := authz.OlderVersion(cur, v)
	switch {
	case v == newest:
		return nil, fmt.Errorf("%w: version %d is key %s's newest; rotate the key first, or destroy it", ErrPrecondition, v, id)
	case old == nil:
		return nil, fmt.Errorf("%w: key %s has no version %d; its newest is %d", ErrNotFound, id, v, newest)
	case old.GetRetiredUnixNano() != 0:
		// Already retired (a retry of an acknowledged retirement): nothing
		// changes, and the entry says so.
		e.Reason = clip("version "+strconv.FormatUint(uint64(v), 10)+" retired, unchanged"+reasonSuffix(req.GetReason()), maxStateReason+64)
		return &cofferv1.RetireKeyVersionResponse{Key: s.describe(cur)}, nil
	}
	e.Reason = "version " + strconv.FormatUint(uint64(v), 10) + " retired" + reasonSuffix(req.GetReason())
	e.Reason = clip(e.GetReason(), maxStateReason+64)
	var keep time.Time // escrow copies kept until then (zero: not kept)
	if n := len(old.GetEscrow()); n > 0 && !req.GetDestroyEscrow() {
		what := escrowDeletion{material: fmt.Sprintf("version %d of key %s", v, id), deleting: "retiring it", command: "coffer key retire"}
		if keep, err = s.escrowKept(cur, n, now, e, what); err != nil {
			return nil, err
		}
	}
	next := proto.CloneOf(cur)
	next.Revision = cur.GetRevision() + 1
	for _, x := range next.GetVersions() {
		if x.GetVersion() == v {
			x.WrappedMaterial, x.RetiredUnixNano = nil, now.UnixNano()
			x.Escrow, x.EscrowPurgeUnixNano = keptCopies(x.GetEscrow(), 0, keep)
		}
	}
	if err := s.reseal(cur, next); err != nil {
		return nil, err
	}
	res, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_CHANGE_KEY,
		&cofferv1.ChangeKeyCommand{Key: next, ExpectedRevision: cur.GetRevision(), Audit: e, Change: cofferv1.ChangeKeyCommand_CHANGE_RETIRE})
	if err != nil {
		return nil, err
	}
	return &cofferv1.RetireKeyVersionResponse{Key: s.describe(res.Key)}, nil
}

// Bounds of one rotation scan: how many key records one step reads, and
// how many keys one scan rotates (each is a Raft write; the rest wait for
// the next scan, so that a policy whose keys all fall due at once does not
// hold the leader's loop, which also signs checkpoints and admits members).
const (
	rotationPage        = 500
	maxRotationsPerScan = 100
)

// maintainKeys rotates, on the leader, every active key whose use policy's
// rotation period or count has come, or whose newest version nears the
// random-nonce bound (authz.RotationDue), and deletes escrow copies whose
// retention ended (purgeEscrow). Each rotation is a write with its
// own audit entry, whose caller is this node. It returns how many keys it
// rotated, at most maxRotationsPerScan; a key that fails to rotate is logged
// and left to the next scan.
func (s *service) maintainKeys(ctx context.Context) (int, error) {
	done, token := 0, ""
	for {
		recs, next, err := s.fsm.ListKeys(fsm.ListFilter{}, token, rotationPage)
		if err != nil {
			return done, err
		}
		for _, rec := range recs {
			if ctx.Err() != nil {
				return done, ctx.Err()
			}
			now := time.Now()
			count, err := s.fsm.Encryptions(rec.GetGkid(), authz.NewestVersion(rec))
			if err != nil {
				return done, err
			}
			if purged, n := fsm.PurgeExpiredEscrow(rec, now.UnixNano()); n > 0 {
				if err := s.purgeEscrow(ctx, rec, purged, n, now); err != nil && !errors.Is(err, fsm.ErrConflict) {
					s.logger.Warn("purging escrow copies past their retention failed; will retry", "gkid", rec.GetGkid(), "err", err)
				}
				continue // a rotation, if due, waits for the next scan
			}
			due, why := authz.RotationDue(rec, count, now)
			if !due {
				continue
			}
			if done == maxRotationsPerScan {
				return done, nil
			}
			r := &request{entry: &cofferv1.AuditEntry{TimeUnixNano: now.UnixNano(), Node: s.cfg.ID, Caller: "node:" + s.cfg.ID,
				Operation: string(authz.OpRotate), Gkid: rec.GetGkid(), Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED}}
			if _, err := s.rotate(ctx, r, rec, "automatic: "+why); err != nil {
				if errors.Is(err, fsm.ErrConflict) || errors.Is(err, fsm.ErrKeyState) {
					continue // changed meanwhile: the next scan sees it as it is
				}
				s.logger.Warn("automatic key rotation failed; will retry", "gkid", rec.GetGkid(), "err", err)
				continue
			}
			done++
		}
		if next == "" {
			return done, nil
		}
		token = next
	}
}

// purgeEscrow proposes purged, rec less the n escrow copies whose
// retention ended (fsm.PurgeExpiredEscrow), as the next revision: the
// newest material re-sealed if the key still has it.
func (s *service) purgeEscrow(ctx context.Context, rec, purged *cofferv1.KeyRecord, n int, now time.Time) error {
	purged.Revision = rec.GetRevision() + 1
	if len(rec.GetWrappedMaterial()) > 0 {
		if err := s.reseal(rec, purged); err != nil {
			return err
		}
	}
	r := &request{entry: &cofferv1.AuditEntry{TimeUnixNano: now.UnixNano(), Node: s.cfg.ID, Caller: "node:" + s.cfg.ID,
		Operation: string(authz.OpDestroy), Gkid: rec.GetGkid(), Resource: rec.GetResource(), Policy: rec.GetPolicy(),
		Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, Reason: fmt.Sprintf("automatic: %d escrow copies purged, their retention ended", n)}}
	_, err := proposeCommand(s.replica, ctx, r, cofferv1.CommandType_COMMAND_TYPE_CHANGE_KEY,
		&cofferv1.ChangeKeyCommand{Key: purged, ExpectedRevision: rec.GetRevision(), Audit: r.entry, Change: cofferv1.ChangeKeyCommand_CHANGE_PURGE_ESCROW})
	return err
}
