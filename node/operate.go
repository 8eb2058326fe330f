package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// Operator actions on members: remove, transfer leadership, drain. Each is
// a write (a follower forwards it to the leader), needs cluster.manage, and
// its audit entry says what changed.

// membershipTimeout bounds a configuration change or leadership transfer.
const membershipTimeout = 10 * time.Second

// memberOf returns the configuration and, for a non-empty id, the member it
// names (the write table has already checked the leader is ready and the
// caller holds cluster.manage).
func (n *Node) memberOf(id string) (raft.Server, []raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return raft.Server{}, nil, n.raftError(err)
	}
	servers := f.Configuration().Servers
	if id == "" {
		return raft.Server{}, servers, nil
	}
	if err := (transport.Identity{Kind: transport.KindNode, Name: id}).Validate(); err != nil {
		return raft.Server{}, nil, fmt.Errorf("%w: node: %v", ErrInvalidArgument, err)
	}
	for _, s := range servers {
		if string(s.ID) == id {
			return s, servers, nil
		}
	}
	return raft.Server{}, nil, fmt.Errorf("%w: node %q is not a member of this cluster", ErrNotFound, id)
}

// removeNode executes RemoveNode on the leader.
func (n *Node) removeNode(ctx context.Context, r *request, req *cofferv1.RemoveNodeRequest) (*cofferv1.RemoveNodeResponse, error) {
	c := r.caller
	srv, servers, err := n.memberOf(req.GetNode())
	if err != nil {
		return nil, err
	}
	if string(srv.ID) == n.cfg.ID {
		return nil, fmt.Errorf("%w: %s leads the cluster; move leadership away first (coffer cluster transfer-leader), then remove it", ErrPrecondition, srv.ID)
	}
	voters, siteNodes, siteVoters := 0, 0, 0
	sites := n.memberSites()
	site := sites[string(srv.ID)]
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
		if sites[string(s.ID)] == site {
			siteNodes++
			if s.Suffrage == raft.Voter {
				siteVoters++
			}
		}
	}
	isVoter := srv.Suffrage == raft.Voter
	left := voters
	if isVoter {
		left--
	}
	var refusals []string
	if isVoter && left < n.cfg.Membership.MinQuorum {
		refusals = append(refusals, fmt.Sprintf("it would leave %d voters, fewer than membership.min_quorum (%d)", left, n.cfg.Membership.MinQuorum))
	}
	if siteNodes == 1 && siteVoters > 0 {
		refusals = append(refusals, fmt.Sprintf("it is the last node of site %s, which holds a voter", site))
	}
	if len(refusals) > 0 && !req.GetForce() {
		return nil, fmt.Errorf("%w: removing %s refused: %s; add a node first, or force it (--force)", ErrPrecondition, srv.ID, joinReasons(refusals))
	}
	what := fmt.Sprintf("removed %s (%s, site %s, raft %s); %d voters left", srv.ID, suffrageName(srv), site, srv.Address, left)
	if len(refusals) > 0 {
		what += "; forced although " + joinReasons(refusals)
	}
	// The tombstone first: the node, if it still gossips, is not admitted
	// again behind the operator's back. (A member never admitted has no
	// record; finishRequest then commits the request's entry.)
	r.describe("node:"+string(srv.ID), what)
	if rec, err := n.fsm.NodeRecord(string(srv.ID)); err == nil {
		upd := proto.CloneOf(rec)
		upd.Removed, upd.Drained = true, false
		if err := n.writeMemberRecord(ctx, r, upd, rec.GetCertSha256()); err != nil {
			return nil, err
		}
	}
	if err := n.futureError(n.raft.RemoveServer(srv.ID, 0, membershipTimeout)); err != nil {
		return nil, n.raftError(err)
	}
	n.logger.Warn("member removed by an operator", "member", srv.ID, "by", c.String(), "forced", len(refusals) > 0 && req.GetForce())
	return &cofferv1.RemoveNodeResponse{Node: string(srv.ID), WasVoter: isVoter, VotersLeft: uint32(left)}, nil
}

// transferLeadership executes TransferLeadership on the leader.
func (n *Node) transferLeadership(ctx context.Context, r *request, req *cofferv1.TransferLeadershipRequest) (*cofferv1.TransferLeadershipResponse, error) {
	c := r.caller
	srv, servers, err := n.memberOf(req.GetTo())
	if err != nil {
		return nil, err
	}
	pins := n.fsm.NodePins()
	if req.GetTo() != "" {
		switch {
		case string(srv.ID) == n.cfg.ID:
			return nil, fmt.Errorf("%w: %s already leads", ErrPrecondition, srv.ID)
		case srv.Suffrage != raft.Voter:
			return nil, fmt.Errorf("%w: %s is a %s and cannot lead", ErrPrecondition, srv.ID, suffrageName(srv))
		case pins[string(srv.ID)].GetDrained():
			return nil, fmt.Errorf("%w: %s is drained; undrain it first", ErrPrecondition, srv.ID)
		}
	} else {
		for _, s := range servers {
			if s.Suffrage == raft.Voter && string(s.ID) != n.cfg.ID && !pins[string(s.ID)].GetDrained() {
				srv = s
				break
			}
		}
		if srv.ID == "" {
			return nil, fmt.Errorf("%w: no other voter that is not drained can lead", ErrPrecondition)
		}
	}
	r.describe("node:"+string(srv.ID), fmt.Sprintf("leadership transferred from %s to %s", n.cfg.ID, srv.ID))
	if err := n.futureError(n.raft.LeadershipTransferToServer(srv.ID, srv.Address)); err != nil {
		return nil, fmt.Errorf("%w: leadership transfer to %s: %v", ErrNoLeader, srv.ID, err)
	}
	// The request's entry is committed after this returns, through the new
	// leader: wait until this node knows it.
	for end := time.Now().Add(membershipTimeout); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if _, id := n.raft.LeaderWithID(); id != "" && string(id) != n.cfg.ID {
			break
		}
	}
	n.logger.Info("leadership transferred by an operator", "to", srv.ID, "by", c.String())
	return &cofferv1.TransferLeadershipResponse{From: n.cfg.ID, To: string(srv.ID)}, nil
}

// drainNode executes DrainNode on the leader.
func (n *Node) drainNode(ctx context.Context, r *request, req *cofferv1.DrainNodeRequest) (*cofferv1.DrainNodeResponse, error) {
	srv, _, err := n.memberOf(req.GetNode())
	if err != nil {
		return nil, err
	}
	rec, err := n.fsm.NodeRecord(string(srv.ID))
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not admitted yet (its certificate is not pinned); try again shortly", ErrNotAdmitted, srv.ID)
	}
	drain := !req.GetUndrain()
	if rec.GetDrained() == drain {
		return &cofferv1.DrainNodeResponse{Node: string(srv.ID), Drained: drain}, nil
	}
	upd := proto.CloneOf(rec)
	upd.Drained = drain
	what := "drained " + string(srv.ID) + ": leadership moves away from it and stays away"
	if !drain {
		what = "undrained " + string(srv.ID) + ": it may lead again"
	}
	r.describe("node:"+string(srv.ID), what)
	if err := n.writeMemberRecord(ctx, r, upd, rec.GetCertSha256()); err != nil {
		return nil, err
	}
	return &cofferv1.DrainNodeResponse{Node: string(srv.ID), Drained: drain}, nil
}

// keepLeadershipAway moves leadership off this node when it is drained (run
// by the leader loop).
func (n *Node) keepLeadershipAway() {
	if !n.fsm.NodePins()[n.cfg.ID].GetDrained() {
		return
	}
	if err := n.futureError(n.raft.LeadershipTransfer()); err != nil && !errors.Is(err, raft.ErrNotLeader) {
		n.logger.Warn("this node is drained but could not hand leadership over; will retry", "err", err)
		return
	}
	n.logger.Info("this node is drained: leadership handed over")
}

// writeMemberRecord replaces a member record (tagged anew) if its pin is
// still expected, carrying r's audit entry.
func (n *Node) writeMemberRecord(ctx context.Context, r *request, rec *cofferv1.NodeRecord, expected []byte) error {
	rec.IntegrityTag = nil
	if err := n.barrier.Tag("n/"+rec.GetId(), rec, nil); err != nil {
		return err
	}
	data, err := fsm.Encode(cofferv1.CommandType_COMMAND_TYPE_PIN_NODE, &cofferv1.PinNodeCommand{Node: rec, ExpectedSha256: expected, Audit: r.entry})
	if err != nil {
		return err
	}
	r.carry()
	res, err := n.propose(ctx, data)
	if err != nil {
		r.handBack()
		return err
	}
	if res.Err != nil {
		return res.Err
	}
	if res.Duplicate {
		return fmt.Errorf("%w: the member's record changed meanwhile; try again", fsm.ErrConflict)
	}
	return nil
}

func joinReasons(rs []string) string {
	out := ""
	for i, r := range rs {
		if i > 0 {
			out += "; and "
		}
		out += r
	}
	return out
}
