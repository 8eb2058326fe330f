package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Raft transport defaults and bounds.
const (
	// DefaultRaftMaxPool is the default number of pooled connections per peer.
	DefaultRaftMaxPool = 3
	// DefaultRaftTimeout is the default I/O timeout, which also bounds the TLS
	// handshake of every Raft connection.
	DefaultRaftTimeout = 5 * time.Second
	// MaxPendingRaftHandshakes bounds inbound connections that are
	// handshaking or waiting to be accepted by Raft. Further connections wait
	// in the kernel's listen backlog.
	MaxPendingRaftHandshakes = 64
	// RaftALPN is the application protocol negotiated on the Raft port, so a
	// gRPC client dialling it (or Raft dialling a gRPC port) fails the
	// handshake instead of exchanging garbage.
	RaftALPN = "coffer-raft/1"
)

// RaftTransportConfig configures NewRaftTransport.
type RaftTransportConfig struct {
	// BindAddr is the host:port to listen on, e.g. 127.0.0.1:7201. Port 0
	// picks a free port.
	BindAddr string
	// Advertise is the host:port other nodes dial. Empty means the
	// listener's address, which must then not be unspecified (0.0.0.0/::).
	// The host must appear in this node's certificate (IP or DNS SAN).
	Advertise string
	// Server is the listener's TLS configuration (from TLSConfig.ServerTLS).
	// It is cloned; the clone requires a verified node certificate from
	// every peer and negotiates RaftALPN.
	Server *tls.Config
	// Client is the dialler's TLS configuration (from TLSConfig.ClientTLS).
	// It is cloned per dial with ServerName set to the dialled host, and
	// requires the remote end to present a node certificate.
	Client *tls.Config
	// MaxPool is the connection pool size per peer (default 3).
	MaxPool int
	// Timeout is the I/O timeout (default 5s).
	Timeout time.Duration
	// Logger receives transport logs, including every rejected connection.
	// Nil means a logger named "raft-net" on standard error.
	Logger hclog.Logger
	// Authorize, when set, decides whether a peer whose TLS handshake
	// succeeded (a node certificate from the node CA) may speak Raft with
	// this node: it is asked about every connection, inbound and outbound,
	// before Raft reads or writes a byte on it, and again about every open
	// connection at each RaftStreamLayer.Revalidate. A refused connection
	// is closed and logged. Nil accepts every node certificate.
	Authorize func(RaftPeer) error
}

// RaftPeer is the far end of a Raft connection, as Authorize sees it.
type RaftPeer struct {
	// Identity and Cert are the peer's node identity and the leaf of its
	// verified chain.
	Identity Identity
	Cert     *x509.Certificate
	// Addr is the address this node dialled (outbound) or the remote
	// address of the connection (inbound).
	Addr     string
	Outbound bool
}

// DefaultRaftTransportConfig returns a configuration with the default pool
// size and timeout; the caller sets the addresses and TLS configurations.
func DefaultRaftTransportConfig() RaftTransportConfig {
	return RaftTransportConfig{MaxPool: DefaultRaftMaxPool, Timeout: DefaultRaftTimeout}
}

// Validate checks the configuration. Zero MaxPool and Timeout are allowed
// and mean the defaults.
func (c RaftTransportConfig) Validate() error {
	if c.BindAddr == "" {
		return fmt.Errorf("%w: raft: bind address not set", ErrInvalidConfig)
	}
	if _, _, err := net.SplitHostPort(c.BindAddr); err != nil {
		return fmt.Errorf("%w: raft: bind address %q: %w", ErrInvalidConfig, c.BindAddr, err)
	}
	if c.Advertise != "" {
		if err := checkAdvertisable(c.Advertise); err != nil {
			return err
		}
	}
	if c.MaxPool < 0 {
		return fmt.Errorf("%w: raft: negative MaxPool", ErrInvalidConfig)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("%w: raft: negative Timeout", ErrInvalidConfig)
	}
	if c.Server == nil {
		return fmt.Errorf("%w: raft: server TLS configuration not set", ErrInvalidConfig)
	}
	if c.Server.ClientCAs == nil {
		return fmt.Errorf("%w: raft: server TLS configuration has no client CA pool", ErrInvalidConfig)
	}
	if c.Server.GetConfigForClient != nil {
		return fmt.Errorf("%w: raft: server TLS configuration must not use GetConfigForClient", ErrInvalidConfig)
	}
	if len(c.Server.Certificates) == 0 && c.Server.GetCertificate == nil {
		return fmt.Errorf("%w: raft: server TLS configuration has no certificate", ErrInvalidConfig)
	}
	if c.Client == nil {
		return fmt.Errorf("%w: raft: client TLS configuration not set", ErrInvalidConfig)
	}
	if c.Client.RootCAs == nil {
		return fmt.Errorf("%w: raft: client TLS configuration has no root CA pool", ErrInvalidConfig)
	}
	if c.Client.InsecureSkipVerify {
		return fmt.Errorf("%w: raft: client TLS configuration skips verification", ErrInvalidConfig)
	}
	if len(c.Client.Certificates) == 0 && c.Client.GetClientCertificate == nil {
		return fmt.Errorf("%w: raft: client TLS configuration has no certificate", ErrInvalidConfig)
	}
	return nil
}

// checkAdvertisable requires host:port with a non-empty host that is not an
// unspecified IP, and a port in 1-65535.
func checkAdvertisable(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: raft: advertise address %q: %w", ErrInvalidConfig, addr, err)
	}
	if host == "" {
		return fmt.Errorf("%w: raft: advertise address %q has no host", ErrInvalidConfig, addr)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("%w: raft: address %q is not advertisable; set Advertise", ErrInvalidConfig, addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%w: raft: advertise address %q has an invalid port", ErrInvalidConfig, addr)
	}
	return nil
}

// NewRaftTransport listens on cfg.BindAddr and returns a Raft network
// transport whose every connection, inbound and outbound, is mutual TLS 1.3
// between node identities. Closing the transport closes the listener.
func NewRaftTransport(cfg RaftTransportConfig) (*raft.NetworkTransport, error) {
	t, _, err := NewRaftTransportWithStream(cfg)
	return t, err
}

// NewRaftTransportWithStream is NewRaftTransport that also returns the
// stream layer, for callers that revalidate open connections.
func NewRaftTransportWithStream(cfg RaftTransportConfig) (*raft.NetworkTransport, *RaftStreamLayer, error) {
	stream, err := NewRaftStreamLayer(cfg)
	if err != nil {
		return nil, nil, err
	}
	cfg = cfg.withDefaults()
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: cfg.MaxPool,
		Timeout: cfg.Timeout,
		Logger:  cfg.Logger,
	}), stream, nil
}

func (c RaftTransportConfig) withDefaults() RaftTransportConfig {
	if c.MaxPool == 0 {
		c.MaxPool = DefaultRaftMaxPool
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultRaftTimeout
	}
	if c.Logger == nil {
		c.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft-net", Output: hclog.DefaultOutput, Level: hclog.DefaultLevel})
	}
	return c
}

// RaftStreamLayer is a raft.StreamLayer over mutual TLS. Accept returns only
// connections whose handshake completed within the timeout and whose peer
// presented a verified node certificate; everything else is closed and
// logged. Dial returns only connections to peers presenting a node
// certificate valid for the dialled host.
//
// Most callers want NewRaftTransport; the stream layer is exported for
// callers that build their own raft.NetworkTransportConfig.
type RaftStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	timeout   time.Duration
	logger    hclog.Logger
	authorize func(RaftPeer) error

	openMu sync.Mutex
	open   map[*raftConn]struct{} // authorised connections not yet closed

	conns chan net.Conn   // handshaken node connections awaiting Accept
	slots chan struct{}   // bounds pending handshakes
	ctx   context.Context // cancelled by Close
	stop  context.CancelFunc
	once  sync.Once
	wg    sync.WaitGroup
}

var _ raft.StreamLayer = (*RaftStreamLayer)(nil)

// NewRaftStreamLayer validates cfg, listens on cfg.BindAddr and starts
// accepting connections.
func NewRaftStreamLayer(cfg RaftTransportConfig) (*RaftStreamLayer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	server := cfg.Server.Clone()
	if server.MinVersion < tls.VersionTLS13 {
		server.MinVersion = tls.VersionTLS13
	}
	server.ClientAuth = tls.RequireAndVerifyClientCert
	server.NextProtos = []string{RaftALPN}
	server.VerifyConnection = chainVerify(server.VerifyConnection, verifyRaftPeer)

	client := cfg.Client.Clone()
	if client.MinVersion < tls.VersionTLS13 {
		client.MinVersion = tls.VersionTLS13
	}
	client.NextProtos = []string{RaftALPN}
	client.VerifyConnection = chainVerify(client.VerifyConnection, verifyRaftPeer)

	ln, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("transport: raft listen %s: %w", cfg.BindAddr, err)
	}
	var advertise net.Addr = ln.Addr()
	if cfg.Advertise != "" {
		advertise = advertiseAddr(cfg.Advertise)
	} else if err := checkAdvertisable(ln.Addr().String()); err != nil {
		_ = ln.Close()
		return nil, err
	}

	ctx, stop := context.WithCancel(context.Background())
	s := &RaftStreamLayer{
		ln:        ln,
		advertise: advertise,
		server:    server,
		client:    client,
		timeout:   cfg.Timeout,
		logger:    cfg.Logger,
		authorize: cfg.Authorize,
		open:      map[*raftConn]struct{}{},
		conns:     make(chan net.Conn),
		slots:     make(chan struct{}, MaxPendingRaftHandshakes),
		ctx:       ctx,
		stop:      stop,
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// verifyRaftPeer requires the negotiated Raft protocol and a node identity.
func verifyRaftPeer(cs tls.ConnectionState) error {
	if cs.NegotiatedProtocol != RaftALPN {
		return fmt.Errorf("%w: raft: want %q, got %q", ErrWrongProtocol, RaftALPN, cs.NegotiatedProtocol)
	}
	_, err := peerIdentity(cs, true)
	return err
}

// acceptLoop accepts TCP connections and handshakes each in its own
// goroutine, holding one of the pending-handshake slots until the connection
// is handed to Accept or dropped.
func (s *RaftStreamLayer) acceptLoop() {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		select {
		case s.slots <- struct{}{}:
		case <-s.ctx.Done():
			return
		}
		raw, err := s.ln.Accept()
		if err != nil {
			<-s.slots
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient failure (e.g. out of file descriptors): back off
			// like net/http does.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			s.logger.Error("raft accept failed", "error", err, "retry-in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		s.wg.Add(1)
		go s.handshake(raw)
	}
}

// handshake completes the server side of the TLS handshake within the
// timeout, checks the peer identity and hands the connection to Accept.
func (s *RaftStreamLayer) handshake(raw net.Conn) {
	defer s.wg.Done()
	defer func() { <-s.slots }()

	remote := raw.RemoteAddr().String()
	conn := tls.Server(raw, s.server)
	ctx, cancel := context.WithTimeout(s.ctx, s.timeout)
	_ = raw.SetDeadline(time.Now().Add(s.timeout))
	err := conn.HandshakeContext(ctx)
	cancel()
	if err == nil {
		err = raw.SetDeadline(time.Time{})
	}
	var rc *raftConn
	if err == nil {
		rc, err = s.admit(conn, remote, false)
	}
	if err != nil {
		_ = conn.Close()
		if s.ctx.Err() == nil {
			s.logger.Warn("rejected raft connection", "remote-address", remote, "error", err)
		}
		return
	}
	s.logger.Debug("raft connection authenticated", "remote-address", remote, "peer", rc.peer.Identity.String())
	select {
	case s.conns <- rc:
	case <-s.ctx.Done():
		_ = rc.Close()
	}
}

// admit checks a handshaken connection's peer (a node identity, and
// whatever Authorize says) and tracks it for Revalidate.
func (s *RaftStreamLayer) admit(conn *tls.Conn, addr string, outbound bool) (*raftConn, error) {
	cs := conn.ConnectionState()
	// VerifyConnection already enforced this; check again so a
	// misconfigured tls.Config can never let a non-node through.
	id, err := peerIdentity(cs, true)
	if err != nil {
		return nil, err
	}
	p := RaftPeer{Identity: id, Cert: cs.VerifiedChains[0][0], Addr: addr, Outbound: outbound}
	if s.authorize != nil {
		if err := s.authorize(p); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrRefusedPeer, id, err)
		}
	}
	rc := &raftConn{Conn: conn, peer: p, s: s}
	s.openMu.Lock()
	s.open[rc] = struct{}{}
	s.openMu.Unlock()
	return rc, nil
}

// Revalidate asks Authorize again about every open connection and closes
// those it now refuses: a member removed, a certificate revoked or a pin
// replaced since the connection was made. Raft redials (and is refused)
// or stops using the peer.
func (s *RaftStreamLayer) Revalidate() {
	if s.authorize == nil {
		return
	}
	s.openMu.Lock()
	conns := make([]*raftConn, 0, len(s.open))
	for c := range s.open {
		conns = append(conns, c)
	}
	s.openMu.Unlock()
	for _, c := range conns {
		if err := s.authorize(c.peer); err != nil {
			s.logger.Warn("closed raft connection: peer no longer authorised", "peer", c.peer.Identity.String(),
				"address", c.peer.Addr, "error", err)
			_ = c.Close()
		}
	}
}

// raftConn is an authorised Raft connection; closing it stops tracking it.
type raftConn struct {
	net.Conn
	peer RaftPeer
	s    *RaftStreamLayer
}

func (c *raftConn) Close() error {
	c.s.openMu.Lock()
	delete(c.s.open, c)
	c.s.openMu.Unlock()
	return c.Conn.Close()
}

// Accept returns the next authenticated node connection. After Close it
// returns net.ErrClosed.
func (s *RaftStreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting, closes the listener, aborts pending handshakes and
// waits for them to finish. Connections already returned by Accept or Dial
// are not affected. Close is idempotent.
func (s *RaftStreamLayer) Close() error {
	var err error
	s.once.Do(func() {
		s.stop()
		err = s.ln.Close()
		s.wg.Wait()
	})
	return err
}

// Addr returns the advertised address.
func (s *RaftStreamLayer) Addr() net.Addr { return s.advertise }

// Dial connects to a peer's Raft port and completes the TLS handshake within
// timeout (the configured timeout if timeout is not positive). The server
// name checked against the peer certificate is the dialled host.
func (s *RaftStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if timeout <= 0 {
		timeout = s.timeout
	}
	host, _, err := net.SplitHostPort(string(address))
	if err != nil {
		return nil, fmt.Errorf("transport: raft dial %q: %w", address, err)
	}
	cfg := s.client.Clone()
	cfg.ServerName = host
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		s.logger.Debug("raft dial failed", "address", string(address), "error", err)
		return nil, fmt.Errorf("transport: raft dial %s: %w", address, err)
	}
	tc := conn.(*tls.Conn)
	rc, err := s.admit(tc, string(address), true)
	if err != nil {
		_ = tc.Close()
		s.logger.Warn("refused raft peer", "address", string(address), "error", err)
		return nil, fmt.Errorf("transport: raft dial %s: %w", address, err)
	}
	return rc, nil
}

// advertiseAddr is a configured advertise address kept verbatim, so a DNS
// name stays a name (and matches the DNS SAN peers verify).
type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }
