package node

import (
	"context"
	"fmt"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// write routes a change: a follower forwards it to the leader (which
// audits it), the leader executes it.
func (n *Node) write(ctx context.Context, c caller, req *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error) {
	if !n.IsLeader() {
		return n.forward(ctx, c, req)
	}
	return n.execute(ctx, c, req)
}

// execute runs a change on the leader. It is the one dispatch of write
// operations, for requests accepted here and for those a follower forwarded.
func (n *Node) execute(ctx context.Context, c caller, req *cofferv1.ForwardRequest) (*cofferv1.ForwardResponse, error) {
	switch op := req.GetOp().(type) {
	case *cofferv1.ForwardRequest_GenerateKey, *cofferv1.ForwardRequest_PutKey:
		spec, err := createSpecOf(req)
		if err != nil {
			return nil, err
		}
		md, err := n.createKey(ctx, c, spec)
		if err != nil {
			return nil, err
		}
		if _, ok := op.(*cofferv1.ForwardRequest_PutKey); ok {
			return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_PutKey{PutKey: &cofferv1.PutKeyResponse{Key: md}}}, nil
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_GenerateKey{GenerateKey: &cofferv1.GenerateKeyResponse{Key: md}}}, nil
	case *cofferv1.ForwardRequest_CreatePolicy:
		resp, err := n.createPolicy(ctx, c, op.CreatePolicy)
		if err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_CreatePolicy{CreatePolicy: resp}}, nil
	case *cofferv1.ForwardRequest_UpdatePolicy:
		resp, err := n.updatePolicy(ctx, c, op.UpdatePolicy)
		if err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_UpdatePolicy{UpdatePolicy: resp}}, nil
	case *cofferv1.ForwardRequest_AuditPrune:
		resp, err := n.pruneAudit(ctx, c, op.AuditPrune)
		if err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_AuditPrune{AuditPrune: resp}}, nil
	case *cofferv1.ForwardRequest_PinNode:
		resp, err := n.pinNode(ctx, c, op.PinNode)
		if err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_PinNode{PinNode: resp}}, nil
	case *cofferv1.ForwardRequest_RemoveNode:
		resp, err := n.removeNode(ctx, c, op.RemoveNode)
		if err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_RemoveNode{RemoveNode: resp}}, nil
	case *cofferv1.ForwardRequest_TransferLeadership:
		resp, err := n.transferLeadership(ctx, c, op.TransferLeadership)
		if err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_TransferLeadership{TransferLeadership: resp}}, nil
	case *cofferv1.ForwardRequest_DrainNode:
		resp, err := n.drainNode(ctx, c, op.DrainNode)
		if err != nil {
			return nil, err
		}
		return &cofferv1.ForwardResponse{Result: &cofferv1.ForwardResponse_DrainNode{DrainNode: resp}}, nil
	case *cofferv1.ForwardRequest_RegisterClient, *cofferv1.ForwardRequest_SetClientActive,
		*cofferv1.ForwardRequest_RevokeCertificate, *cofferv1.ForwardRequest_Grant, *cofferv1.ForwardRequest_RevokeGrant:
		return n.executeAccess(ctx, c, req)
	}
	// An operation added after this build reaches it as an empty oneof,
	// forwarded by a node already upgraded.
	return nil, fmt.Errorf("%w: write request carries no operation this node knows; if the cluster is being upgraded, the leader (%s) may run an older build than the node that forwarded it", ErrInvalidArgument, n.cfg.ID)
}
