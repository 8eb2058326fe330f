package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// Membership over gossip (package cluster does gossip and placement; this
// file is what the node adds: its identity in gossip, the mTLS check of a
// node that asks to join, its pin, and the audit of every change).
//
// A node started with gossip.join and no Raft state joins the gossip pool.
// The leader's membership manager sees it and calls admitJoiner. The node
// must prove, over mTLS on its API address, a node certificate from the
// node CA for the id it gossips. Its Raft address must not belong to another
// member, and its certificate must not be revoked. The leader then pins that
// certificate with the member's site and addresses and adds it as a
// non-voter. Autopilot promotes it once it has been healthy for the
// stabilisation time, if the placement wants another voter in its site.
// Every refusal is logged and audited (door cluster.join). Every change of
// the Raft configuration the leader sees is audited (auditConfigChanges).

// doorJoin names gossip admission in refusals and their audit entries.
const doorJoin memberDoor = "cluster.join"

// gossipRetry is how often a node that has not joined tries its join list
// again, and how often it refreshes its gossiped role.
const gossipRetry = 2 * time.Second

// startMembership starts gossip and the membership manager when the config
// enables gossip.
func (n *Node) startMembership() error {
	g := n.cfg.Gossip
	if g.BindAddr == "" {
		return nil
	}
	keys, err := cluster.ReadKeyFile(g.KeyFile)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	gossip, err := cluster.StartGossip(cluster.GossipConfig{BindAddr: g.BindAddr, AdvertiseAddr: g.AdvertiseAddr,
		Keys: keys, WAN: g.WAN, Logger: n.logger, OnForeignKey: func(from string) {
			n.refuseMember("unauthenticated", from, doorJoin, "gossip", errors.New("gossip traffic not encrypted with the cluster's gossip key (a node with another key, or none)"))
		}}, n.selfMeta())
	if err != nil {
		return err
	}
	mgr, err := cluster.NewManager(n.cfg.Membership, cluster.Deps{Raft: n.raft, Gossip: gossip, Admit: n.admitJoiner,
		Stats: n.memberStats, Sites: n.memberSites, Logger: n.logger, RaftLogger: n.hlog})
	if err != nil {
		_ = gossip.Close()
		return err
	}
	n.gossip, n.membership = gossip, mgr
	ctx, cancel := context.WithCancel(context.Background())
	n.stopMembership = cancel
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		mgr.Run(ctx)
	}()
	go n.gossipLoop(ctx)
	return nil
}

// selfMeta is what this node gossips about itself.
func (n *Node) selfMeta() cluster.Meta {
	role := "none"
	if n.raft != nil {
		for _, s := range n.raft.GetConfiguration().Configuration().Servers {
			if string(s.ID) == n.cfg.ID {
				role = suffrageName(s)
			}
		}
	}
	return cluster.Meta{ID: n.cfg.ID, Site: n.cfg.Site, APIAddr: n.APIAddr(), RaftAddr: n.cfg.RaftAdvertise(), Role: role,
		Version: fmt.Sprintf("cmd%d", fsm.CommandVersion)}
}

// gossipLoop joins the configured members (retrying until one answers) and
// keeps this node's gossiped role current.
func (n *Node) gossipLoop(ctx context.Context) {
	defer n.wg.Done()
	joined := len(n.cfg.Gossip.Join) == 0
	t := time.NewTicker(gossipRetry)
	defer t.Stop()
	for {
		if !joined {
			if err := n.gossip.Join(n.cfg.Gossip.Join); err != nil {
				n.logger.Warn("gossip join failed; will retry", "join", n.cfg.Gossip.Join, "err", err)
			} else {
				joined = true
				n.logger.Info("joined the gossip pool", "via", n.cfg.Gossip.Join)
			}
		}
		if err := n.gossip.SetMeta(n.selfMeta()); err != nil {
			n.logger.Debug("gossip metadata not updated", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// closeMembership stops the manager and gossip (without announcing a leave:
// a node that stops is seen to fail, and the placement decides).
func (n *Node) closeMembership() {
	if n.stopMembership != nil {
		n.stopMembership()
	}
	if n.gossip != nil {
		_ = n.gossip.Close()
	}
}

// admitJoiner checks a node that gossips but is not in the Raft
// configuration and pins its certificate; the manager then adds it as a
// non-voter. A refusal is logged and audited.
func (n *Node) admitJoiner(ctx context.Context, m cluster.Member) error {
	if _, err := n.fsm.Cluster(); err != nil {
		return fmt.Errorf("%w: the cluster is not initialised yet", cluster.ErrRetryLater)
	}
	cert, err := n.checkJoiner(ctx, m)
	if err != nil {
		n.refuseMember("node:"+m.ID, m.Addr, doorJoin, fmt.Sprintf("join from site %q (raft %s, api %s)", m.Site, m.RaftAddr, m.APIAddr), err)
		return err
	}
	sum := hex.EncodeToString(certSHA256(cert))
	_, err = n.proposePin(ctx, m.ID, cert, pinOptions{site: m.Site, apiAddr: m.APIAddr, raftAddr: m.RaftAddr},
		n.memberEntry(m.ID, fmt.Sprintf("admitted over gossip from site %s (raft %s, api %s): pinned certificate sha256:%s serial %s; joins as a non-voter",
			m.Site, m.RaftAddr, m.APIAddr, sum, authz.FormatSerial(cert.SerialNumber))))
	return err
}

// checkJoiner is admitJoiner's checks; it returns the node's certificate.
func (n *Node) checkJoiner(ctx context.Context, m cluster.Member) (*x509.Certificate, error) {
	want := transport.Identity{Kind: transport.KindNode, Name: m.ID}
	if err := want.Validate(); err != nil {
		return nil, fmt.Errorf("%w: gossiped id: %v", ErrInvalidArgument, err)
	}
	if m.Site == "" {
		return nil, fmt.Errorf("%w: %s gossips no site", ErrInvalidArgument, want)
	}
	for what, a := range map[string]string{"raft": m.RaftAddr, "api": m.APIAddr} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("%w: %s gossips an invalid %s address %q", ErrInvalidArgument, want, what, a)
		}
	}
	if rec, err := n.fsm.NodeRecord(m.ID); err == nil && rec.GetRemoved() {
		return nil, fmt.Errorf("%w: %s was removed by an operator; to let it join again, pin its certificate (coffer cluster pin %s --cert-file FILE)", ErrNotMember, want, m.ID)
	}
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		if string(s.ID) == m.ID {
			return nil, fmt.Errorf("%w: %s is already a member at %s, not %s: the id is taken", ErrNotMember, want, s.Address, m.RaftAddr)
		}
		if string(s.Address) == m.RaftAddr {
			return nil, fmt.Errorf("%w: the Raft address %s of %s already belongs to member %s", ErrNotMember, m.RaftAddr, want, s.ID)
		}
	}
	cert, err := n.proveNode(ctx, m.APIAddr, want)
	if err != nil {
		return nil, err
	}
	if n.fsm.Authz().Revoked(authz.FormatSerial(cert.SerialNumber)) {
		return nil, fmt.Errorf("%w: the certificate of %s (serial %s) is revoked", ErrUnauthenticated, want, authz.FormatSerial(cert.SerialNumber))
	}
	return cert, nil
}

// proveNode connects to addr over mTLS and returns the certificate the
// server presents, which must chain to the node CA and name want: the
// joiner proves it holds that certificate's key.
func (n *Node) proveNode(ctx context.Context, addr string, want transport.Identity) (*x509.Certificate, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	conf := n.clientTLS.Clone()
	conf.ServerName = host
	conf.NextProtos = []string{"h2"}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: conf}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %s at %s did not prove a node certificate from this cluster's node CA: %v", ErrUnauthenticated, want, addr, err)
	}
	defer c.Close()
	cs := c.(*tls.Conn).ConnectionState()
	leaf := cs.VerifiedChains[0][0]
	got, err := transport.IdentityFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("%w: %s at %s: %v", ErrUnauthenticated, want, addr, err)
	}
	if got != want {
		return nil, fmt.Errorf("%w: the node at %s gossips the id %s but its certificate is %s", ErrNotMember, addr, want, got)
	}
	return leaf, nil
}

// memberStats is the manager's Stats: a member's Raft progress.
func (n *Node) memberStats(ctx context.Context, id string) (*autopilot.ServerStats, error) {
	var st *cofferv1.NodeStatus
	if id == n.cfg.ID {
		st = n.localStatus()
	} else {
		conn, err := n.peerConn(id)
		if err != nil {
			return nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, statusTimeout)
		defer cancel()
		if st, err = cofferv1.NewClusterServiceClient(conn).LocalStatus(cctx, &cofferv1.NodeStatusRequest{}); err != nil {
			return nil, err
		}
	}
	contact := time.Duration(st.GetLastContactMs()) * time.Millisecond
	if st.GetLastContactMs() < 0 {
		contact = time.Hour
	}
	return &autopilot.ServerStats{LastContact: contact, LastTerm: st.GetLastLogTerm(), LastIndex: st.GetLastLogIndex()}, nil
}

// memberSites maps every member this node knows of to its site: from the
// admission records, else the peers list.
func (n *Node) memberSites() map[string]string {
	out := map[string]string{}
	n.peersMu.RLock()
	for id, p := range n.peers {
		out[id] = p.Site
	}
	n.peersMu.RUnlock()
	for id, rec := range n.fsm.NodePins() {
		if rec.GetSite() != "" {
			out[id] = rec.GetSite()
		}
	}
	out[n.cfg.ID] = n.cfg.Site
	return out
}

// auditConfigChanges records, as leader, how the Raft configuration changed
// since the one this node last saw as leader: members added (with their
// suffrage), promoted, demoted and removed. It is called with each new
// configuration.
func (n *Node) auditConfigChanges(prev, cur raft.Configuration) {
	if n.raft.State() != raft.Leader || len(prev.Servers) == 0 {
		return
	}
	before := map[raft.ServerID]raft.Server{}
	for _, s := range prev.Servers {
		before[s.ID] = s
	}
	var changes []*cofferv1.AuditEntry
	for _, s := range cur.Servers {
		b, ok := before[s.ID]
		delete(before, s.ID)
		switch {
		case !ok:
			changes = append(changes, n.memberEntry(string(s.ID), fmt.Sprintf("added to the Raft configuration as a %s at %s", suffrageName(s), s.Address)))
		case b.Suffrage != s.Suffrage:
			changes = append(changes, n.memberEntry(string(s.ID), fmt.Sprintf("suffrage changed from %s to %s", suffrageName(b), suffrageName(s))))
		case b.Address != s.Address:
			changes = append(changes, n.memberEntry(string(s.ID), fmt.Sprintf("Raft address changed from %s to %s", b.Address, s.Address)))
		}
	}
	for _, s := range before {
		changes = append(changes, n.memberEntry(string(s.ID), fmt.Sprintf("removed from the Raft configuration (was a %s at %s)", suffrageName(s), s.Address)))
	}
	for _, e := range changes {
		n.logger.Info("membership changed", "member", e.GetClient(), "change", e.GetReason())
		n.sideAudit.record(e)
	}
}
