package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// auditServer is a node serving only AuditService. Export sends chunks
// (after the injected behaviour, if any, had its say); Query and Prune
// answer with canned values.
type auditServer struct {
	cofferv1.UnimplementedAuditServiceServer

	name string
	addr string

	mu     sync.Mutex
	calls  []string
	afters []uint64
	chunks [][]byte
	// export, when set, runs before the chunks are sent; a non-nil error
	// ends the stream with it.
	export func(stream cofferv1.AuditService_ExportServer) error
	// fail, when set, is consulted by the unary calls first.
	fail func(ctx context.Context, method string) error
	// follow, when set, serves Follow; without it Follow is unimplemented.
	follow func(req *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer) error
}

func mustAuditServer(t *testing.T, p *testPKI, name string, chunks ...string) *auditServer {
	t.Helper()
	conf := p.issue(t, transport.Identity{Kind: transport.KindNode, Name: name})
	serverTLS, err := conf.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := &auditServer{name: name, addr: lis.Addr().String()}
	for _, c := range chunks {
		s.chunks = append(s.chunks, []byte(c))
	}
	gs := grpc.NewServer(testenv.ServerOptions(t, serverTLS)...)
	cofferv1.RegisterAuditServiceServer(gs, s)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return s
}

func mustAuditServers(t *testing.T, p *testPKI, n int, chunks ...string) ([]*auditServer, []string) {
	t.Helper()
	var srvs []*auditServer
	var addrs []string
	for i := range n {
		s := mustAuditServer(t, p, fmt.Sprintf("au%d", i+1), chunks...)
		srvs = append(srvs, s)
		addrs = append(addrs, s.addr)
	}
	return srvs, addrs
}

func (s *auditServer) setExport(fn func(cofferv1.AuditService_ExportServer) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.export = fn
}

func (s *auditServer) setFollow(fn func(*cofferv1.AuditFollowRequest, cofferv1.AuditService_FollowServer) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.follow = fn
}

func (s *auditServer) Follow(req *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer) error {
	s.mu.Lock()
	s.calls = append(s.calls, "Follow")
	follow := s.follow
	s.mu.Unlock()
	if follow == nil {
		return status.Error(codes.Unimplemented, "unknown method Follow")
	}
	return follow(req, stream)
}

func (s *auditServer) setFail(fn func(context.Context, string) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fn
}

func (s *auditServer) count(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.calls {
		if m == method {
			n++
		}
	}
	return n
}

func (s *auditServer) record(ctx context.Context, method string) error {
	s.mu.Lock()
	s.calls = append(s.calls, method)
	fail := s.fail
	s.mu.Unlock()
	if fail != nil {
		return fail(ctx, method)
	}
	return nil
}

func (s *auditServer) Export(req *cofferv1.AuditExportRequest, stream cofferv1.AuditService_ExportServer) error {
	s.mu.Lock()
	s.calls = append(s.calls, "Export")
	s.afters = append(s.afters, req.GetAfterSeq())
	export, chunks := s.export, s.chunks
	s.mu.Unlock()
	if export != nil {
		if err := export(stream); err != nil {
			return err
		}
	}
	for _, c := range chunks {
		if err := stream.Send(&cofferv1.AuditExportChunk{Data: c}); err != nil {
			return err
		}
	}
	return nil
}

func (s *auditServer) Query(ctx context.Context, req *cofferv1.AuditQueryRequest) (*cofferv1.AuditQueryResponse, error) {
	if err := s.record(ctx, "Query"); err != nil {
		return nil, err
	}
	e := &cofferv1.AuditEntry{Seq: req.GetAfterSeq() + 1, Node: s.name, Caller: req.GetCaller(), Operation: req.GetOperation(),
		Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED}
	return &cofferv1.AuditQueryResponse{Entries: []*cofferv1.AuditEntry{e}, LastSeq: e.GetSeq(), HeadSeq: 99}, nil
}

func (s *auditServer) Prune(ctx context.Context, req *cofferv1.AuditPruneRequest) (*cofferv1.AuditPruneResponse, error) {
	if err := s.record(ctx, "Prune"); err != nil {
		return nil, err
	}
	cp := &cofferv1.AuditCheckpoint{Seq: req.GetUpToSeq(), Signer: s.name}
	return &cofferv1.AuditPruneResponse{Marker: &cofferv1.AuditPruneMarker{FirstSeq: cp.GetSeq() + 1, Checkpoint: cp}}, nil
}

var exportLines = []string{
	`{"type":"entry","seq":8}` + "\n",
	"",
	`{"type":"entry","seq":9}` + "\n",
	`{"type":"checkpoint","seq":9}` + "\n",
}

func TestAudit_ExportStreams(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAuditServers(t, p, 1, exportLines...)
	c := mustClient(t, p, nil, addrs...)
	var buf bytes.Buffer
	if err := c.AuditExport(testCtx(t), 7, &buf); err != nil {
		t.Fatalf("AuditExport: %v", err)
	}
	want := exportLines[0] + exportLines[2] + exportLines[3]
	if buf.String() != want {
		t.Fatalf("export = %q, want %q", buf.String(), want)
	}
	srvs[0].mu.Lock()
	afters := srvs[0].afters
	srvs[0].mu.Unlock()
	if len(afters) != 1 || afters[0] != 7 {
		t.Fatalf("server saw after_seq %v, want [7]", afters)
	}
}

func TestAudit_ExportEmpty(t *testing.T) {
	p := mustPKI(t)
	_, addrs := mustAuditServers(t, p, 1)
	c := mustClient(t, p, nil, addrs...)
	var buf bytes.Buffer
	if err := c.AuditExport(testCtx(t), 0, &buf); err != nil || buf.Len() != 0 {
		t.Fatalf("AuditExport of an empty log = %v, %q", err, buf.String())
	}
}

// TestAudit_ExportRetriedBeforeFirstByte checks that an attempt that fails
// before any data (here after an empty chunk) is retried on another node and
// that the output holds exactly one copy of the export.
func TestAudit_ExportRetriedBeforeFirstByte(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAuditServers(t, p, 2, exportLines...)
	var first atomic.Bool
	for _, s := range srvs {
		s.setExport(func(stream cofferv1.AuditService_ExportServer) error {
			if first.CompareAndSwap(false, true) {
				if err := stream.Send(&cofferv1.AuditExportChunk{}); err != nil {
					return err
				}
				return status.Error(codes.Unavailable, "injected: no leader")
			}
			return nil
		})
	}
	c := mustClient(t, p, nil, addrs...)
	var buf bytes.Buffer
	if err := c.AuditExport(testCtx(t), 0, &buf); err != nil {
		t.Fatalf("AuditExport: %v", err)
	}
	if want := exportLines[0] + exportLines[2] + exportLines[3]; buf.String() != want {
		t.Fatalf("export = %q, want one copy: %q", buf.String(), want)
	}
	if a, b := srvs[0].count("Export"), srvs[1].count("Export"); a != 1 || b != 1 {
		t.Fatalf("Export calls %d and %d, want one on each node", a, b)
	}
}

// TestAudit_ExportNotRetriedAfterData checks that a stream that breaks after
// data reached the writer fails instead of starting over.
func TestAudit_ExportNotRetriedAfterData(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAuditServers(t, p, 2)
	for _, s := range srvs {
		s.setExport(func(stream cofferv1.AuditService_ExportServer) error {
			if err := stream.Send(&cofferv1.AuditExportChunk{Data: []byte("partial")}); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "injected: node going down")
		})
	}
	c := mustClient(t, p, nil, addrs...)
	var buf bytes.Buffer
	err := c.AuditExport(testCtx(t), 0, &buf)
	if status.Code(err) != codes.Unavailable || errors.Is(err, ErrRetriesExhausted) {
		t.Fatalf("AuditExport = %v, want Unavailable without retries", err)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Method != "AuditExport" || ce.Attempts != 1 {
		t.Fatalf("AuditExport = %#v, want an *Error after one attempt", err)
	}
	if buf.String() != "partial" {
		t.Fatalf("writer holds %q, want the partial data", buf.String())
	}
	if n := srvs[0].count("Export") + srvs[1].count("Export"); n != 1 {
		t.Fatalf("Export tried %d times, want 1", n)
	}
}

func TestAudit_ExportErrors(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAuditServers(t, p, 2)
	c := mustClient(t, p, func(cfg *Config) { cfg.MaxAttempts = 3 }, addrs...)

	// Not retryable: one attempt.
	for _, s := range srvs {
		s.setExport(func(cofferv1.AuditService_ExportServer) error {
			return status.Error(codes.PermissionDenied, "injected: no audit.export grant")
		})
	}
	if err := c.AuditExport(testCtx(t), 0, &bytes.Buffer{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("AuditExport = %v, want PermissionDenied", err)
	}
	if n := srvs[0].count("Export") + srvs[1].count("Export"); n != 1 {
		t.Fatalf("PermissionDenied tried %d times, want 1", n)
	}

	// Every node down: every attempt, then ErrRetriesExhausted.
	for _, s := range srvs {
		s.setExport(func(cofferv1.AuditService_ExportServer) error {
			return status.Error(codes.Unavailable, "injected: node down")
		})
	}
	var buf bytes.Buffer
	err := c.AuditExport(testCtx(t), 0, &buf)
	if status.Code(err) != codes.Unavailable || !errors.Is(err, ErrRetriesExhausted) {
		t.Fatalf("AuditExport = %v, want Unavailable after retries", err)
	}
	if n := srvs[0].count("Export") + srvs[1].count("Export"); n != 1+3 {
		t.Fatalf("Export tried %d times in all, want 1+3", n)
	}
	if buf.Len() != 0 {
		t.Fatalf("failed attempts wrote %q", buf.String())
	}

	// The caller's context ends mid-stream.
	for _, s := range srvs {
		s.setExport(func(stream cofferv1.AuditService_ExportServer) error {
			if err := stream.Send(&cofferv1.AuditExportChunk{Data: []byte("x")}); err != nil {
				return err
			}
			<-stream.Context().Done()
			return stream.Context().Err()
		})
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	w := writerFunc(func(b []byte) (int, error) {
		cancel()
		return len(b), nil
	})
	if err := c.AuditExport(ctx, 0, w); status.Code(err) != codes.Canceled {
		t.Fatalf("AuditExport after cancel = %v, want Canceled", err)
	}

	// A writer that fails ends the call.
	for _, s := range srvs {
		s.setExport(nil)
		s.mu.Lock()
		s.chunks = [][]byte{[]byte("a"), []byte("b")}
		s.mu.Unlock()
	}
	failing := writerFunc(func([]byte) (int, error) { return 0, errors.New("disk full") })
	if err := c.AuditExport(testCtx(t), 0, failing); err == nil || !bytes.Contains([]byte(err.Error()), []byte("disk full")) {
		t.Fatalf("AuditExport to a failing writer = %v", err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func TestAudit_QueryAndPrune(t *testing.T) {
	p := mustPKI(t)
	srvs, _ := mustAuditServers(t, p, 2)
	follower, leader := srvs[0], srvs[1]
	follower.setFail(func(ctx context.Context, method string) error {
		if method == "Prune" {
			return withLeaderHint(ctx, leader.addr, status.Error(codes.Unavailable, "prune must be sent to the leader"))
		}
		return nil
	})
	c := mustClient(t, p, func(cfg *Config) { cfg.Backoff, cfg.MaxBackoff = time.Minute, time.Minute }, follower.addr)
	ctx := testCtx(t)

	resp, err := c.AuditQuery(ctx, &cofferv1.AuditQueryRequest{AfterSeq: 41, Caller: "client:app", Operation: "get"})
	if err != nil {
		t.Fatalf("AuditQuery: %v", err)
	}
	if e := resp.GetEntries(); len(e) != 1 || e[0].GetSeq() != 42 || e[0].GetCaller() != "client:app" || resp.GetHeadSeq() != 99 {
		t.Fatalf("AuditQuery = %v", resp)
	}

	pr, err := c.AuditPrune(ctx, &cofferv1.AuditPruneRequest{UpToSeq: 30})
	if err != nil {
		t.Fatalf("AuditPrune: %v", err)
	}
	if m := pr.GetMarker(); m.GetFirstSeq() != 31 || m.GetCheckpoint().GetSigner() != leader.name {
		t.Fatalf("AuditPrune = %v, want the leader's marker", pr)
	}
	if follower.count("Prune") != 1 || leader.count("Prune") != 1 {
		t.Fatalf("Prune calls: follower %d, leader %d; want 1 and 1", follower.count("Prune"), leader.count("Prune"))
	}
}

func TestAudit_NilAndClosed(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAuditServers(t, p, 1)
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)
	if _, err := c.AuditQuery(ctx, nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("AuditQuery(nil) = %v, want InvalidArgument", err)
	}
	if _, err := c.AuditPrune(ctx, nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("AuditPrune(nil) = %v, want InvalidArgument", err)
	}
	if err := c.AuditExport(ctx, 0, nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("AuditExport(nil writer) = %v, want InvalidArgument", err)
	}
	if n := srvs[0].count("Query") + srvs[0].count("Prune") + srvs[0].count("Export"); n != 0 {
		t.Fatalf("nil requests reached the server %d times", n)
	}
	_ = c.Close()
	if err := c.AuditExport(ctx, 0, &bytes.Buffer{}); !errors.Is(err, ErrClosed) {
		t.Errorf("AuditExport after Close = %v, want ErrClosed", err)
	}
	if _, err := c.AuditQuery(ctx, &cofferv1.AuditQueryRequest{}); !errors.Is(err, ErrClosed) {
		t.Errorf("AuditQuery after Close = %v, want ErrClosed", err)
	}
}

func countAll(srvs []*auditServer, method string) int {
	n := 0
	for _, s := range srvs {
		n += s.count(method)
	}
	return n
}

// TestAudit_ExportRidesThroughElection: an export that meets "no leader"
// for longer than five attempts take is retried until it succeeds, and
// the writer holds one copy.
func TestAudit_ExportRidesThroughElection(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAuditServers(t, p, 2, exportLines...)
	end := time.Now().Add(outage)
	for _, s := range srvs {
		s.setExport(func(cofferv1.AuditService_ExportServer) error {
			if time.Now().Before(end) {
				return status.Error(codes.Unavailable, "no leader")
			}
			return nil
		})
	}
	c := mustClient(t, p, defaultBackoff, addrs...)
	var buf bytes.Buffer
	if err := c.AuditExport(testCtx(t), 0, &buf); err != nil {
		t.Fatalf("AuditExport through a %v election: %v", outage, err)
	}
	if want := exportLines[0] + exportLines[2] + exportLines[3]; buf.String() != want {
		t.Fatalf("export = %q, want one copy: %q", buf.String(), want)
	}
	if n := countAll(srvs, "Export"); n <= 5 {
		t.Fatalf("%d attempts; the election outlasts five", n)
	}
}

// TestAudit_ExportGivesUpAtRetryDeadline: without a deadline on the
// context, an export that keeps failing ends at RetryDeadline.
func TestAudit_ExportGivesUpAtRetryDeadline(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAuditServers(t, p, 2, exportLines...)
	for _, s := range srvs {
		s.setExport(func(cofferv1.AuditService_ExportServer) error {
			return status.Error(codes.Unavailable, "no leader")
		})
	}
	const retryDeadline = 800 * time.Millisecond
	c := mustClient(t, p, func(cfg *Config) { cfg.RetryDeadline, cfg.MaxBackoff = retryDeadline, 100*time.Millisecond }, addrs...)
	var buf bytes.Buffer
	start := time.Now()
	err := within(t, func() error { return c.AuditExport(context.Background(), 0, &buf) })
	ce := mustGiveUpAtDeadline(t, err, time.Since(start), retryDeadline, c.cfg.MaxBackoff)
	if ce.Method != "AuditExport" || ce.Attempts != countAll(srvs, "Export") {
		t.Fatalf("Error = %#v, the nodes saw %d exports", ce, countAll(srvs, "Export"))
	}
	if buf.Len() != 0 {
		t.Fatalf("failed attempts wrote %q", buf.String())
	}
}

// TestAudit_FollowRidesThroughElection: a followed stream that breaks
// and then meets "no leader" for longer than five attempts take resumes
// after the last entry given to the callback: every entry once, in order.
func TestAudit_FollowRidesThroughElection(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAuditServers(t, p, 2)
	var (
		mu      sync.Mutex
		streams int
		end     time.Time
		afters  []uint64
	)
	entries := func(from, to uint64) *cofferv1.AuditFollowResponse {
		m := &cofferv1.AuditFollowResponse{HeadSeq: to}
		for seq := from; seq <= to; seq++ {
			m.Entries = append(m.Entries, &cofferv1.AuditEntry{Seq: seq})
		}
		return m
	}
	for _, s := range srvs {
		s.setFollow(func(req *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer) error {
			mu.Lock()
			streams++
			first, over := streams == 1, !time.Now().Before(end)
			mu.Unlock()
			if first {
				// Two entries, then the node goes away and an election
				// follows.
				if err := stream.Send(entries(1, 2)); err != nil {
					return err
				}
				mu.Lock()
				end = time.Now().Add(outage)
				mu.Unlock()
				return status.Error(codes.Unavailable, "node stopping")
			}
			if !over {
				return status.Error(codes.Unavailable, "no leader")
			}
			mu.Lock()
			afters = append(afters, req.GetAfterSeq())
			mu.Unlock()
			if err := stream.Send(entries(req.GetAfterSeq()+1, 4)); err != nil {
				return err
			}
			<-stream.Context().Done()
			return nil
		})
	}
	c := mustClient(t, p, defaultBackoff, addrs...)
	errDone := errors.New("done")
	var seqs []uint64
	err := c.AuditFollow(testCtx(t), &cofferv1.AuditFollowRequest{}, func(m *cofferv1.AuditFollowResponse) error {
		for _, e := range m.GetEntries() {
			seqs = append(seqs, e.GetSeq())
		}
		if seqs[len(seqs)-1] == 4 {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("AuditFollow = %v, want the callback's error", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seqs) != "[1 2 3 4]" || fmt.Sprint(afters) != "[2]" {
		t.Fatalf("callback saw %v, resumed after %v; want [1 2 3 4] after [2]", seqs, afters)
	}
	// The broken stream and the failures during the election: five in a
	// row at least with the default backoff.
	if failures := streams - 1; failures < 5 {
		t.Fatalf("%d failures in a row; the election outlasts five", failures)
	}
}

// TestAudit_FollowGivesUpAfterRetryDeadline: without a deadline on the
// context, AuditFollow gives up on an outage that lasts RetryDeadline,
// counted from the last entry: an earlier, shorter outage does not count.
func TestAudit_FollowGivesUpAfterRetryDeadline(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustAuditServers(t, p, 2)
	const (
		retryDeadline = 800 * time.Millisecond
		firstOutage   = 500 * time.Millisecond
	)
	start := time.Now()
	var (
		mu        sync.Mutex
		delivered bool
	)
	for _, s := range srvs {
		s.setFollow(func(_ *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer) error {
			mu.Lock()
			down := delivered || time.Since(start) < firstOutage
			if !down {
				delivered = true
			}
			mu.Unlock()
			if down {
				return status.Error(codes.Unavailable, "no leader")
			}
			if err := stream.Send(&cofferv1.AuditFollowResponse{Entries: []*cofferv1.AuditEntry{{Seq: 1}}}); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "node stopping")
		})
	}
	c := mustClient(t, p, func(cfg *Config) { cfg.RetryDeadline, cfg.MaxBackoff = retryDeadline, 100*time.Millisecond }, addrs...)
	var got []uint64
	var lastEntry time.Time
	err := within(t, func() error {
		return c.AuditFollow(context.Background(), &cofferv1.AuditFollowRequest{}, func(m *cofferv1.AuditFollowResponse) error {
			for _, e := range m.GetEntries() {
				got = append(got, e.GetSeq())
			}
			lastEntry = time.Now()
			return nil
		})
	})
	if fmt.Sprint(got) != "[1]" {
		t.Fatalf("callback saw %v, want [1]", got)
	}
	ce := mustGiveUpAtDeadline(t, err, time.Since(lastEntry), retryDeadline, c.cfg.MaxBackoff)
	if ce.Method != "AuditFollow" {
		t.Fatalf("Error.Method = %q", ce.Method)
	}
	if total := time.Since(start); total < firstOutage+retryDeadline-200*time.Millisecond {
		t.Fatalf("gave up %v after the start: the retry budget did not start again after the entry", total)
	}
}
