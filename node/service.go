package node

import (
	"context"
	"crypto/x509"
	"log/slog"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/custody"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// service is the service layer: what every door (the gRPC handlers in
// api_*.go, a forwarded write) hands its requests to. It authenticates and
// admits the caller, decides with the replicated policy engine, reads the
// committed state, seals and opens key material through the custody
// barrier, and gives every request its one audit entry (request.go,
// audit.go). It holds only what requests need; Raft, membership and the
// node's lifecycle stay with Node, which the service reaches through the
// replica interface.
type service struct {
	cfg     Config
	logger  *slog.Logger
	fsm     *fsm.FSM
	barrier *custody.Barrier
	// auditor batches the request path's audit entries into Raft.
	auditor *auditor
	// sideAudit commits entries off the request path (a status answered
	// without a quorum).
	sideAudit *sideAuditor
	// codec hands the door a message that did not decode (codec.go).
	codec   *requestCodec
	replica replica
	// stop is closed when the node stops (ends audit follow streams).
	stop <-chan struct{}
	// callers verifies the client certificates forwarded with signed
	// writes (signatures.go).
	callers *transport.CallerVerifier
}

// replica is what the service layer needs of the Raft node it serves on:
// proposing commands, linearizing reads, reaching the leader, telling
// members from strangers, and the cluster's own writes, which change Raft's
// configuration.
type replica interface {
	proposer
	// proposeIndexed is propose that also returns the command's log index.
	proposeIndexed(ctx context.Context, data []byte) (fsm.Result, uint64, error)
	IsLeader() bool
	// hasLeader reports whether this node knows a leader.
	hasLeader() bool
	// notLeader is the refusal of a request that needs the leader.
	notLeader(cause error) error
	// ensureLeaderReady returns once this leader has applied every change
	// acknowledged before it (its term's barrier).
	ensureLeaderReady() error
	// linearize waits, for a linearizable read, until this node has applied
	// every change acknowledged before the read arrived.
	linearize(ctx context.Context, c cofferv1.Consistency) error
	// forward sends a write to the leader, which executes it; announceLeader
	// tells the client which node leads.
	forward(ctx context.Context, r *request, req *cofferv1.ForwardRequest, abandon bool) (*cofferv1.ForwardResponse, error)
	announceLeader(ctx context.Context)
	leaderClient() (cofferv1.InternalServiceClient, string, error)
	// raftLog is the node's logger with its term and applied index.
	raftLog() *slog.Logger
	// checkMember admits a node identity that is a member; requireMember
	// does so for the caller of a node-to-node call, auditing a refusal.
	checkMember(id transport.Identity, cert *x509.Certificate, door memberDoor) error
	requireMember(ctx context.Context, door memberDoor, what string) (caller, error)

	pinNode(ctx context.Context, r *request, req *cofferv1.PinNodeRequest) (*cofferv1.PinNodeResponse, error)
	removeNode(ctx context.Context, r *request, req *cofferv1.RemoveNodeRequest) (*cofferv1.RemoveNodeResponse, error)
	transferLeadership(ctx context.Context, r *request, req *cofferv1.TransferLeadershipRequest) (*cofferv1.TransferLeadershipResponse, error)
	drainNode(ctx context.Context, r *request, req *cofferv1.DrainNodeRequest) (*cofferv1.DrainNodeResponse, error)
}

// stopContext is ctx, also cancelled when the node stops.
func (s *service) stopContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return untilStopped(ctx, s.stop)
}

// The cluster's own writes (rows of the write table) change Raft's
// configuration or the member records, which the replica owns.

func (s *service) pinNode(ctx context.Context, r *request, req *cofferv1.PinNodeRequest) (*cofferv1.PinNodeResponse, error) {
	return s.replica.pinNode(ctx, r, req)
}

func (s *service) removeNode(ctx context.Context, r *request, req *cofferv1.RemoveNodeRequest) (*cofferv1.RemoveNodeResponse, error) {
	return s.replica.removeNode(ctx, r, req)
}

func (s *service) transferLeadership(ctx context.Context, r *request, req *cofferv1.TransferLeadershipRequest) (*cofferv1.TransferLeadershipResponse, error) {
	return s.replica.transferLeadership(ctx, r, req)
}

func (s *service) drainNode(ctx context.Context, r *request, req *cofferv1.DrainNodeRequest) (*cofferv1.DrainNodeResponse, error) {
	return s.replica.drainNode(ctx, r, req)
}
