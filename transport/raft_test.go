package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// mustRaftTransport starts a Raft transport on a loopback port with the
// given TLS configurations.
func mustRaftTransport(t *testing.T, server, client *tls.Config, log *logBuffer) *raft.NetworkTransport {
	t.Helper()
	var logger hclog.Logger = hclog.NewNullLogger()
	if log != nil {
		logger = testLogger("raft-net", log)
	}
	trans, err := NewRaftTransport(RaftTransportConfig{
		BindAddr: "127.0.0.1:0",
		Server:   server,
		Client:   client,
		Timeout:  testTimeout,
		Logger:   logger,
	})
	if err != nil {
		t.Fatalf("NewRaftTransport: %v", err)
	}
	t.Cleanup(func() { _ = trans.Close() })
	return trans
}

// mustNodeTransport issues a node certificate for name on 127.0.0.1 and
// starts a Raft transport with it.
func mustNodeTransport(t *testing.T, pki *testPKI, name string, log *logBuffer) *raft.NetworkTransport {
	t.Helper()
	c := pki.mustIssue(t, Identity{KindNode, name}, loopback)
	return mustRaftTransport(t, mustServerTLS(t, c), mustClientTLS(t, c), log)
}

// serveAppendEntries answers AppendEntries RPCs on trans, reporting each
// request's term on terms, until the test ends.
func serveAppendEntries(t *testing.T, trans *raft.NetworkTransport, terms chan<- uint64) {
	t.Helper()
	stop, done := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() {
		close(stop)
		<-done
	})
	ch := trans.Consumer()
	go func() {
		defer close(done)
		for {
			select {
			case rpc := <-ch:
				req, ok := rpc.Command.(*raft.AppendEntriesRequest)
				if !ok {
					rpc.Respond(nil, fmt.Errorf("unexpected %T", rpc.Command))
					continue
				}
				select {
				case terms <- req.Term:
				case <-stop:
					return
				}
				rpc.Respond(&raft.AppendEntriesResponse{Term: req.Term, LastLog: req.PrevLogEntry + uint64(len(req.Entries)), Success: true}, nil)
			case <-stop:
				return
			}
		}
	}()
}

func appendEntries(trans *raft.NetworkTransport, target *raft.NetworkTransport, term uint64) (*raft.AppendEntriesResponse, error) {
	req := &raft.AppendEntriesRequest{
		RPCHeader:    raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("sender"), Addr: trans.EncodePeer("sender", trans.LocalAddr())},
		Term:         term,
		PrevLogEntry: 10,
		PrevLogTerm:  term,
		Entries:      []*raft.Log{{Index: 11, Term: term, Type: raft.LogCommand, Data: []byte("hello")}},
	}
	var resp raft.AppendEntriesResponse
	err := trans.AppendEntries("target", target.LocalAddr(), req, &resp)
	return &resp, err
}

func expectTerm(t *testing.T, terms <-chan uint64, want uint64) {
	t.Helper()
	select {
	case got := <-terms:
		if got != want {
			t.Fatalf("consumer received term %d first; want %d", got, want)
		}
	case <-time.After(testTimeout):
		t.Fatalf("consumer never received term %d", want)
	}
}

func TestRaftTransport_AppendEntries(t *testing.T) {
	pki := mustPKI(t, "ca")
	t1 := mustNodeTransport(t, pki, "n1", nil)
	t2 := mustNodeTransport(t, pki, "n2", nil)
	terms1, terms2 := make(chan uint64, 4), make(chan uint64, 4)
	serveAppendEntries(t, t1, terms1)
	serveAppendEntries(t, t2, terms2)

	if host, _, _ := net.SplitHostPort(string(t1.LocalAddr())); host != "127.0.0.1" {
		t.Fatalf("LocalAddr = %q", t1.LocalAddr())
	}
	for i, dir := range []struct {
		from, to *raft.NetworkTransport
		terms    chan uint64
	}{{t1, t2, terms2}, {t2, t1, terms1}} {
		term := uint64(7 + i)
		resp, err := appendEntries(dir.from, dir.to, term)
		if err != nil {
			t.Fatalf("AppendEntries %d: %v", i, err)
		}
		if !resp.Success || resp.Term != term || resp.LastLog != 11 {
			t.Fatalf("response %d = %+v", i, resp)
		}
		expectTerm(t, dir.terms, term)
	}
}

func TestRaftTransport_RejectsClientIdentity(t *testing.T) {
	pki := mustPKI(t, "ca")
	log := newLogBuffer()
	target := mustNodeTransport(t, pki, "n1", log)
	terms := make(chan uint64, 4)
	serveAppendEntries(t, target, terms)

	client := pki.mustIssue(t, Identity{KindClient, "x"})

	// A raw TLS client speaking the Raft protocol with a valid client
	// certificate from the same CA.
	conf := mustClientTLS(t, client)
	conf.NextProtos = []string{RaftALPN}
	expectRefused(t, string(target.LocalAddr()), conf)

	// A Raft transport whose outbound side presents the client certificate.
	node := pki.mustIssue(t, Identity{KindNode, "n2"}, loopback)
	rogue := mustRaftTransport(t, mustServerTLS(t, node), mustClientTLS(t, client), nil)
	if _, err := appendEntries(rogue, target, 666); err == nil {
		t.Fatal("AppendEntries with a client certificate succeeded")
	}
	log.waitFor(t, "rejected raft connection", "client:x")

	// A legitimate node still gets through, and is the first RPC Raft sees.
	good := mustNodeTransport(t, pki, "n3", nil)
	if _, err := appendEntries(good, target, 3); err != nil {
		t.Fatalf("AppendEntries from node: %v", err)
	}
	expectTerm(t, terms, 3)
}

func TestRaftTransport_RejectsForeignCA(t *testing.T) {
	pki := mustPKI(t, "ca")
	foreign := mustPKI(t, "foreign")
	log := newLogBuffer()
	target := mustNodeTransport(t, pki, "n1", log)
	terms := make(chan uint64, 4)
	serveAppendEntries(t, target, terms)

	// A node certificate from another CA, trusting the right CA: refused by
	// the listener.
	fc := foreign.mustIssue(t, Identity{KindNode, "n1"}, loopback)
	conf := &tls.Config{
		MinVersion:           tls.VersionTLS13,
		RootCAs:              poolOf(pki.ca),
		GetClientCertificate: alwaysPresent(mustKeyPair(t, fc)),
		NextProtos:           []string{RaftALPN},
	}
	expectRefused(t, string(target.LocalAddr()), conf)
	log.waitFor(t, "rejected raft connection", "unknown authority")

	// A whole foreign cluster member: refused in both directions.
	alien := mustRaftTransport(t, mustServerTLS(t, fc), mustClientTLS(t, fc), nil)
	if _, err := appendEntries(alien, target, 666); err == nil {
		t.Fatal("AppendEntries from a foreign CA succeeded")
	}
	if _, err := appendEntries(target, alien, 666); err == nil {
		t.Fatal("AppendEntries to a foreign CA succeeded")
	}

	good := mustNodeTransport(t, pki, "n2", nil)
	if _, err := appendEntries(good, target, 5); err != nil {
		t.Fatalf("AppendEntries from node: %v", err)
	}
	expectTerm(t, terms, 5)
}

func TestRaftTransport_RequiresRaftALPN(t *testing.T) {
	pki := mustPKI(t, "ca")
	log := newLogBuffer()
	target := mustNodeTransport(t, pki, "n1", log)

	// A valid node certificate that does not negotiate the Raft protocol,
	// as a gRPC client would (h2) or a bare TLS client (none).
	conf := mustClientTLS(t, pki.mustIssue(t, Identity{KindNode, "n2"}))
	for _, protos := range [][]string{nil, {"h2"}} {
		c := conf.Clone()
		c.NextProtos = protos
		expectRefused(t, string(target.LocalAddr()), c)
	}
	log.waitFor(t, "rejected raft connection")
}

func TestRaftTransport_HandshakeTimeout(t *testing.T) {
	pki := mustPKI(t, "ca")
	c := pki.mustIssue(t, Identity{KindNode, "n1"}, loopback)
	log := newLogBuffer()
	trans, err := NewRaftTransport(RaftTransportConfig{
		BindAddr: "127.0.0.1:0",
		Server:   mustServerTLS(t, c),
		Client:   mustClientTLS(t, c),
		Timeout:  200 * time.Millisecond,
		Logger:   testLogger("raft-net", log),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = trans.Close() }()

	// A TCP peer that never starts a handshake is cut off at the timeout.
	conn, err := net.Dial("tcp", string(trans.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if err := conn.SetReadDeadline(time.Now().Add(testTimeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("silent connection not closed by the server: %v", err)
	}
	log.waitFor(t, "rejected raft connection")
}

func TestRaftTransport_VerifiesServerName(t *testing.T) {
	pki := mustPKI(t, "ca")
	// The listener's certificate names another address than the one dialled.
	c := pki.mustIssue(t, Identity{KindNode, "n1"}, net.ParseIP("10.9.8.7"))
	target := mustRaftTransport(t, mustServerTLS(t, c), mustClientTLS(t, c), nil)
	dialer := mustNodeTransport(t, pki, "n2", nil)
	_, err := appendEntries(dialer, target, 1)
	var hostErr x509.HostnameError
	if err == nil || !errors.As(err, &hostErr) {
		t.Fatalf("dial to a host not in the certificate: err = %v; want a hostname error", err)
	}
}

func TestRaftStreamLayer_Close(t *testing.T) {
	pki := mustPKI(t, "ca")
	c := pki.mustIssue(t, Identity{KindNode, "n1"}, loopback)
	s, err := NewRaftStreamLayer(RaftTransportConfig{
		BindAddr: "127.0.0.1:0",
		Server:   mustServerTLS(t, c),
		Client:   mustClientTLS(t, c),
		Logger:   hclog.NewNullLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := s.Accept()
		accepted <- err
	}()
	// Leave a handshake pending so Close must abort it.
	raw, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = raw.Close() }()

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close = %v; want net.ErrClosed", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Accept did not return after Close")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Dial(raft.ServerAddress(s.Addr().String()), time.Second); err == nil {
		t.Fatal("Dial after Close succeeded")
	}
}

func TestRaftTransportConfig_Validate(t *testing.T) {
	pki := mustPKI(t, "ca")
	c := pki.mustIssue(t, Identity{KindNode, "n1"}, loopback)
	server, client := mustServerTLS(t, c), mustClientTLS(t, c)
	ok := RaftTransportConfig{BindAddr: "127.0.0.1:0", Server: server, Client: client}
	if err := ok.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	mut := func(f func(*RaftTransportConfig)) RaftTransportConfig {
		c := ok
		c.Server, c.Client = server.Clone(), client.Clone()
		f(&c)
		return c
	}
	for name, cfg := range map[string]RaftTransportConfig{
		"no bind":          mut(func(c *RaftTransportConfig) { c.BindAddr = "" }),
		"bad bind":         mut(func(c *RaftTransportConfig) { c.BindAddr = "localhost" }),
		"unspecified adv":  mut(func(c *RaftTransportConfig) { c.Advertise = "0.0.0.0:7201" }),
		"adv no port":      mut(func(c *RaftTransportConfig) { c.Advertise = "10.0.0.1" }),
		"adv port 0":       mut(func(c *RaftTransportConfig) { c.Advertise = "10.0.0.1:0" }),
		"negative pool":    mut(func(c *RaftTransportConfig) { c.MaxPool = -1 }),
		"negative timeout": mut(func(c *RaftTransportConfig) { c.Timeout = -1 }),
		"no server":        mut(func(c *RaftTransportConfig) { c.Server = nil }),
		"no client":        mut(func(c *RaftTransportConfig) { c.Client = nil }),
		"server no CAs":    mut(func(c *RaftTransportConfig) { c.Server.ClientCAs = nil }),
		"client no roots":  mut(func(c *RaftTransportConfig) { c.Client.RootCAs = nil }),
		"client insecure":  mut(func(c *RaftTransportConfig) { c.Client.InsecureSkipVerify = true }),
		"client no cert":   mut(func(c *RaftTransportConfig) { c.Client.Certificates = nil }),
		"server no cert":   mut(func(c *RaftTransportConfig) { c.Server.Certificates = nil }),
		"server per-client": mut(func(c *RaftTransportConfig) {
			c.Server.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return nil, nil }
		}),
		"unspecified bind ip": mut(func(c *RaftTransportConfig) { c.BindAddr = "0.0.0.0:0" }),
	} {
		_, err := NewRaftTransport(cfg)
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: NewRaftTransport err = %v; want ErrInvalidConfig", name, err)
		}
	}

	// An explicit advertise address is used verbatim, names included.
	s, err := NewRaftStreamLayer(mut(func(c *RaftTransportConfig) { c.Advertise = "n1.coffer.test:7201" }))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if got := s.Addr().String(); got != "n1.coffer.test:7201" {
		t.Fatalf("Addr = %q", got)
	}
}

// expectRefused dials addr with conf and expects the Raft listener to
// refuse the connection: either the handshake fails, or (TLS 1.3, where the
// client finishes first) the first read returns the server's alert or EOF.
func expectRefused(t *testing.T, addr string, conf *tls.Config) {
	t.Helper()
	conf = conf.Clone()
	conf.ServerName = "127.0.0.1"
	conf.VerifyConnection = nil
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: testTimeout}, Config: conf}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer func() { _ = conn.Close() }()
	if err := conn.SetDeadline(time.Now().Add(testTimeout)); err != nil {
		t.Fatal(err)
	}
	// Send something Raft-shaped so that an accepting server would answer.
	_, _ = conn.Write([]byte{0})
	_, err = conn.Read(make([]byte, 1))
	if err == nil {
		t.Fatal("refused peer read data from the Raft port")
	}
	if isTimeout(err) {
		t.Fatalf("server did not close the connection: %v", err)
	}
	if !errors.Is(err, io.EOF) {
		t.Logf("refused: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// fsmCounter is a minimal FSM counting applied commands.
type fsmCounter struct {
	mu sync.Mutex
	n  int
}

func (f *fsmCounter) Apply(*raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	return f.n
}
func (f *fsmCounter) Snapshot() (raft.FSMSnapshot, error) { return nil, errors.New("unsupported") }
func (f *fsmCounter) Restore(io.ReadCloser) error         { return errors.New("unsupported") }
func (f *fsmCounter) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// TestRaftTransport_Cluster runs a three-node Raft cluster over the TLS
// transport: it elects a leader and replicates a command to every node.
func TestRaftTransport_Cluster(t *testing.T) {
	pki := mustPKI(t, "ca")
	const n = 3
	var (
		rafts []*raft.Raft
		fsms  []*fsmCounter
		trans []*raft.NetworkTransport
		conf  raft.Configuration
	)
	for i := 0; i < n; i++ {
		tr := mustNodeTransport(t, pki, fmt.Sprintf("n%d", i), nil)
		trans = append(trans, tr)
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(fmt.Sprintf("n%d", i)), Address: tr.LocalAddr()})
	}
	for i := 0; i < n; i++ {
		rc := raft.DefaultConfig()
		rc.LocalID = conf.Servers[i].ID
		rc.HeartbeatTimeout = 200 * time.Millisecond
		rc.ElectionTimeout = 200 * time.Millisecond
		rc.LeaderLeaseTimeout = 100 * time.Millisecond
		rc.CommitTimeout = 10 * time.Millisecond
		rc.Logger = hclog.NewNullLogger()
		logs := raft.NewInmemStore()
		snaps := raft.NewInmemSnapshotStore()
		if err := raft.BootstrapCluster(rc, logs, logs, snaps, trans[i], conf); err != nil {
			t.Fatal(err)
		}
		f := &fsmCounter{}
		r, err := raft.NewRaft(rc, f, logs, logs, snaps, trans[i])
		if err != nil {
			t.Fatal(err)
		}
		rafts = append(rafts, r)
		fsms = append(fsms, f)
	}
	t.Cleanup(func() {
		for _, r := range rafts {
			_ = r.Shutdown().Error()
		}
	})

	var leader *raft.Raft
	waitUntil(t, "a leader is elected", func() bool {
		for _, r := range rafts {
			if r.State() == raft.Leader {
				leader = r
				return true
			}
		}
		return false
	})
	if err := leader.Apply([]byte("x"), testTimeout).Error(); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for i, f := range fsms {
		waitUntil(t, fmt.Sprintf("node %d applies the command", i), func() bool { return f.count() == 1 })
	}
}

// waitUntil checks cond on every tick until it holds, failing the test at
// the deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(testTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

// Authorize is asked about every connection before Raft uses it, in both
// directions, and again at Revalidate, which closes what it now refuses.
func TestRaftTransport_AuthorizeAndRevalidate(t *testing.T) {
	pki := mustPKI(t, "ca")
	log := newLogBuffer()
	var mu sync.Mutex
	refused := map[string]bool{"node:n3": true}
	var seen []RaftPeer
	authorize := func(p RaftPeer) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, p)
		if refused[p.Identity.String()] {
			return errors.New("not a member")
		}
		return nil
	}
	c1 := pki.mustIssue(t, Identity{KindNode, "n1"}, loopback)
	target, stream, err := NewRaftTransportWithStream(RaftTransportConfig{BindAddr: "127.0.0.1:0",
		Server: mustServerTLS(t, c1), Client: mustClientTLS(t, c1), Timeout: testTimeout,
		Logger: testLogger("raft-net", log), Authorize: authorize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = target.Close() })
	terms := make(chan uint64, 4)
	serveAppendEntries(t, target, terms)

	good := mustNodeTransport(t, pki, "n2", nil)
	if _, err := appendEntries(good, target, 2); err != nil {
		t.Fatalf("AppendEntries from an authorised node: %v", err)
	}
	expectTerm(t, terms, 2)
	rogue := mustNodeTransport(t, pki, "n3", nil)
	if _, err := appendEntries(rogue, target, 666); err == nil {
		t.Fatal("AppendEntries from a refused node succeeded")
	}
	log.waitFor(t, "rejected raft connection", "node:n3", "not a member")
	// Outbound: this node dials a peer that Authorize refuses.
	if _, err := appendEntries(target, rogue, 666); err == nil || !errors.Is(err, ErrRefusedPeer) {
		t.Fatalf("AppendEntries to a refused node: %v; want ErrRefusedPeer", err)
	}
	mu.Lock()
	var out []RaftPeer
	for _, p := range seen {
		if p.Outbound {
			out = append(out, p)
		}
	}
	mu.Unlock()
	if len(out) != 1 || out[0].Identity.Name != "n3" || out[0].Addr != string(rogue.LocalAddr()) || out[0].Cert == nil {
		t.Fatalf("outbound peers seen: %+v", out)
	}

	// n2 is refused from now on: its pooled connection is cut at Revalidate,
	// and its next RPC fails on a new connection.
	mu.Lock()
	refused["node:n2"] = true
	mu.Unlock()
	stream.Revalidate()
	log.waitFor(t, "closed raft connection: peer no longer authorised", "node:n2")
	if _, err := appendEntries(good, target, 4); err == nil {
		t.Fatal("AppendEntries from a node refused since succeeded")
	}
}
