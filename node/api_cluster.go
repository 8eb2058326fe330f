package node

// The gRPC door of ClusterService: each handler is a thin adapter. Writes go
// to the service layer (service.go) through submitWrite and the write table;
// status, backup and restore, which are about the replica itself, go to the
// Node, which asks the service to authorise and audit them. The unary interceptor (auditInterceptor)
// has already begun the request value; the service layer finds it with
// requestFrom.

import (
	"context"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

type clusterService struct {
	cofferv1.UnimplementedClusterServiceServer
	n   *Node
	svc *service
}

func (s *clusterService) Snapshot(_ *cofferv1.SnapshotRequest, stream cofferv1.ClusterService_SnapshotServer) error {
	return s.n.snapshot(stream)
}

func (s *clusterService) Restore(stream cofferv1.ClusterService_RestoreServer) error {
	return s.n.restoreBackup(stream)
}

func (s *clusterService) LocalStatus(ctx context.Context, req *cofferv1.NodeStatusRequest) (*cofferv1.NodeStatus, error) {
	return s.n.ownStatus(ctx, req)
}

func (s *clusterService) Status(ctx context.Context, req *cofferv1.ClusterStatusRequest) (*cofferv1.ClusterStatusResponse, error) {
	return s.n.status(ctx, req)
}

// PinNode replaces the certificate pinned for a member (cluster.manage).
func (s *clusterService) PinNode(ctx context.Context, req *cofferv1.PinNodeRequest) (*cofferv1.PinNodeResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writePinNode, req)
}

// RemoveNode removes a member from the Raft configuration.
func (s *clusterService) RemoveNode(ctx context.Context, req *cofferv1.RemoveNodeRequest) (*cofferv1.RemoveNodeResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeRemoveNode, req)
}

// TransferLeadership moves leadership to another voter.
func (s *clusterService) TransferLeadership(ctx context.Context, req *cofferv1.TransferLeadershipRequest) (*cofferv1.TransferLeadershipResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeTransferLeadership, req)
}

// DrainNode marks a member drained, or no longer drained.
func (s *clusterService) DrainNode(ctx context.Context, req *cofferv1.DrainNodeRequest) (*cofferv1.DrainNodeResponse, error) {
	return submitWrite(s.svc, ctx, requestFrom(ctx), writeDrainNode, req)
}
