package node

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
)

// internalService is served to members only (requireMember): a node
// certificate from the node CA, in the Raft configuration, not revoked, and
// the certificate pinned at the member's admission.
type internalService struct {
	cofferv1.UnimplementedInternalServiceServer
	n *Node
}

// Forward executes a write for a caller that another node authenticated.
func (s *internalService) Forward(ctx context.Context, req *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error) {
	if _, err := s.n.requireMember(ctx, doorForward, "forwarded "+forwardedOp(req)+" as "+clip(req.GetCaller().GetIdentity(), 80)); err != nil {
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
	rec := &auditRec{e: &cofferv1.AuditEntry{TimeUnixNano: at, Node: clip(req.GetCaller().GetNode(), 64),
		Caller: caller.String(), Operation: forwardedOp(req)}, attempted: true}
	// The message's own request id wins; else the id of the accepting
	// node's entry (the caller's header), so that this entry and a fallback
	// that node records name the same request.
	if r, ok := forwardedRequest(req).(interface{ GetRequestId() string }); ok {
		rec.e.RequestId = clip(r.GetRequestId(), audit.MaxFieldLen)
	}
	if rec.e.RequestId == "" {
		rec.e.RequestId = clip(req.GetRequestId(), audit.MaxFieldLen)
	}
	requestTarget(rec.e, forwardedRequest(req))
	ctx = context.WithValue(ctx, auditRecKey{}, rec)
	resp, err := s.forward(ctx, caller, req)
	if !rec.done {
		setOutcome(rec.e, err)
		if cerr := s.n.commitRequestAudit(ctx, rec); cerr != nil {
			s.n.logger.Error("audit entry of a forwarded request not committed", "op", rec.e.GetOperation(), "err", cerr)
			metricAuditFailures.Inc()
			if err == nil {
				return nil, fmt.Errorf("%w: the request's audit entry could not be committed: %v", ErrNoLeader, cerr)
			}
		}
	}
	return resp, err
}

// forwardedRequest returns the request a ForwardRequest carries.
func forwardedRequest(req *cofferv1.ForwardRequest) any {
	switch op := req.GetOp().(type) {
	case *cofferv1.ForwardRequest_GenerateKey:
		return op.GenerateKey
	case *cofferv1.ForwardRequest_PutKey:
		return op.PutKey
	case *cofferv1.ForwardRequest_CreatePolicy:
		return op.CreatePolicy
	case *cofferv1.ForwardRequest_UpdatePolicy:
		return op.UpdatePolicy
	case *cofferv1.ForwardRequest_RegisterClient:
		return op.RegisterClient
	case *cofferv1.ForwardRequest_SetClientActive:
		return op.SetClientActive
	case *cofferv1.ForwardRequest_RevokeCertificate:
		return op.RevokeCertificate
	case *cofferv1.ForwardRequest_Grant:
		return op.Grant
	case *cofferv1.ForwardRequest_RevokeGrant:
		return op.RevokeGrant
	case *cofferv1.ForwardRequest_AuditPrune:
		return op.AuditPrune
	case *cofferv1.ForwardRequest_PinNode:
		return op.PinNode
	case *cofferv1.ForwardRequest_RemoveNode:
		return op.RemoveNode
	case *cofferv1.ForwardRequest_TransferLeadership:
		return op.TransferLeadership
	case *cofferv1.ForwardRequest_DrainNode:
		return op.DrainNode
	}
	return nil
}

// forwardedMethods names the method of a forwarded request whose message
// is not named after it.
var forwardedMethods = map[string]string{"AuditPrune": "Prune"}

func forwardedOp(req *cofferv1.ForwardRequest) string {
	if r := forwardedRequest(req); r != nil {
		name := strings.TrimSuffix(string(r.(interface{ ProtoReflect() protoreflect.Message }).ProtoReflect().Descriptor().Name()), "Request")
		if m, ok := forwardedMethods[name]; ok {
			name = m
		}
		return opNames[name]
	}
	return "forward"
}

func (s *internalService) forward(ctx context.Context, caller caller, req *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error) {
	if !s.n.IsLeader() {
		// Leadership moved while the request was in flight; the client
		// retries (writes carry request ids, so a retry is safe).
		return nil, s.n.notLeader(fmt.Errorf("forwarded write reached a follower"))
	}
	return s.n.execute(ctx, caller, req)
}

// ReadIndex confirms leadership and returns the index a follower must apply
// before it answers a linearizable read.
func (s *internalService) ReadIndex(ctx context.Context, _ *cofferv1.ReadIndexRequest) (*cofferv1.ReadIndexResponse, error) {
	if _, err := s.n.requireMember(ctx, doorReadIndex, ""); err != nil {
		return nil, err
	}
	if !s.n.IsLeader() {
		return nil, s.n.notLeader(fmt.Errorf("read index asked of a follower"))
	}
	idx, err := s.n.reads.Do(ctx)
	if err != nil {
		return nil, err
	}
	return &cofferv1.ReadIndexResponse{Index: idx}, nil
}
