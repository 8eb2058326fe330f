package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// Members: who may speak as a node.
//
// A node certificate from the node CA proves only that someone holding the
// node CA key issued it. A node identity is trusted as a member only while
// it is in the Raft configuration, its certificate is not on the deny list,
// and, once the leader has admitted it, it presents the very certificate
// pinned at admission (checkMember). That rule guards every door a node
// identity can use: the internal service (Forward, ReadIndex, AppendAudit),
// the cluster status fan-out (LocalStatus) and the Raft port. Every refusal
// is logged and audited (sideaudit.go).
//
// Admission: the leader pins, through Raft (PIN_NODE), the certificate each
// member of the configuration presents at its configured Raft address when
// the leader dials it, and its own. Until a member is pinned (in practice
// the first second of a new cluster) it may take part in Raft and answer
// status, but the doors that act for clients or write the audit log
// (Forward, AppendAudit) and ReadIndex refuse it with Unavailable. An
// operator replaces a pin after renewing a member's certificate
// (PinNode, `coffer cluster pin`).

// memberDoor names a door that node identities use, for messages, audit
// entries and metrics.
type memberDoor string

const (
	doorForward     memberDoor = "internal.forward"
	doorReadIndex   memberDoor = "internal.read_index"
	doorAppendAudit memberDoor = "internal.append_audit"
	doorStatus      memberDoor = "cluster.read"
	doorRaft        memberDoor = "raft.connect"
)

// needsPin reports whether a door requires an admitted (pinned) member.
func (d memberDoor) needsPin() bool { return d != doorStatus && d != doorRaft }

var metricMemberRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "coffer", Name: "member_refusals_total",
	Help: "Node identities refused at a member-only door (internal API, status, Raft port), by door.",
}, []string{"door"})

// certSHA256 is the fingerprint pins are compared by.
func certSHA256(c *x509.Certificate) []byte {
	sum := sha256.Sum256(c.Raw)
	return sum[:]
}

// checkMember is the one rule for node identities (see above). cert is the
// leaf of the peer's verified chain.
func (n *Node) checkMember(id transport.Identity, cert *x509.Certificate, door memberDoor) error {
	if id.Kind != transport.KindNode {
		return fmt.Errorf("%w: %s is not a node identity and may not use %s", ErrPermission, id, door)
	}
	if cert == nil {
		return fmt.Errorf("%w: %s presented no certificate", ErrUnauthenticated, id)
	}
	r := n.raftPort.Load()
	if r == nil {
		return fmt.Errorf("%w: this node is still starting", ErrNoLeader)
	}
	servers := r.GetConfiguration().Configuration().Servers
	if len(servers) == 0 {
		// This node belongs to no cluster yet (it waits to be added): it has
		// no members to tell apart, and no state to protect.
		if door.needsPin() {
			return fmt.Errorf("%w: this node is not part of a cluster yet", ErrNotAdmitted)
		}
		return nil
	}
	member := false
	for _, s := range servers {
		if string(s.ID) == id.Name {
			member = true
			break
		}
	}
	if !member {
		return fmt.Errorf("%w: %s is not in the Raft configuration (never admitted, or removed)", ErrNotMember, id)
	}
	serial := authz.FormatSerial(cert.SerialNumber)
	if n.fsm.Authz().Revoked(serial) {
		return fmt.Errorf("%w: the certificate of %s (serial %s) is revoked", ErrUnauthenticated, id, serial)
	}
	pin := n.fsm.NodePins()[id.Name]
	if pin == nil {
		if door.needsPin() {
			return fmt.Errorf("%w: %s is a member but its certificate is not pinned yet; the leader pins it once it reaches the member's Raft address", ErrNotAdmitted, id)
		}
		return nil
	}
	if got := certSHA256(cert); !bytes.Equal(got, pin.GetCertSha256()) && !bytes.Equal(got, pin.GetPreviousSha256()) {
		return fmt.Errorf("%w: %s presented certificate sha256:%s (serial %s), but sha256:%s was pinned at its admission; after renewing a member's certificate, pin the new one with coffer cluster pin",
			ErrPinMismatch, id, hex.EncodeToString(got), serial, hex.EncodeToString(pin.GetCertSha256()))
	}
	return nil
}

// requireMember authenticates a gRPC caller that must be a member at door,
// logging and auditing a refusal. what describes the request for the audit
// entry of a refusal (what a forward asked for, say).
func (n *Node) requireMember(ctx context.Context, door memberDoor, what string) (caller, error) {
	c, err := authenticate(ctx)
	if err == nil {
		err = n.checkMember(c.id, c.cert, door)
	}
	if err != nil {
		n.refuseMember(c.String(), peerAddr(ctx), door, what, err)
		_ = grpc.SetTrailer(ctx, metadata.Pairs(memberRefusedKey, string(door)))
		return caller{}, err
	}
	return c, nil
}

// refuseMember logs, counts and audits a refused node identity.
func (n *Node) refuseMember(who, addr string, door memberDoor, what string, err error) {
	if who == "" || who == ":" {
		who = "unauthenticated"
	}
	metricMemberRefusals.WithLabelValues(string(door)).Inc()
	if errors.Is(err, ErrNotAdmitted) || errors.Is(err, ErrNoLeader) {
		// A member the leader has not reached yet, or a node still
		// starting: retryable, and no one to blame.
		n.logger.Debug("member not admitted yet", "peer", who, "door", string(door), "err", err)
		return
	}
	reason := err.Error()
	if what != "" {
		reason = what + ": " + reason
	}
	e := &cofferv1.AuditEntry{TimeUnixNano: time.Now().UnixNano(), Node: n.cfg.ID, Caller: clip(who, audit.MaxFieldLen),
		Operation: string(door), Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED,
		Reason: clip(toStatusText(err)+" (from "+addr+"): "+reason, audit.MaxFieldLen)}
	if n.sideAudit.add(e, refusalKey{caller: who, door: door, cause: err.Error()}) {
		n.logger.Warn("refused a node identity", "peer", who, "address", addr, "door", string(door), "err", err)
	}
}

// authorizeRaftPeer is the Raft port's Authorize: the member rule, and for
// a connection this node dialled, that the member answering is the one the
// configuration places at that address. A dialled member's certificate is
// remembered for its admission (admitMembers).
func (n *Node) authorizeRaftPeer(p transport.RaftPeer) error {
	err := n.checkMember(p.Identity, p.Cert, doorRaft)
	if r := n.raftPort.Load(); err == nil && p.Outbound && r != nil {
		for _, s := range r.GetConfiguration().Configuration().Servers {
			if string(s.Address) != p.Addr {
				continue
			}
			if string(s.ID) != p.Identity.Name {
				err = fmt.Errorf("%w: the Raft address %s belongs to member %s, but %s answered", ErrNotMember, p.Addr, s.ID, p.Identity)
				break
			}
			n.dialed.remember(p.Identity.Name, p.Cert)
		}
	}
	if err != nil {
		n.refuseMember(p.Identity.String(), p.Addr, doorRaft, "", err)
	}
	return err
}

// dialedCerts remembers, per member id, the certificate it presented at its
// configured Raft address when this node last dialled it.
type dialedCerts struct {
	mu    sync.Mutex
	certs map[string]*x509.Certificate
}

func (d *dialedCerts) remember(id string, c *x509.Certificate) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.certs == nil {
		d.certs = map[string]*x509.Certificate{}
	}
	d.certs[id] = c
}

func (d *dialedCerts) get(id string) *x509.Certificate {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.certs[id]
}

// pinVersionPoll bounds how often the leader asks the members whether they
// all apply PIN_NODE before it first writes one.
const pinVersionPoll = 10 * time.Second

// admitMembers pins, as leader, the certificate of every member of the
// configuration that has none yet: its own, and for the others the one each
// presented when this node dialled its Raft address. It runs in the leader
// loop once the cluster is initialised.
func (n *Node) admitMembers() error {
	pins := n.fsm.NodePins()
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return f.Error()
	}
	var todo []raft.Server
	for _, s := range f.Configuration().Servers {
		if pins[string(s.ID)] == nil {
			todo = append(todo, s)
		}
	}
	if len(todo) == 0 {
		return n.retirePreviousPins(pins)
	}
	if !n.pinsEnabled.Load() {
		now := time.Now().UnixNano()
		if last := n.pinPoll.Load(); last != 0 && now-last < int64(pinVersionPoll) {
			return nil
		}
		n.pinPoll.Store(now)
		if !n.membersApply(fsm.NodePinVersion) {
			n.logger.Warn("member certificates are not pinned yet: not every member runs a build that applies pins")
			return nil
		}
		n.pinsEnabled.Store(true)
	}
	for _, s := range todo {
		id := string(s.ID)
		cert := n.seenCert(id)
		if cert == nil {
			continue // not reached yet; the next round tries again
		}
		p, _ := n.peer(id)
		res, err := n.proposePin(context.Background(), id, cert, pinOptions{onlyIfAbsent: true, site: p.Site, apiAddr: p.APIAddr, raftAddr: p.RaftAddr},
			n.memberEntry(id, "admitted: pinned certificate sha256:"+hex.EncodeToString(certSHA256(cert))+" serial "+authz.FormatSerial(cert.SerialNumber)))
		if err != nil {
			return fmt.Errorf("pin %s: %w", id, err)
		}
		if !res.Duplicate {
			n.logger.Info("member admitted: certificate pinned", "member", id, "sha256", hex.EncodeToString(certSHA256(cert)))
		}
	}
	return n.retirePreviousPins(pins)
}

// retirePreviousPins clears, as leader, the previous certificate of every
// re-pinned member that has been seen with its new one.
func (n *Node) retirePreviousPins(pins fsm.Members) error {
	for id, pin := range pins {
		if len(pin.GetPreviousSha256()) == 0 {
			continue
		}
		cert := n.seenCert(id)
		if cert == nil || !bytes.Equal(certSHA256(cert), pin.GetCertSha256()) {
			continue
		}
		res, err := n.proposePin(context.Background(), id, cert, pinOptions{expected: pin.GetCertSha256()},
			n.memberEntry(id, "retired the previous certificate sha256:"+hex.EncodeToString(pin.GetPreviousSha256())+": the member presented its new one, sha256:"+hex.EncodeToString(pin.GetCertSha256())))
		if err != nil {
			return fmt.Errorf("retire the previous pin of %s: %w", id, err)
		}
		if !res.Duplicate {
			n.logger.Info("member's previous certificate retired", "member", id, "previous", hex.EncodeToString(pin.GetPreviousSha256()))
		}
	}
	return nil
}

// seenCert is the certificate member id presented: this node's own, or the
// one at the member's Raft address when this node last dialled it.
func (n *Node) seenCert(id string) *x509.Certificate {
	if id == n.cfg.ID {
		return n.ownCert
	}
	return n.dialed.get(id)
}

// memberEntry is the audit entry of a membership change the leader makes on
// its own (admission, retiring a previous pin).
func (n *Node) memberEntry(id, what string) *cofferv1.AuditEntry {
	return &cofferv1.AuditEntry{TimeUnixNano: time.Now().UnixNano(), Node: n.cfg.ID, Caller: "node:" + n.cfg.ID,
		Operation: string(authz.OpClusterManage), Client: "node:" + id, Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED,
		Reason: clip(what, audit.MaxFieldLen)}
}

// pinOptions shape a PIN_NODE command (see PinNodeCommand): site and
// addresses are where the member is, recorded with its pin.
type pinOptions struct {
	onlyIfAbsent            bool
	previous                []byte
	expected                []byte
	site, apiAddr, raftAddr string
}

// proposePin proposes a PIN_NODE command carrying e as its audit entry.
func (n *Node) proposePin(ctx context.Context, id string, cert *x509.Certificate, o pinOptions, e *cofferv1.AuditEntry) (fsm.Result, error) {
	rec := &cofferv1.NodeRecord{Id: id, CertSha256: certSHA256(cert), CertSerial: authz.FormatSerial(cert.SerialNumber),
		CertNotAfterUnixNano: cert.NotAfter.UnixNano(), PinnedUnixNano: time.Now().UnixNano(), PinnedBy: n.cfg.ID,
		PreviousSha256: o.previous, Site: o.site, ApiAddr: o.apiAddr, RaftAddr: o.raftAddr}
	if cur, err := n.fsm.NodeRecord(id); err == nil && o.site == "" {
		// A re-pin or a retirement keeps where the member is, and whether it
		// is drained (a removal is undone by a re-pin, on purpose).
		rec.Site, rec.ApiAddr, rec.RaftAddr, rec.Drained = cur.GetSite(), cur.GetApiAddr(), cur.GetRaftAddr(), cur.GetDrained()
	}
	if err := n.barrier.Tag("n/"+id, rec, nil); err != nil {
		return fsm.Result{}, err
	}
	data, err := fsm.Encode(cofferv1.CommandType_COMMAND_TYPE_PIN_NODE, &cofferv1.PinNodeCommand{Node: rec, OnlyIfAbsent: o.onlyIfAbsent,
		ExpectedSha256: o.expected, Audit: e})
	if err != nil {
		return fsm.Result{}, err
	}
	res, _, err := n.proposeWait(ctx, data, n.futureError)
	if err != nil {
		return fsm.Result{}, err
	}
	return res, res.Err
}

// revalidateRaft closes the Raft connections whose peer the member rule no
// longer accepts. The state machine calls it as soon as it applies a change
// to revocations or pins (before the change is acknowledged), and
// revalidateLoop whenever the Raft configuration changed (a removal).
func (n *Node) revalidateRaft() {
	if s := n.raftStream; s != nil {
		s.Revalidate()
	}
}

// revalidateEvery is how often revalidateLoop looks for a new Raft
// configuration.
const revalidateEvery = 250 * time.Millisecond

func (n *Node) revalidateLoop() {
	defer n.wg.Done()
	t := time.NewTicker(revalidateEvery)
	defer t.Stop()
	var last raft.Configuration
	for {
		select {
		case <-n.stopCh:
			return
		case <-t.C:
		}
		cur := n.raft.GetConfiguration().Configuration()
		if sameConfiguration(cur, last) {
			continue
		}
		n.revalidateRaft()
		n.auditConfigChanges(last, cur)
		if _, warn := n.siteLoss(); warn != "" && n.IsLeader() {
			n.logger.Warn("voter layout: " + warn)
		}
		last = cur
	}
}

// sameConfiguration compares two Raft configurations server by server.
func sameConfiguration(a, b raft.Configuration) bool {
	if len(a.Servers) != len(b.Servers) {
		return false
	}
	for i := range a.Servers {
		if a.Servers[i] != b.Servers[i] {
			return false
		}
	}
	return true
}

// toStatusText is the gRPC code name an error maps to.
func toStatusText(err error) string { return status.Code(toStatus(err)).String() }

// peerAddr is the remote address of a gRPC caller, or "unknown".
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "unknown"
}

// parsePinRequest checks a PinNode request: a member id and one PEM
// certificate that chains to the node CA for both node usages and carries
// that member's identity.
func (n *Node) parsePinRequest(req *cofferv1.PinNodeRequest) (*x509.Certificate, error) {
	id := transport.Identity{Kind: transport.KindNode, Name: req.GetNode()}
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("%w: node: %v", ErrInvalidArgument, err)
	}
	cert, err := parseCertificatePEM(req.GetCertificatePem())
	if err != nil {
		return nil, err
	}
	got, err := transport.IdentityFromCert(cert)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate: %v", ErrInvalidArgument, err)
	}
	if got != id {
		return nil, fmt.Errorf("%w: the certificate carries the identity %s, not %s", ErrInvalidArgument, got, id)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: n.clientTLS.RootCAs, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return nil, fmt.Errorf("%w: the certificate is not a valid node certificate from this cluster's node CA: %v", ErrInvalidArgument, err)
		}
	}
	if n.fsm.Authz().Revoked(authz.FormatSerial(cert.SerialNumber)) {
		return nil, fmt.Errorf("%w: the certificate (serial %s) is revoked", ErrInvalidArgument, authz.FormatSerial(cert.SerialNumber))
	}
	return cert, nil
}

// pinNode executes PinNode on the leader.
func (n *Node) pinNode(ctx context.Context, r *request, req *cofferv1.PinNodeRequest) (*cofferv1.PinNodeResponse, error) {
	c := r.caller
	cert, err := n.parsePinRequest(req)
	if err != nil {
		return nil, err
	}
	member := false
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		member = member || string(s.ID) == req.GetNode()
	}
	cur, curErr := n.fsm.NodeRecord(req.GetNode())
	readmit := curErr == nil && cur.GetRemoved()
	if !member && !readmit {
		return nil, fmt.Errorf("%w: node %q is not a member of this cluster", ErrNotFound, req.GetNode())
	}
	if !n.membersApply(fsm.NodePinVersion) {
		return nil, fmt.Errorf("%w: not every member runs a build that applies certificate pins; upgrade them first", ErrPrecondition)
	}
	var prevSum []byte
	if curErr == nil && !readmit && !bytes.Equal(cur.GetCertSha256(), certSHA256(cert)) {
		prevSum = cur.GetCertSha256()
	}
	prev := hex.EncodeToString(prevSum)
	sum := hex.EncodeToString(certSHA256(cert))
	e := r.describe("node:"+req.GetNode(), "pinned certificate sha256:"+sum+" serial "+authz.FormatSerial(cert.SerialNumber)+replacing(prev))
	r.carry()
	if _, err := n.proposePin(ctx, req.GetNode(), cert, pinOptions{previous: prevSum}, e); err != nil {
		r.handBack()
		return nil, err
	}
	n.logger.Info("member certificate re-pinned", "member", req.GetNode(), "sha256", sum, "previous", prev, "by", c.String())
	return &cofferv1.PinNodeResponse{Node: req.GetNode(), CertSha256: sum, PreviousSha256: prev, CertSerial: authz.FormatSerial(cert.SerialNumber)}, nil
}

func replacing(prev string) string {
	if prev == "" {
		return " (none was pinned, or the same one)"
	}
	return ", replacing sha256:" + prev + " (still accepted until the member presents the new one)"
}
