package node

import (
	"context"
	"fmt"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
)

// internalForward executes a write for a caller that another node authenticated.
// It is the leader's door for forwarded writes: it begins the request from
// the forwarded caller and finishes it as every door does.
func (s *service) internalForward(ctx context.Context, req *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error) {
	w, msg := rowOf(req)
	opName := "forward"
	if w != nil {
		opName = string(w.name())
	}
	if _, err := s.replica.requireMember(ctx, doorForward, "forwarded "+opName+" as "+clip(req.GetCaller().GetIdentity(), 80)); err != nil {
		return nil, err
	}
	caller, err := callerFromProto(req.GetCaller())
	if err != nil {
		return nil, err
	}
	// The entry names the accepting node and its time, so that the entry
	// that node records if this forward fails is known for the same request.
	at := req.GetTimeUnixNano()
	if at <= 0 {
		at = time.Now().UnixNano()
	}
	// Whatever this node records is a fallback: the accepting node may
	// record one too if the answer does not reach it, and the request must
	// end up with one entry.
	r := &request{caller: caller, attempted: true, entry: &cofferv1.AuditEntry{TimeUnixNano: at, Node: clip(req.GetCaller().GetNode(), 64),
		Caller: caller.String(), Operation: opName}}
	// The message's own request id wins; else the id of the accepting
	// node's entry (the caller's header), so that this entry and a fallback
	// that node records name the same request.
	if m, ok := msg.(interface{ GetRequestId() string }); ok {
		r.entry.RequestId = clip(m.GetRequestId(), audit.MaxFieldLen)
	}
	if r.entry.RequestId == "" {
		r.entry.RequestId = clip(req.GetRequestId(), audit.MaxFieldLen)
	}
	requestTarget(r.entry, msg)
	var resp *cofferv1.ForwardResponse
	if w != nil {
		// The leader decides the write, so it checks the caller's
		// signature itself rather than trust the forwarding member's.
		err = s.checkForwardedSignature(req, r, msg, r.entry.GetRequestId())
	}
	switch {
	case err != nil:
	case !s.replica.IsLeader():
		// Leadership moved while the request was in flight; the client
		// retries (writes carry request ids, so a retry is safe).
		err = s.replica.notLeader(fmt.Errorf("forwarded write reached a follower"))
	default:
		resp, err = s.execute(ctx, r, req)
	}
	if ferr := s.finishRequest(ctx, r, false, err); ferr != nil {
		return nil, ferr
	}
	return resp, err
}
