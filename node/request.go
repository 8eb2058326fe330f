package node

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/fsm"
)

// request is one request's passage through the service layer, whatever door
// it came in by: who asks, its audit entry (operation, target, outcome), and
// whether that entry is carried by a Raft command. The door creates it once
// (beginRequest, or Forward for a write another node accepted) and hands it
// to the service code explicitly; finishRequest is the one place that gives
// the request its entry if nothing carried it, so every request ends with
// exactly one.
type request struct {
	caller caller
	// authErr is why the caller could not be authenticated (the entry then
	// names "unauthenticated"); nil otherwise.
	authErr error
	entry   *cofferv1.AuditEntry
	// carried is set while the entry rides in a proposed command (or, for a
	// write forwarded to the leader, once the leader handled it): its
	// outcome is recorded there, and finishRequest leaves it alone.
	carried bool
	// attempted is set once the entry went into a proposal or a forward
	// that may have committed even though it reported failure. The entry
	// finishRequest then records is a fallback: Apply links it only if the
	// change's own entry was not linked (AuditBatchCommand.fallback).
	attempted bool
	// signature is the caller's verified signature of the request and
	// cert the certificate (DER) it verified under, which a forward
	// carries to the leader (signatures.go); nil for an unsigned request.
	signature *cofferv1.RequestSignature
	cert      []byte
}

// carry marks the entry as riding in a proposal or forward about to be
// sent.
func (r *request) carry() { r.carried, r.attempted = true, true }

// handBack returns the entry to finishRequest after a proposal or forward
// that did not record it.
func (r *request) handBack() { r.carried = false }

// describe sets the entry's target (a client or member) and reason.
func (r *request) describe(target, what string) *cofferv1.AuditEntry {
	r.entry.Client = target
	return r.explain(what)
}

// explain sets the entry's reason: what the request changes, for a write
// (auditdetail.go), clipped to the field limit.
func (r *request) explain(what string) *cofferv1.AuditEntry {
	r.entry.Reason = clip(what, audit.MaxFieldLen)
	return r.entry
}

type requestKey struct{}

// requestFrom returns the request a door began for ctx. A context no door
// began (a member's LocalStatus, which the unary door passes through) gets a
// request whose entry is thrown away.
func requestFrom(ctx context.Context) *request {
	if r, ok := ctx.Value(requestKey{}).(*request); ok {
		return r
	}
	c, err := authenticate(ctx)
	return &request{caller: c, authErr: err, entry: &cofferv1.AuditEntry{}}
}

// callerOf is the caller of the request ctx belongs to, authenticated once
// by its door.
func callerOf(ctx context.Context) (caller, error) {
	r := requestFrom(ctx)
	return r.caller, r.authErr
}

// proposer replicates a command through Raft and returns Apply's result
// (the Node, which the service layer reaches as its replica).
type proposer interface {
	propose(ctx context.Context, data []byte) (fsm.Result, error)
}

// auditedCommand is a Raft command that carries its request's audit entry.
type auditedCommand interface {
	proto.Message
	GetAudit() *cofferv1.AuditEntry
}

// proposeCommand replicates a change together with its request's audit
// entry, which cmd must carry (Apply links the entry and records the
// change's outcome in it), and returns the change's result; a business
// failure is returned as the error. If the proposal itself fails, the entry
// is handed back for finishRequest to record the failure.
func proposeCommand[C auditedCommand](p proposer, ctx context.Context, r *request, t cofferv1.CommandType, cmd C) (fsm.Result, error) {
	if cmd.GetAudit() != r.entry {
		return fsm.Result{}, fmt.Errorf("%w: %v command does not carry its request's audit entry", ErrInternal, t)
	}
	data, err := fsm.Encode(t, cmd)
	if err != nil {
		return fsm.Result{}, err
	}
	r.carry()
	res, err := p.propose(ctx, data)
	if err != nil {
		r.handBack()
		return fsm.Result{}, err
	}
	return res, res.Err
}
