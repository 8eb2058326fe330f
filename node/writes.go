package node

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
)

// The write table.
//
// Every change a caller can ask for is one row of writeOps. A row names the
// operation (authorisation catalogue and audit entries use that name), says
// how its request and response travel inside the forwarded-write messages,
// validates the request (on the node that accepts it, so that a malformed
// request never leaves that node, and again on the leader, which trusts no
// member's validation), and executes it on the leader. The door of any API
// calls submitWrite with the row; a follower forwards the request, and the
// leader finds the row again (rowOf) for a forwarded one.
//
// Adding a write operation: its request and response messages, a case in
// ForwardRequest.op and ForwardResponse.result (api/coffer/v1/internal.proto),
// an execute function, one row below, and a one-line door handler.

// writeRow is one row of the write table, typed by its request and
// response messages.
type writeRow[Req interface {
	comparable
	proto.Message
}, Resp proto.Message] struct {
	op authz.Op
	// opFor names the operation of a request where it depends on the
	// request (nil: op).
	opFor func(Req) authz.Op
	// in returns the request a forwarded write carries (nil if another),
	// wrap puts one in a forwarded write.
	in   func(*cofferv1.ForwardRequest) Req
	wrap func(Req) *cofferv1.ForwardRequest
	// out returns the response of a forwarded write, result puts one in.
	out    func(*cofferv1.ForwardResponse) Resp
	result func(Resp) *cofferv1.ForwardResponse
	// validate checks what can be checked without state; nil if all is
	// checked by execute.
	validate func(Req) error
	// execute runs the write on the leader.
	execute func(s *service, ctx context.Context, r *request, req Req) (Resp, error)
	// keyOp marks a key operation, which execute authorises against the
	// key's resource; every other row is an administrative operation that
	// the table authorises (op, on every resource) before execute runs.
	keyOp bool
	// movesLeader marks a write whose success changes the leader: a
	// forward of it is not abandoned when the leader changes (see
	// Node.forward).
	movesLeader bool
}

// writeOp is what the leader's dispatch needs of a row.
type writeOp interface {
	name() authz.Op
	// carried returns the row's request if fw carries one.
	carried(fw *cofferv1.ForwardRequest) (proto.Message, bool)
	// run validates and executes the write fw carries.
	run(s *service, ctx context.Context, r *request, fw *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error)
}

func (w *writeRow[Req, Resp]) name() authz.Op { return w.op }

func (w *writeRow[Req, Resp]) carried(fw *cofferv1.ForwardRequest) (proto.Message, bool) {
	var none Req
	req := w.in(fw)
	return req, req != none
}

func (w *writeRow[Req, Resp]) run(s *service, ctx context.Context, r *request, fw *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error) {
	req := w.in(fw)
	if w.validate != nil {
		if err := w.validate(req); err != nil {
			return nil, err
		}
	}
	resp, err := w.exec(s, ctx, r, req)
	if err != nil {
		return nil, err
	}
	return w.result(resp), nil
}

// exec runs a validated write on the leader: for an administrative
// operation, once every change acknowledged before it is applied here
// (ensureLeaderReady), the caller's grant first.
func (w *writeRow[Req, Resp]) exec(s *service, ctx context.Context, r *request, req Req) (Resp, error) {
	if !w.keyOp {
		if err := s.replica.ensureLeaderReady(); err != nil {
			var none Resp
			return none, err
		}
		if err := s.authorize(r.caller, w.op, ""); err != nil {
			var none Resp
			return none, err
		}
	}
	return w.execute(s, ctx, r, req)
}

var (
	writeGenerate = &writeRow[*cofferv1.GenerateKeyRequest, *cofferv1.GenerateKeyResponse]{
		op: authz.OpGenerate,
		in: (*cofferv1.ForwardRequest).GetGenerateKey,
		wrap: func(q *cofferv1.GenerateKeyRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_GenerateKey{GenerateKey: q}}
		},
		out: (*cofferv1.ForwardResponse).GetGenerateKey,
		result: func(p *cofferv1.GenerateKeyResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_GenerateKey{GenerateKey: p}}
		},
		validate: func(q *cofferv1.GenerateKeyRequest) error { _, err := generateSpec(q); return err },
		execute:  (*service).generateKey,
		keyOp:    true,
	}
	writePut = &writeRow[*cofferv1.PutKeyRequest, *cofferv1.PutKeyResponse]{
		op: authz.OpPut,
		in: (*cofferv1.ForwardRequest).GetPutKey,
		wrap: func(q *cofferv1.PutKeyRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_PutKey{PutKey: q}}
		},
		out: (*cofferv1.ForwardResponse).GetPutKey,
		result: func(p *cofferv1.PutKeyResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_PutKey{PutKey: p}}
		},
		validate: func(q *cofferv1.PutKeyRequest) error { _, err := putSpec(q); return err },
		execute:  (*service).putKey,
		keyOp:    true,
	}
	writeSetKeyState = &writeRow[*cofferv1.SetKeyStateRequest, *cofferv1.SetKeyStateResponse]{
		op:    authz.OpState,
		opFor: func(q *cofferv1.SetKeyStateRequest) authz.Op { return stateOp(q.GetState()) },
		in:    (*cofferv1.ForwardRequest).GetSetKeyState,
		wrap: func(q *cofferv1.SetKeyStateRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_SetKeyState{SetKeyState: q}}
		},
		out: (*cofferv1.ForwardResponse).GetSetKeyState,
		result: func(p *cofferv1.SetKeyStateResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_SetKeyState{SetKeyState: p}}
		},
		validate: validateSetKeyState,
		execute:  (*service).setKeyState,
		keyOp:    true,
	}
	writeRotateKey = &writeRow[*cofferv1.RotateKeyRequest, *cofferv1.RotateKeyResponse]{
		op: authz.OpRotate,
		in: (*cofferv1.ForwardRequest).GetRotateKey,
		wrap: func(q *cofferv1.RotateKeyRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_RotateKey{RotateKey: q}}
		},
		out: (*cofferv1.ForwardResponse).GetRotateKey,
		result: func(p *cofferv1.RotateKeyResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_RotateKey{RotateKey: p}}
		},
		validate: validateRotateKey,
		execute:  (*service).rotateKey,
		keyOp:    true,
	}
	writeRetireKeyVersion = &writeRow[*cofferv1.RetireKeyVersionRequest, *cofferv1.RetireKeyVersionResponse]{
		op: authz.OpDestroy,
		in: (*cofferv1.ForwardRequest).GetRetireKeyVersion,
		wrap: func(q *cofferv1.RetireKeyVersionRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_RetireKeyVersion{RetireKeyVersion: q}}
		},
		out: (*cofferv1.ForwardResponse).GetRetireKeyVersion,
		result: func(p *cofferv1.RetireKeyVersionResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_RetireKeyVersion{RetireKeyVersion: p}}
		},
		validate: validateRetireKeyVersion,
		execute:  (*service).retireKeyVersion,
		keyOp:    true,
	}
	writeAmendKeyUsePolicy = &writeRow[*cofferv1.AmendKeyUsePolicyRequest, *cofferv1.AmendKeyUsePolicyResponse]{
		op: authz.OpPolicyUpdate,
		in: (*cofferv1.ForwardRequest).GetAmendKeyUsePolicy,
		wrap: func(q *cofferv1.AmendKeyUsePolicyRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_AmendKeyUsePolicy{AmendKeyUsePolicy: q}}
		},
		out: (*cofferv1.ForwardResponse).GetAmendKeyUsePolicy,
		result: func(p *cofferv1.AmendKeyUsePolicyResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_AmendKeyUsePolicy{AmendKeyUsePolicy: p}}
		},
		validate: validateAmendKeyUsePolicy,
		execute:  (*service).amendKeyUsePolicy,
	}
	writeEncryptNew = &writeRow[*cofferv1.EncryptNewRequest, *cofferv1.EncryptNewResponse]{
		op: authz.OpGenerate, // and encrypt: execute authorises both
		in: (*cofferv1.ForwardRequest).GetEncryptNew,
		wrap: func(q *cofferv1.EncryptNewRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_EncryptNew{EncryptNew: q}}
		},
		out: (*cofferv1.ForwardResponse).GetEncryptNew,
		result: func(p *cofferv1.EncryptNewResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_EncryptNew{EncryptNew: p}}
		},
		validate: func(q *cofferv1.EncryptNewRequest) error { _, err := encryptNewSpec(q); return err },
		execute:  (*service).encryptNew,
		keyOp:    true,
	}
	writeCreatePolicy = &writeRow[*cofferv1.CreatePolicyRequest, *cofferv1.CreatePolicyResponse]{
		op: authz.OpPolicyCreate,
		in: (*cofferv1.ForwardRequest).GetCreatePolicy,
		wrap: func(q *cofferv1.CreatePolicyRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_CreatePolicy{CreatePolicy: q}}
		},
		out: (*cofferv1.ForwardResponse).GetCreatePolicy,
		result: func(p *cofferv1.CreatePolicyResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_CreatePolicy{CreatePolicy: p}}
		},
		validate: func(q *cofferv1.CreatePolicyRequest) error { _, err := validatePolicyRequest(q); return err },
		execute:  (*service).createPolicy,
	}
	writeUpdatePolicy = &writeRow[*cofferv1.UpdatePolicyRequest, *cofferv1.UpdatePolicyResponse]{
		op: authz.OpPolicyUpdate,
		in: (*cofferv1.ForwardRequest).GetUpdatePolicy,
		wrap: func(q *cofferv1.UpdatePolicyRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_UpdatePolicy{UpdatePolicy: q}}
		},
		out: (*cofferv1.ForwardResponse).GetUpdatePolicy,
		result: func(p *cofferv1.UpdatePolicyResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_UpdatePolicy{UpdatePolicy: p}}
		},
		validate: validateUpdate,
		execute:  (*service).updatePolicy,
	}
	writeRegisterClient = &writeRow[*cofferv1.RegisterClientRequest, *cofferv1.ClientInfo]{
		op: authz.OpClientManage,
		in: (*cofferv1.ForwardRequest).GetRegisterClient,
		wrap: func(q *cofferv1.RegisterClientRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_RegisterClient{RegisterClient: q}}
		},
		out:      (*cofferv1.ForwardResponse).GetClient,
		result:   clientResult,
		validate: validateRegister,
		execute:  (*service).registerClient,
	}
	writeSetClientActive = &writeRow[*cofferv1.SetClientActiveRequest, *cofferv1.ClientInfo]{
		op: authz.OpClientManage,
		in: (*cofferv1.ForwardRequest).GetSetClientActive,
		wrap: func(q *cofferv1.SetClientActiveRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_SetClientActive{SetClientActive: q}}
		},
		out:     (*cofferv1.ForwardResponse).GetClient,
		result:  clientResult,
		execute: (*service).setClientActive,
	}
	writeRevokeCertificate = &writeRow[*cofferv1.RevokeCertificateRequest, *cofferv1.RevokeCertificateResponse]{
		op: authz.OpClientManage,
		in: (*cofferv1.ForwardRequest).GetRevokeCertificate,
		wrap: func(q *cofferv1.RevokeCertificateRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_RevokeCertificate{RevokeCertificate: q}}
		},
		out: (*cofferv1.ForwardResponse).GetRevokeCertificate,
		result: func(p *cofferv1.RevokeCertificateResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_RevokeCertificate{RevokeCertificate: p}}
		},
		validate: func(q *cofferv1.RevokeCertificateRequest) error { _, err := validateRevoke(q); return err },
		execute:  (*service).revokeCertificate,
	}
	writeGrant = &writeRow[*cofferv1.GrantRequest, *cofferv1.AclRuleInfo]{
		op: authz.OpACLManage,
		in: (*cofferv1.ForwardRequest).GetGrant,
		wrap: func(q *cofferv1.GrantRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_Grant{Grant: q}}
		},
		out: (*cofferv1.ForwardResponse).GetRule,
		result: func(p *cofferv1.AclRuleInfo) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_Rule{Rule: p}}
		},
		execute: (*service).grant,
	}
	writeRevokeGrant = &writeRow[*cofferv1.RevokeGrantRequest, *cofferv1.RevokeGrantResponse]{
		op: authz.OpACLManage,
		in: (*cofferv1.ForwardRequest).GetRevokeGrant,
		wrap: func(q *cofferv1.RevokeGrantRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_RevokeGrant{RevokeGrant: q}}
		},
		out: (*cofferv1.ForwardResponse).GetRevokeGrant,
		result: func(p *cofferv1.RevokeGrantResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_RevokeGrant{RevokeGrant: p}}
		},
		execute: (*service).revokeGrant,
	}
	writePrune = &writeRow[*cofferv1.AuditPruneRequest, *cofferv1.AuditPruneResponse]{
		op: authz.OpAuditPrune,
		in: (*cofferv1.ForwardRequest).GetAuditPrune,
		wrap: func(q *cofferv1.AuditPruneRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_AuditPrune{AuditPrune: q}}
		},
		out: (*cofferv1.ForwardResponse).GetAuditPrune,
		result: func(p *cofferv1.AuditPruneResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_AuditPrune{AuditPrune: p}}
		},
		validate: validatePrune,
		execute:  (*service).pruneAudit,
	}
	writePinNode = &writeRow[*cofferv1.PinNodeRequest, *cofferv1.PinNodeResponse]{
		op: authz.OpClusterManage,
		in: (*cofferv1.ForwardRequest).GetPinNode,
		wrap: func(q *cofferv1.PinNodeRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_PinNode{PinNode: q}}
		},
		out: (*cofferv1.ForwardResponse).GetPinNode,
		result: func(p *cofferv1.PinNodeResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_PinNode{PinNode: p}}
		},
		execute: (*service).pinNode,
	}
	writeRemoveNode = &writeRow[*cofferv1.RemoveNodeRequest, *cofferv1.RemoveNodeResponse]{
		op: authz.OpClusterManage,
		in: (*cofferv1.ForwardRequest).GetRemoveNode,
		wrap: func(q *cofferv1.RemoveNodeRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_RemoveNode{RemoveNode: q}}
		},
		out: (*cofferv1.ForwardResponse).GetRemoveNode,
		result: func(p *cofferv1.RemoveNodeResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_RemoveNode{RemoveNode: p}}
		},
		execute: (*service).removeNode,
	}
	writeTransferLeadership = &writeRow[*cofferv1.TransferLeadershipRequest, *cofferv1.TransferLeadershipResponse]{
		op: authz.OpClusterManage,
		in: (*cofferv1.ForwardRequest).GetTransferLeadership,
		wrap: func(q *cofferv1.TransferLeadershipRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_TransferLeadership{TransferLeadership: q}}
		},
		out: (*cofferv1.ForwardResponse).GetTransferLeadership,
		result: func(p *cofferv1.TransferLeadershipResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_TransferLeadership{TransferLeadership: p}}
		},
		execute:     (*service).transferLeadership,
		movesLeader: true,
	}
	writeDrainNode = &writeRow[*cofferv1.DrainNodeRequest, *cofferv1.DrainNodeResponse]{
		op: authz.OpClusterManage,
		in: (*cofferv1.ForwardRequest).GetDrainNode,
		wrap: func(q *cofferv1.DrainNodeRequest) *cofferv1.ForwardRequest {
			return &cofferv1.ForwardRequest{Op: &cofferv1.ForwardRequest_DrainNode{DrainNode: q}}
		},
		out: (*cofferv1.ForwardResponse).GetDrainNode,
		result: func(p *cofferv1.DrainNodeResponse) *cofferv1.ForwardResponse {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_DrainNode{DrainNode: p}}
		},
		execute: (*service).drainNode,
	}
)

// writeOps is the write table (see above).
var writeOps = []writeOp{
	writeGenerate, writePut, writeSetKeyState, writeRotateKey, writeRetireKeyVersion, writeAmendKeyUsePolicy, writeEncryptNew, writeCreatePolicy, writeUpdatePolicy,
	writeRegisterClient, writeSetClientActive, writeRevokeCertificate, writeGrant, writeRevokeGrant,
	writePrune, writePinNode, writeRemoveNode, writeTransferLeadership, writeDrainNode,
	writeSetCachePolicy, writeFlushCaches, // cachesvc.go
}

func clientResult(p *cofferv1.ClientInfo) *cofferv1.ForwardResponse {
	return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_Client{Client: p}}
}

// rowOf finds the row of a forwarded write and the request it carries; nil
// for a write this build does not know.
func rowOf(fw *cofferv1.ForwardRequest) (writeOp, proto.Message) {
	for _, w := range writeOps {
		if req, ok := w.carried(fw); ok {
			return w, req
		}
	}
	return nil, nil
}

// submitWrite is the door of every write: it validates the request here,
// executes it if this node leads and forwards it to the leader otherwise,
// and tells the client which node leads so that its next writes go there
// directly. r is the request's passage through the service layer.
func submitWrite[Req interface {
	comparable
	proto.Message
}, Resp proto.Message](s *service, ctx context.Context, r *request, w *writeRow[Req, Resp], req Req) (Resp, error) {
	var none Resp
	r.entry.Operation = string(w.op)
	if w.opFor != nil {
		r.entry.Operation = string(w.opFor(req))
	}
	if w.validate != nil {
		if err := w.validate(req); err != nil {
			return none, err
		}
	}
	if !s.replica.IsLeader() {
		resp, err := s.replica.forward(ctx, r, w.wrap(req), !w.movesLeader)
		if err != nil {
			return none, err
		}
		s.replica.announceLeader(ctx)
		return w.out(resp), nil
	}
	resp, err := w.exec(s, ctx, r, req)
	if err != nil {
		return none, err
	}
	s.replica.announceLeader(ctx)
	return resp, nil
}

// execute runs a forwarded write on the leader.
func (s *service) execute(ctx context.Context, r *request, fw *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error) {
	w, _ := rowOf(fw)
	if w == nil {
		// An operation added after this build reaches it as an empty
		// oneof, forwarded by a node already upgraded.
		return nil, fmt.Errorf("%w: write request carries no operation this node knows; if the cluster is being upgraded, the leader (%s) may run an older build than the node that forwarded it", ErrInvalidArgument, s.cfg.ID)
	}
	return w.run(s, ctx, r, fw)
}
