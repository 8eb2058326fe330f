package node

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/cluster"
	"github.com/coffer-kms/coffer/custody"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/internal/hclogslog"
	"github.com/coffer-kms/coffer/msgsig"
	"github.com/coffer-kms/coffer/transport"
)

// Node is one cluster member: the composition root that wires the state
// machine, Raft, the barrier (over the keystore) and the gRPC services, and
// owns the request path.
type Node struct {
	cfg    Config
	logger *slog.Logger
	// barrier holds the keystore: sealing and opening key records,
	// integrity tags, the audit HMAC key, keystore health.
	barrier *custody.Barrier

	fsm  *fsm.FSM
	raft *raft.Raft
	// raftPort is raft once NewRaft has returned, published for the Raft
	// port's admission check, whose connections arrive while it runs.
	raftPort  atomic.Pointer[raft.Raft]
	logStore  *raftboltdb.BoltStore
	raftTrans *raft.NetworkTransport
	// raftStream is the Raft port's stream layer, whose open connections
	// are revalidated against the member rule (members.go).
	raftStream *transport.RaftStreamLayer
	snaps      raft.SnapshotStore

	// svc is the service layer the gRPC doors hand requests to.
	svc *service
	// lastRotationScan is when leaderLoop last looked for keys due for
	// rotation (maybeMaintainKeys; that goroutine only).
	lastRotationScan time.Time
	grpcServer       *grpc.Server
	apiLis           net.Listener
	metricsSrv       *http.Server

	peersMu   sync.RWMutex
	peers     map[string]Peer // by id
	conns     map[string]*grpc.ClientConn
	clientTLS *tls.Config // for calls to other nodes
	// ownCert is this node's certificate, which it pins for itself when it
	// admits members as leader; dialed holds the certificates members
	// presented at their Raft addresses (members.go).
	ownCert *x509.Certificate
	dialed  dialedCerts
	// pinsEnabled is set once every member applies PIN_NODE; pinPoll is
	// when the leader last asked (Unix nanoseconds).
	pinsEnabled atomic.Bool
	pinPoll     atomic.Int64
	// sideAudit commits audit entries off the request path: refused node
	// identities, membership changes, a status answered without a quorum.
	sideAudit *sideAuditor
	// gossip and membership run when the config enables gossip
	// (membership.go); stopMembership stops them.
	gossip         *cluster.Gossip
	membership     *cluster.Manager
	stopMembership context.CancelFunc
	// hlog is Raft's logger, shared with autopilot.
	hlog hclog.Logger

	reads *coalescer
	// auditSigner signs audit checkpoints (nil: the keystore cannot sign).
	auditSigner crypto.Signer
	// readyTerm is the term in which this node, as leader, last completed a
	// barrier; see ensureLeaderReady.
	readyTerm atomic.Uint64
	forwards  chan struct{}
	// digests admits one state digest at a time (addStateDigest): each
	// reads the whole store.
	digests chan struct{}
	// commandVersion is the newest command version this node reports it
	// applies (fsm.CommandVersion; tests lower it to stand for an older
	// build).
	commandVersion atomic.Uint32
	// versionPoll is when this node, as leader, last asked the members
	// which command version they apply (Unix nanoseconds; see checkpoint).
	versionPoll atomic.Int64
	// shredded is the newest removal index a shred pass completed after
	// (shred.go).
	shredded atomic.Uint64

	stopCh   chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// New opens the node's stores and starts Raft and the gRPC API. The node owns
// ks from here on and closes it in Close.
func New(cfg Config, ks hsmwrap.Keystore, logger *slog.Logger) (_ *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if ks == nil {
		return nil, fmt.Errorf("%w: a keystore is required", ErrConfig)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("node", cfg.ID)
	bcfg := custody.DefaultConfig()
	bcfg.NodeID, bcfg.Logger = cfg.ID, logger
	b, err := custody.New(ks, bcfg)
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n := &Node{
		cfg:      cfg,
		logger:   logger,
		barrier:  b,
		peers:    map[string]Peer{},
		conns:    map[string]*grpc.ClientConn{},
		forwards: make(chan struct{}, cfg.Limits.MaxInflightForwards),
		digests:  make(chan struct{}, 1),
		stopCh:   make(chan struct{}),
	}
	n.sideAudit = newSideAuditor(n)
	n.commandVersion.Store(fsm.CommandVersion)
	for _, p := range cfg.Peers {
		n.peers[p.ID] = p
	}
	defer func() {
		if err != nil {
			n.closeStores()
		}
	}()
	if err := n.barrier.Probe(); err != nil {
		return nil, fmt.Errorf("node: keystore self-test: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("node: data dir: %w", err)
	}
	fcfg := fsm.DefaultConfig(filepath.Join(cfg.DataDir, "state"))
	fcfg.Logger, fcfg.VerifyRecord, fcfg.OnAccessChange = logger, n.barrier.VerifyRecord, n.revalidateRaft
	if n.fsm, err = openState(fcfg); err != nil {
		return nil, err
	}
	n.barrier.UseState(n.fsm)
	if err := n.startRaft(); err != nil {
		return nil, err
	}
	n.setupAuditSigner()
	n.reads = newCoalescer(n.readIndexRound)
	n.svc = &service{cfg: cfg, logger: logger, fsm: n.fsm, barrier: n.barrier, sideAudit: n.sideAudit,
		codec: newRequestCodec(), replica: n, stop: n.stopCh,
		auditor: &auditor{replica: n, inflight: make(chan struct{}, maxAuditRounds)}}
	if err := n.startAPI(); err != nil {
		return nil, err
	}
	if err := n.startMembership(); err != nil {
		return nil, err
	}
	if cfg.MetricsAddr != "" {
		if err := n.startMetrics(); err != nil {
			return nil, err
		}
	}
	n.wg.Add(4)
	go n.leaderLoop()
	go func() { defer n.wg.Done(); n.barrier.Run(n.stopCh) }()
	go n.revalidateLoop()
	go n.sideAudit.run()
	n.wg.Add(2)
	go n.auditRecovery()
	go n.shredLoop()
	logger.Info("node started", "site", cfg.Site, "api", n.APIAddr(), "raft", cfg.RaftAdvertise())
	return n, nil
}

func (n *Node) startRaft() error {
	cfg := n.cfg
	raftDir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(raftDir, 0o700); err != nil {
		return fmt.Errorf("node: raft dir: %w", err)
	}
	store, err := openRaftLog(filepath.Join(raftDir, "raft.db"))
	if err != nil {
		return err
	}
	n.logStore = store
	// Raft, its transport, the snapshot store and autopilot log through the
	// node's slog logger (node=<id>), as component=raft, at Warn and above.
	hlog := hclogslog.New(n.logger, "raft", hclog.Warn)
	n.hlog = hlog
	snaps, err := fsm.NewSnapshotStore(raftDir, 2, hlog)
	if err != nil {
		return fmt.Errorf("node: snapshot store: %w", err)
	}
	n.snaps = snaps
	n.fsm.UseSnapshotStore(snaps)
	peerTLS, err := cfg.TLS.PeerServerTLS()
	if err != nil {
		return fmt.Errorf("node: raft tls: %w", err)
	}
	clientTLS, err := cfg.TLS.ClientTLS()
	if err != nil {
		return fmt.Errorf("node: client tls: %w", err)
	}
	n.clientTLS = clientTLS
	n.ownCert = clientTLS.Certificates[0].Leaf
	tc := transport.DefaultRaftTransportConfig()
	tc.BindAddr, tc.Advertise, tc.Server, tc.Client, tc.Logger = cfg.RaftAddr, cfg.RaftAdvertiseAddr, peerTLS, clientTLS, hlog
	tc.Authorize = n.authorizeRaftPeer
	if n.raftTrans, n.raftStream, err = transport.NewRaftTransportWithStream(tc); err != nil {
		return fmt.Errorf("node: raft transport: %w", err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = cfg.Raft.HeartbeatTimeout.Std()
	rc.ElectionTimeout = cfg.Raft.ElectionTimeout.Std()
	rc.LeaderLeaseTimeout = cfg.Raft.LeaderLeaseTimeout.Std()
	rc.CommitTimeout = cfg.Raft.CommitTimeout.Std()
	rc.SnapshotInterval = cfg.Raft.SnapshotInterval.Std()
	rc.SnapshotThreshold = cfg.Raft.SnapshotThreshold
	rc.TrailingLogs = cfg.Raft.TrailingLogs
	rc.MaxAppendEntries = cfg.Raft.MaxAppendEntries
	rc.BatchApplyCh = true
	// Pebble keeps its own applied index, made durable at every snapshot.
	// Restoring the snapshot at start would only redo that work; restore
	// only when local state is older than the latest snapshot (or gone).
	rc.NoSnapshotRestoreOnStart = n.fsm.AppliedIndex() > 0 && n.fsm.AppliedIndex() >= latestSnapshotIndex(snaps)

	hasState, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("node: inspect raft state: %w", err)
	}
	if !hasState && cfg.Bootstrap {
		var servers []raft.Server
		for _, p := range cfg.Peers {
			servers = append(servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr), Suffrage: raft.Voter})
		}
		if err := raft.BootstrapCluster(rc, store, store, snaps, n.raftTrans, raft.Configuration{Servers: servers}); err != nil {
			return fmt.Errorf("node: bootstrap: %w", err)
		}
		n.logger.Info("bootstrapped a new cluster", "voters", len(servers))
	}
	r, err := raft.NewRaft(rc, n.fsm, store, store, snaps, n.raftTrans)
	if err != nil {
		return fmt.Errorf("node: start raft: %w", err)
	}
	n.raft = r
	n.raftPort.Store(r)
	return nil
}

func latestSnapshotIndex(s raft.SnapshotStore) uint64 {
	metas, err := s.List()
	if err != nil || len(metas) == 0 {
		return 0
	}
	return metas[0].Index
}

func (n *Node) startAPI() error {
	serverTLS, err := n.cfg.TLS.ServerTLS()
	if err != nil {
		return fmt.Errorf("node: server tls: %w", err)
	}
	lis, err := net.Listen("tcp", n.cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("node: listen %s: %w", n.cfg.APIAddr, err)
	}
	n.apiLis = lis
	opts := transport.ServerOptions(serverTLS, transport.DefaultGRPCLimits())
	signResponses, err := msgsig.ResponseSigner(serverTLS.Certificates[0])
	if err != nil {
		return fmt.Errorf("node: response signatures: %w", err)
	}
	if n.svc.callers, err = n.cfg.TLS.CallerVerifier(); err != nil {
		return fmt.Errorf("node: client certificate verifier: %w", err)
	}
	opts = append(opts, grpc.ForceServerCodecV2(n.svc.codec),
		grpc.ChainUnaryInterceptor(n.metricsInterceptor, statusInterceptor, signResponses, n.svc.auditInterceptor),
		grpc.ChainStreamInterceptor(streamMetricsInterceptor, n.svc.malformedStreamInterceptor))
	s := grpc.NewServer(opts...)
	cofferv1.RegisterKeyServiceServer(s, &keyService{svc: n.svc})
	cofferv1.RegisterCryptoServiceServer(s, &cryptoService{svc: n.svc})
	cofferv1.RegisterClusterServiceServer(s, &clusterService{n: n, svc: n.svc})
	cofferv1.RegisterPolicyServiceServer(s, &policyService{svc: n.svc})
	cofferv1.RegisterAccessServiceServer(s, &accessService{svc: n.svc})
	cofferv1.RegisterAuditServiceServer(s, &auditService{svc: n.svc})
	cofferv1.RegisterCacheServiceServer(s, &cacheService{svc: n.svc})
	cofferv1.RegisterInternalServiceServer(s, &internalService{n: n, svc: n.svc})
	reflection.Register(s)
	n.grpcServer = s
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := s.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			n.logger.Error("grpc server stopped", "err", err)
		}
	}()
	return nil
}

func (n *Node) startMetrics() error {
	reg := prometheus.NewRegistry()
	registerMetrics(reg)
	reg.MustRegister(n.auditCollectors()...)
	reg.MustRegister(raftCollector{n: n})
	if err := installRaftMetrics(reg); err != nil {
		return fmt.Errorf("node: raft metrics: %w", err)
	}
	lis, err := net.Listen("tcp", n.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("node: listen metrics %s: %w", n.cfg.MetricsAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if n.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	}
	n.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.metricsSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.logger.Error("metrics server stopped", "err", err)
		}
	}()
	return nil
}

// APIAddr returns the address others reach the gRPC API at: the
// configured advertise address, else the one it listens on.
func (n *Node) APIAddr() string {
	if n.cfg.APIAdvertiseAddr != "" {
		return n.cfg.APIAdvertiseAddr
	}
	if n.apiLis != nil {
		return n.apiLis.Addr().String()
	}
	return n.cfg.APIAddr
}

// ID returns the node id.
func (n *Node) ID() string { return n.cfg.ID }

// FSM exposes the state machine (tests, tooling).
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// Raft exposes the Raft instance (tests, tooling).
func (n *Node) Raft() *raft.Raft { return n.raft }

// IsLeader reports whether this node is the Raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Close stops the API (letting in-flight requests finish for a moment), then
// Raft, then the stores and the barrier with its keystore.
func (n *Node) Close() error {
	var err error
	n.stopOnce.Do(func() {
		close(n.stopCh)
		if n.grpcServer != nil {
			done := make(chan struct{})
			go func() { n.grpcServer.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(3 * time.Second):
				n.grpcServer.Stop()
			}
		}
		n.closeMembership()
		if n.metricsSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = n.metricsSrv.Shutdown(ctx)
			cancel()
		}
		if n.raft != nil {
			if e := n.raft.Shutdown().Error(); e != nil {
				err = fmt.Errorf("node: raft shutdown: %w", e)
			}
		}
		n.wg.Wait()
		n.peersMu.Lock()
		for _, c := range n.conns {
			_ = c.Close()
		}
		n.conns = map[string]*grpc.ClientConn{}
		n.peersMu.Unlock()
		n.closeStores()
		n.logger.Info("node stopped")
	})
	return err
}

func (n *Node) closeStores() {
	if n.raftTrans != nil {
		_ = n.raftTrans.Close()
	}
	if n.logStore != nil {
		_ = n.logStore.Close()
	}
	if n.fsm != nil {
		_ = n.fsm.Close()
	}
	_ = n.barrier.Close()
}

var _ io.Closer = (*Node)(nil)

// boltOptions are the Raft log store's bbolt settings. The freelist is not
// written at every commit (bbolt rebuilds it by scanning the file when it
// opens): after log compaction frees thousands of pages, writing it made
// every commit write hundreds of KiB (NOTES.md, "Figures behind
// constants"). The map freelist keeps
// allocation cheap on a file with many free pages.
func boltOptions() *bbolt.Options {
	o := *bbolt.DefaultOptions
	o.Timeout = time.Second
	o.NoFreelistSync = true
	o.FreelistType = bbolt.FreelistMapType
	return &o
}
