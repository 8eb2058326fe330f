package node

import (
	"context"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/transport"
)

// statusTimeout bounds how long Status waits for each member.
const statusTimeout = 2 * time.Second

// digestTimeout bounds how long Status waits for each member when it asks
// for state digests, which read each member's whole store (its cost is in
// fsm/DESIGN.md). It stays below the client
// library's default attempt timeout (5 s), so that a slow member is
// reported as such instead of failing the whole status.
const digestTimeout = 4 * time.Second

// LocalStatus reports this node's own view.
func (n *Node) ownStatus(ctx context.Context, req *cofferv1.NodeStatusRequest) (*cofferv1.NodeStatus, error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if c.id.Kind == transport.KindNode {
		if _, err := n.requireMember(ctx, doorStatus, ""); err != nil {
			return nil, err
		}
	} else if err := n.svc.authorize(c, authz.OpClusterRead, ""); err != nil {
		return nil, err
	}
	st := n.localStatus()
	if req.GetDigest() {
		n.addStateDigest(ctx, st)
	}
	return st, nil
}

// addStateDigest fills in st's state digest and the applied index it was
// taken at (fsm StateDigest). A digest that cannot be computed (the
// caller's deadline, a restore in progress, a store that cannot be read)
// leaves them empty and says why in st.Error. One digest is computed at a
// time per node; other requests wait for it within their deadline.
func (n *Node) addStateDigest(ctx context.Context, st *cofferv1.NodeStatus) {
	idx, sum, err := func() (uint64, [32]byte, error) {
		select {
		case n.digests <- struct{}{}:
			defer func() { <-n.digests }()
		case <-ctx.Done():
			return 0, [32]byte{}, ctx.Err()
		}
		return n.fsm.StateDigest(ctx)
	}()
	if err != nil {
		st.Healthy = false
		msg := "state digest: " + err.Error()
		if st.Error != "" {
			msg = st.Error + "; " + msg
		}
		st.Error = msg
		return
	}
	st.StateDigest, st.StateDigestIndex = sum[:], idx
}

func (n *Node) localStatus() *cofferv1.NodeStatus {
	st := &cofferv1.NodeStatus{
		Id:             n.cfg.ID,
		Site:           n.cfg.Site,
		Address:        n.peerAPIAddrOr(n.cfg.ID, n.APIAddr()),
		RaftAddress:    n.cfg.RaftAdvertise(),
		LastLogIndex:   n.raft.LastIndex(),
		AppliedIndex:   n.fsm.AppliedIndex(),
		AuditSeq:       n.fsm.AuditHeadSeq(),
		CommandVersion: n.commandVersion.Load(),
	}
	if pin := n.fsm.NodePins()[n.cfg.ID]; pin != nil {
		st.PinnedCertSha256 = hex.EncodeToString(pin.GetCertSha256())
		st.Drained = pin.GetDrained()
	}
	stats := n.raft.Stats()
	st.Term, _ = strconv.ParseUint(stats["term"], 10, 64)
	switch n.raft.State() {
	case raft.Leader:
		st.Role = cofferv1.NodeRole_NODE_ROLE_LEADER
	case raft.Follower:
		st.Role = cofferv1.NodeRole_NODE_ROLE_FOLLOWER
	case raft.Candidate:
		st.Role = cofferv1.NodeRole_NODE_ROLE_CANDIDATE
	default:
		st.Role = cofferv1.NodeRole_NODE_ROLE_SHUTDOWN
	}
	_, leader := n.raft.LeaderWithID()
	st.LeaderId = string(leader)
	st.Suffrage = "none"
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if string(s.ID) == n.cfg.ID {
				st.Voter = s.Suffrage == raft.Voter
				st.Suffrage = suffrageName(s)
			}
		}
	}
	st.LastLogTerm, _ = strconv.ParseUint(stats["last_log_term"], 10, 64)
	st.LastContactMs = lastContactMs(stats["last_contact"], n.raft.State() == raft.Leader)
	switch {
	case leader == "":
		st.Error = "no leader known"
	case n.barrier.Ready() != nil:
		st.Error = n.barrier.Ready().Error()
	default:
		st.Healthy = true
	}
	return st
}

func (n *Node) peerAPIAddrOr(id, def string) string {
	if a := n.peerAPIAddr(id); a != "" {
		return a
	}
	return def
}

// status asks every member of the Raft configuration for its own view.
func (n *Node) status(ctx context.Context, req *cofferv1.ClusterStatusRequest) (*cofferv1.ClusterStatusResponse, error) {
	c, err := callerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := n.svc.authorize(c, authz.OpClusterRead, ""); err != nil {
		return nil, err
	}
	ids := map[string]raft.Server{}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			ids[string(srv.ID)] = srv
		}
	}
	n.peersMu.RLock()
	for id, p := range n.peers {
		if _, ok := ids[id]; !ok {
			ids[id] = raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(p.RaftAddr)}
		}
	}
	n.peersMu.RUnlock()
	out := &cofferv1.ClusterStatusResponse{ReporterId: n.cfg.ID}
	out.SiteLoss, out.LayoutWarning = n.siteLoss()
	_, leader := n.raft.LeaderWithID()
	out.Authoritative = leader != ""

	if c, err := n.fsm.Cluster(); err == nil {
		out.ClusterId = c.GetClusterId()
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id, srv := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := n.memberStatus(ctx, id, srv, req.GetDigest())
			mu.Lock()
			out.Nodes = append(out.Nodes, st)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(out.Nodes, func(i, j int) bool { return out.Nodes[i].Id < out.Nodes[j].Id })
	return out, nil
}

// memberStatus asks member id for its status, with its state digest when
// digest is set.
func (n *Node) memberStatus(ctx context.Context, id string, srv raft.Server, digest bool) *cofferv1.NodeStatus {
	timeout := statusTimeout
	if digest {
		timeout = digestTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if id == n.cfg.ID {
		st := n.localStatus()
		if digest {
			n.addStateDigest(cctx, st)
		}
		return st
	}
	p, _ := n.peer(id)
	fail := func(msg string) *cofferv1.NodeStatus {
		return &cofferv1.NodeStatus{Id: id, Site: p.Site, Address: p.APIAddr, RaftAddress: string(srv.Address),
			Role: cofferv1.NodeRole_NODE_ROLE_UNREACHABLE, Error: msg, Voter: srv.Suffrage == raft.Voter,
			Suffrage: suffrageName(srv), LastContactMs: -1}
	}
	conn, err := n.peerConn(id)
	if err != nil {
		return fail(err.Error())
	}
	st, err := cofferv1.NewClusterServiceClient(conn).LocalStatus(cctx, &cofferv1.NodeStatusRequest{Digest: digest})
	if err != nil {
		return fail(err.Error())
	}
	return st
}

// membersApply reports whether every member of the Raft configuration says
// it applies command version v, so that the leader can write one without
// stopping a replica that runs an older build. A member that cannot be
// asked counts as not ready.
func (n *Node) membersApply(v uint32) bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	ctx, stop := n.stopContext(ctx) // do not hold Close up for the status timeout
	defer stop()
	for _, srv := range f.Configuration().Servers {
		if st := n.memberStatus(ctx, string(srv.ID), srv, false); st.GetCommandVersion() < v {
			return false
		}
	}
	return true
}

// snapshotChunk is the size of one Snapshot stream message.
const snapshotChunk = 256 << 10

// chunkWriter turns a byte stream into bounded messages.
type chunkWriter struct {
	buf   []byte
	total int
	send  func([]byte) error
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		take := min(snapshotChunk-len(w.buf), len(p))
		w.buf = append(w.buf, p[:take]...)
		p = p[take:]
		if len(w.buf) == snapshotChunk {
			if err := w.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (w *chunkWriter) flush() error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.send(w.buf)
	w.total += len(w.buf)
	w.buf = nil
	return err
}

// suffrageName names a server's suffrage for status.
func suffrageName(s raft.Server) string {
	switch s.Suffrage {
	case raft.Voter:
		return "voter"
	case raft.Nonvoter:
		return "non-voter"
	case raft.Staging:
		return "staging"
	}
	return "none"
}

// lastContactMs turns Raft's last_contact stat ("never", "0" or a
// duration) into milliseconds: 0 on the leader, -1 for never.
func lastContactMs(v string, leader bool) int64 {
	if leader {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		if v == "0" {
			return 0
		}
		return -1
	}
	return d.Milliseconds()
}

// siteLoss reports, from the Raft configuration this node holds and the
// members' sites, whether the cluster survives the loss of each site that
// holds voters, and a warning naming the sites whose loss it would not
// survive.
func (n *Node) siteLoss() ([]*cofferv1.SiteLoss, string) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return nil, ""
	}
	sites := n.memberSites()
	voters := map[string]int{}
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			site := sites[string(s.ID)]
			if site == "" {
				site = "unknown"
			}
			voters[site]++
		}
	}
	var out []*cofferv1.SiteLoss
	var fatal []string
	for site, ok := range cluster.SiteLoss(voters) {
		out = append(out, &cofferv1.SiteLoss{Site: site, Voters: uint32(voters[site]), Survives: ok})
		if !ok {
			fatal = append(fatal, site)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Site < out[j].Site })
	sort.Strings(fatal)
	if len(fatal) == 0 {
		return out, ""
	}
	return out, fmt.Sprintf("the cluster does not survive the loss of site %s: spread the voters over three or more sites so that none holds a majority", strings.Join(fatal, ", "))
}
