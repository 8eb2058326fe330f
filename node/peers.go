package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/transport"
)

// peer returns what this node knows of a member: its admission record when
// it joined over gossip (site and addresses), else the config's peers list.
func (n *Node) peer(id string) (Peer, bool) {
	if rec, err := n.fsm.NodeRecord(id); err == nil && rec.GetApiAddr() != "" {
		return Peer{ID: id, Site: rec.GetSite(), APIAddr: rec.GetApiAddr(), RaftAddr: rec.GetRaftAddr()}, true
	}
	n.peersMu.RLock()
	defer n.peersMu.RUnlock()
	p, ok := n.peers[id]
	return p, ok
}

// peerAPIAddr returns the client address of a member, or "" if unknown.
func (n *Node) peerAPIAddr(id string) string {
	p, _ := n.peer(id)
	return p.APIAddr
}

// peerConn returns a (shared, lazily dialled) connection to a member's API.
func (n *Node) peerConn(id string) (*grpc.ClientConn, error) {
	n.peersMu.RLock()
	c, ok := n.conns[id]
	n.peersMu.RUnlock()
	if ok {
		return c, nil
	}
	p, known := n.peer(id)
	if !known || p.APIAddr == "" {
		return nil, fmt.Errorf("%w: no client address known for node %q", ErrNoLeader, id)
	}
	n.peersMu.Lock()
	defer n.peersMu.Unlock()
	if c, ok := n.conns[id]; ok {
		return c, nil
	}
	c, err := transport.Dial(p.APIAddr, n.clientTLS, grpc.WithConnectParams(peerReconnect))
	if err != nil {
		return nil, err
	}
	n.conns[id] = c
	return c, nil
}

// leaderClient returns an InternalService client for the current leader, or
// an ErrNoLeader hint.
func (n *Node) leaderClient() (cofferv1.InternalServiceClient, string, error) {
	_, id := n.raft.LeaderWithID()
	if id == "" {
		return nil, "", &leaderHint{err: ErrNoLeader}
	}
	if string(id) == n.cfg.ID {
		return nil, string(id), errSelfLeader
	}
	c, err := n.peerConn(string(id))
	if err != nil {
		return nil, "", err
	}
	return cofferv1.NewInternalServiceClient(c), string(id), nil
}

var errSelfLeader = fmt.Errorf("%w: this node became leader", ErrNotLeader)

// errLeaderChanged cancels a forward whose leader was replaced.
var errLeaderChanged = errors.New("leader changed")

// leaderPoll is how often a forward in flight checks that its leader still
// leads (as this node sees it).
const leaderPoll = 50 * time.Millisecond

// onLeaderChange calls f once if this node comes to follow another leader
// than leader (an empty leader, between terms, does not count); the
// returned stop ends the watch.
func (n *Node) onLeaderChange(leader string, f func()) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(leaderPoll)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if _, id := n.raft.LeaderWithID(); id != "" && string(id) != leader {
					f()
					return
				}
			}
		}
	}()
	return func() { close(done) }
}

// forward sends a write to the leader on behalf of r's caller. With
// abandon, the forward is given up as soon as this node follows another
// leader (see below); a write that itself moves leadership is not.
func (n *Node) forward(ctx context.Context, r *request, req *cofferv1.ForwardRequest, abandon bool) (*cofferv1.ForwardResponse, error) {
	select {
	case n.forwards <- struct{}{}:
		defer func() { <-n.forwards }()
	default:
		return nil, fmt.Errorf("%w: too many forwarded writes in flight", ErrOverloaded)
	}
	cl, leader, err := n.leaderClient()
	if err != nil {
		return nil, err
	}
	req.Caller = r.caller.proto()
	req.Caller.Node = n.cfg.ID
	req.TimeUnixNano = r.entry.GetTimeUnixNano()
	req.RequestId = r.entry.GetRequestId()
	req.RequestSignature, req.ClientCertificate = r.signature, r.cert
	r.carry()
	// A leader that hangs (stopped, a stalled disk) must hold the write up
	// only until another is elected: the forward is abandoned as soon as
	// this node follows a new leader, and the client retries there with
	// the same request id.
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := func() {}
	if abandon {
		stop = n.onLeaderChange(leader, func() { cancel(errLeaderChanged) })
	}
	var trailer metadata.MD
	resp, err := cl.Forward(fctx, req, grpc.Trailer(&trailer))
	stop()
	if context.Cause(fctx) == errLeaderChanged && ctx.Err() == nil {
		err = n.notLeader(fmt.Errorf("%w: the leader %s was replaced while it held this write; retry", ErrNoLeader, leader))
	}
	if err != nil && len(trailer.Get(memberRefusedKey)) > 0 {
		// The leader refused this node, not the caller (removed from the
		// configuration, not yet admitted again, a certificate it does not
		// accept): the request was not handled and has no entry there.
		// Another node can serve it.
		err = fmt.Errorf("%w: this node may not forward writes now, the leader %s refused it as a member (%v); send the request to another node",
			ErrNotAdmitted, leader, status.Convert(err).Message())
	}
	// The leader records the entry of a request it handled (answered or
	// refused); if the leader could not be reached, this node records it.
	if code := status.Code(err); err != nil && (code == codes.Unavailable || code == codes.DeadlineExceeded || code == codes.Canceled) {
		r.handBack()
	}
	return resp, err
}

// announceLeader tells the client, in a response header, which node leads,
// so that its next writes go there directly instead of being forwarded.
func (n *Node) announceLeader(ctx context.Context) {
	_, id := n.raft.LeaderWithID()
	if addr := n.peerAPIAddr(string(id)); addr != "" {
		_ = grpc.SetHeader(ctx, metadata.Pairs(LeaderHintKey, addr))
	}
}

// peerReconnect keeps the reconnect backoff to a member short: a restarted
// leader must be reachable for forwarding, read index and audit within a
// second, not after gRPC's default backoff of up to two minutes.
var peerReconnect = grpc.ConnectParams{
	Backoff: backoff.Config{
		BaseDelay:  50 * time.Millisecond,
		Multiplier: 1.6,
		Jitter:     0.2,
		MaxDelay:   time.Second,
	},
	MinConnectTimeout: 2 * time.Second,
}
