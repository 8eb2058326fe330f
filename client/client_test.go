package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// testTimeout bounds every test call.
const testTimeout = 10 * time.Second

func mustClient(t testing.TB, p *testPKI, tweak func(*Config), addrs ...string) *Client {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Endpoints = addrs
	cfg.TLS = p.clientTLS
	cfg.Backoff = 5 * time.Millisecond
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func mustServers(t testing.TB, p *testPKI, n int) ([]*fakeServer, []string) {
	t.Helper()
	var srvs []*fakeServer
	var addrs []string
	for i := range n {
		s := mustServer(t, p, fmt.Sprintf("n%d", i+1))
		srvs = append(srvs, s)
		addrs = append(addrs, s.addr)
	}
	return srvs, addrs
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func unavailable(context.Context, string) error {
	return status.Error(codes.Unavailable, "injected: node down")
}

func TestConfig_Validate(t *testing.T) {
	good := DefaultConfig()
	good.Endpoints = []string{"a:1", "b:1"}
	good.TLS = mustPKI(t).clientTLS
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	// No retries and no backoff (a probe), a count limit, a long backoff.
	for _, tweak := range []func(*Config){
		func(c *Config) { c.MaxAttempts, c.Backoff, c.Cooldown = 1, 0, 0 },
		func(c *Config) { c.MaxAttempts = MaxAttemptsLimit },
		func(c *Config) { c.Backoff, c.MaxBackoff = time.Second, time.Second },
	} {
		cfg := good
		tweak(&cfg)
		if err := cfg.Validate(); err != nil {
			t.Fatalf("valid config %+v refused: %v", cfg, err)
		}
	}
	tests := map[string]func(*Config){
		"no endpoints":      func(c *Config) { c.Endpoints = nil },
		"empty endpoint":    func(c *Config) { c.Endpoints = []string{"a:1", ""} },
		"spaced endpoint":   func(c *Config) { c.Endpoints = []string{" a:1"} },
		"duplicate":         func(c *Config) { c.Endpoints = []string{"a:1", "a:1"} },
		"no tls":            func(c *Config) { c.TLS = nil },
		"zero timeout":      func(c *Config) { c.RequestTimeout = 0 },
		"zero deadline":     func(c *Config) { c.RetryDeadline = 0 },
		"negative deadline": func(c *Config) { c.RetryDeadline = -time.Second },
		"negative attempts": func(c *Config) { c.MaxAttempts = -1 },
		"many attempts":     func(c *Config) { c.MaxAttempts = MaxAttemptsLimit + 1 },
		"negative backoff":  func(c *Config) { c.Backoff = -time.Second },
		"cap below backoff": func(c *Config) { c.Backoff, c.MaxBackoff = time.Second, 500*time.Millisecond },
		"negative cap":      func(c *Config) { c.Backoff, c.MaxBackoff, c.MaxAttempts = 0, -time.Second, 1 },
		"spinning retries":  func(c *Config) { c.Backoff, c.MaxAttempts = 0, 0 },
		"negative cooldown": func(c *Config) { c.Cooldown = -time.Second },
		"too many endpoints": func(c *Config) {
			c.Endpoints = nil
			for i := range MaxEndpoints + 1 {
				c.Endpoints = append(c.Endpoints, fmt.Sprintf("h%d:1", i))
			}
		},
	}
	for name, tweak := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := good
			cfg.Endpoints = slices.Clone(good.Endpoints)
			tweak(&cfg)
			if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate = %v, want ErrInvalidConfig", err)
			}
			if _, err := New(cfg); !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("New = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

func TestClient_RoundRobin(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 3)
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)
	const perServer = 10
	for range 3 * perServer {
		if _, err := c.DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: "g"}); err != nil {
			t.Fatalf("DescribeKey: %v", err)
		}
	}
	for _, s := range srvs {
		if got := s.callCount(); got != perServer {
			t.Errorf("server %s got %d calls, want %d", s.name, got, perServer)
		}
	}
}

func TestClient_UnavailableRetriedElsewhere(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 3)
	srvs[0].setFail(unavailable)
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)

	// The first call starts at srvs[0], fails there and succeeds on srvs[1].
	resp, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"})
	if err != nil {
		t.Fatalf("GetKey: %v", err)
	}
	if resp.GetKey().GetOwner() != srvs[1].name {
		t.Fatalf("answered by %q, want %q", resp.GetKey().GetOwner(), srvs[1].name)
	}
	if srvs[0].callCount() != 1 || srvs[1].callCount() != 1 {
		t.Fatalf("calls = %d, %d; want 1, 1", srvs[0].callCount(), srvs[1].callCount())
	}

	// srvs[0] is cooling down now: further calls avoid it.
	for range 6 {
		if _, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); err != nil {
			t.Fatalf("GetKey: %v", err)
		}
	}
	if got := srvs[0].callCount(); got != 1 {
		t.Fatalf("cooling-down endpoint got %d calls, want 1", got)
	}
}

func TestClient_CooldownExpires(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 2)
	srvs[0].setFail(unavailable)
	c := mustClient(t, p, nil, addrs...)
	now := time.Now()
	c.now = func() time.Time { return now }
	ctx := testCtx(t)
	if _, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); err != nil {
		t.Fatalf("GetKey: %v", err)
	}
	srvs[0].setFail(nil)
	for range 4 {
		if _, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); err != nil {
			t.Fatalf("GetKey: %v", err)
		}
	}
	if got := srvs[0].callCount(); got != 1 {
		t.Fatalf("endpoint used during cool-down: %d calls", got)
	}
	now = now.Add(c.cfg.Cooldown + time.Millisecond)
	for range 4 {
		if _, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); err != nil {
			t.Fatalf("GetKey: %v", err)
		}
	}
	if got := srvs[0].callCount(); got != 3 {
		t.Fatalf("endpoint after cool-down: %d calls, want 3", got)
	}
}

func TestClient_InvalidArgumentNotRetried(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 3)
	for _, s := range srvs {
		s.setFail(func(context.Context, string) error {
			return status.Error(codes.InvalidArgument, "resource is required")
		})
	}
	c := mustClient(t, p, nil, addrs...)
	_, err := c.GenerateKey(testCtx(t), &cofferv1.GenerateKeyRequest{})
	if err == nil {
		t.Fatal("GenerateKey succeeded")
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.InvalidArgument || st.Message() != "resource is required" {
		t.Fatalf("status = %v (ok=%v), want InvalidArgument with the server's message", st, ok)
	}
	if errors.Is(err, ErrRetriesExhausted) {
		t.Error("a non-retryable failure matches ErrRetriesExhausted")
	}
	total := 0
	for _, s := range srvs {
		total += s.callCount()
	}
	if total != 1 {
		t.Fatalf("%d attempts, want 1", total)
	}
}

// WithRequestID sends its id in the header on every attempt of every kind
// of call, replaces an id set before, and changes no request message.
func TestClient_WithRequestID(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 3)
	srvs[0].setFail(unavailable)
	srvs[1].setFail(unavailable)
	c := mustClient(t, p, nil, addrs...)
	ctx := WithRequestID(WithRequestID(testCtx(t), "first"), "corr-1")
	if _, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "gk"}); err != nil {
		t.Fatalf("GetKey: %v", err)
	}
	req := &cofferv1.GenerateKeyRequest{Resource: "r"}
	if _, err := c.GenerateKey(ctx, req); err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	if req.GetRequestId() != "" {
		t.Errorf("caller's request modified: request_id %q", req.GetRequestId())
	}
	if _, err := c.ClusterStatus(WithRequestID(ctx, ""), nil); err != nil {
		t.Fatalf("ClusterStatus: %v", err)
	}
	byMethod := map[string][]call{}
	for _, s := range srvs {
		for _, cl := range s.seen() {
			byMethod[cl.method] = append(byMethod[cl.method], cl)
		}
	}
	for _, m := range []string{"GetKey", "GenerateKey"} {
		if len(byMethod[m]) == 0 {
			t.Fatalf("no %s reached a server", m)
		}
		for _, cl := range byMethod[m] {
			if strings.Join(cl.header, ",") != "corr-1" {
				t.Errorf("%s attempt sent header %q, want corr-1", m, cl.header)
			}
		}
	}
	if gen := byMethod["GenerateKey"]; gen[0].requestID == "" || gen[0].requestID == "corr-1" {
		t.Errorf("GenerateKey sent request_id %q: want a generated one beside the header", gen[0].requestID)
	}
	for _, cl := range byMethod["Status"] {
		if len(cl.header) != 0 {
			t.Errorf("an id removed with WithRequestID(ctx, \"\") was sent: %q", cl.header)
		}
	}
}

func TestClient_RequestIDKeptAcrossRetries(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 3)
	srvs[0].setFail(unavailable)
	srvs[1].setFail(unavailable)
	c := mustClient(t, p, nil, addrs...)
	req := &cofferv1.GenerateKeyRequest{Resource: "r"}
	if _, err := c.GenerateKey(testCtx(t), req); err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	if req.GetRequestId() != "" {
		t.Errorf("caller's request modified: request_id %q", req.GetRequestId())
	}
	var ids []string
	for _, s := range srvs {
		for _, cl := range s.seen() {
			ids = append(ids, cl.requestID)
		}
	}
	if len(ids) != 3 {
		t.Fatalf("%d attempts, want 3", len(ids))
	}
	valid := regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	if !valid.MatchString(ids[0]) {
		t.Fatalf("request id %q is not URL-safe or too long", ids[0])
	}
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("request ids differ across retries: %q", ids)
		}
	}

	// A caller-chosen id is sent as is.
	srvs[2].setFail(nil)
	if _, err := c.PutKey(testCtx(t), &cofferv1.PutKeyRequest{RequestId: "mine", Resource: "r"}); err != nil {
		t.Fatalf("PutKey: %v", err)
	}
	last := srvs[2].seen()
	if got := last[len(last)-1].requestID; got != "mine" {
		t.Fatalf("request id = %q, want %q", got, "mine")
	}

	// Two calls get two different ids.
	if a, b := NewRequestID(), NewRequestID(); a == b || len(a) > 64 {
		t.Fatalf("NewRequestID: %q, %q", a, b)
	}
}

func TestClient_AttemptDeadlineRetried(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 2)
	srvs[0].setFail(func(ctx context.Context, _ string) error {
		<-ctx.Done() // hang until the attempt's deadline
		return ctx.Err()
	})
	c := mustClient(t, p, func(cfg *Config) { cfg.RequestTimeout = 200 * time.Millisecond }, addrs...)
	resp, err := c.DescribeKey(testCtx(t), &cofferv1.DescribeKeyRequest{Gkid: "g"})
	if err != nil {
		t.Fatalf("DescribeKey: %v", err)
	}
	if resp.GetKey().GetOwner() != srvs[1].name {
		t.Fatalf("answered by %q, want %q", resp.GetKey().GetOwner(), srvs[1].name)
	}
}

// TestClient_AllEndpointsDown: with every node refusing connections the
// call retries until its deadline, then fails with the last Unavailable.
func TestClient_AllEndpointsDown(t *testing.T) {
	p := mustPKI(t)
	var addrs []string
	for range 3 {
		// A port that was just free: connections to it are refused.
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, lis.Addr().String())
		_ = lis.Close()
	}
	c := mustClient(t, p, func(cfg *Config) { cfg.MaxBackoff = 100 * time.Millisecond }, addrs...)
	const deadline = 1500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	_, err := c.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "r"})
	mustGiveUpAtDeadline(t, err, time.Since(start), deadline, c.cfg.MaxBackoff)
	t.Logf("error: %v", err)
}

func TestClient_LeaderHintFollowed(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 3)
	// srvs[0] points at srvs[2]; round-robin alone would go to srvs[1] next.
	srvs[0].setFail(func(ctx context.Context, _ string) error {
		return withLeaderHint(ctx, srvs[2].addr, status.Error(codes.Unavailable, "not the leader"))
	})
	c := mustClient(t, p, func(cfg *Config) { cfg.Backoff, cfg.MaxBackoff = time.Minute, time.Minute }, addrs...)
	resp, err := c.GenerateKey(testCtx(t), &cofferv1.GenerateKeyRequest{Resource: "r"})
	if err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	if resp.GetKey().GetOwner() != srvs[2].name {
		t.Fatalf("answered by %q, want the hinted %q", resp.GetKey().GetOwner(), srvs[2].name)
	}
	if srvs[1].callCount() != 0 {
		t.Fatalf("hint ignored: %s got %d calls", srvs[1].name, srvs[1].callCount())
	}
}

func TestClient_LeaderHintAddsEndpoint(t *testing.T) {
	p := mustPKI(t)
	srvs, _ := mustServers(t, p, 2)
	srvs[0].setFail(func(ctx context.Context, _ string) error {
		return withLeaderHint(ctx, srvs[1].addr, status.Error(codes.Unavailable, "not the leader"))
	})
	c := mustClient(t, p, nil, srvs[0].addr)
	if _, err := c.PutKey(testCtx(t), &cofferv1.PutKeyRequest{Resource: "r", Material: make([]byte, 32)}); err != nil {
		t.Fatalf("PutKey: %v", err)
	}
	if srvs[1].callCount() != 1 {
		t.Fatalf("hinted endpoint got %d calls, want 1", srvs[1].callCount())
	}
	if got, want := c.Endpoints(), []string{srvs[0].addr, srvs[1].addr}; !slices.Equal(got, want) {
		t.Fatalf("Endpoints = %v, want %v", got, want)
	}
}

func TestClient_BadLeaderHintIgnored(t *testing.T) {
	if got := leaderHint(nil); got != "" {
		t.Fatalf("leaderHint(nil) = %q", got)
	}
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 2)
	srvs[0].setFail(func(ctx context.Context, _ string) error {
		return withLeaderHint(ctx, "no-port", status.Error(codes.Unavailable, "not the leader"))
	})
	c := mustClient(t, p, nil, addrs...)
	if _, err := c.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: "g"}); err != nil {
		t.Fatalf("GetKey: %v", err)
	}
	if len(c.Endpoints()) != 2 {
		t.Fatalf("Endpoints = %v", c.Endpoints())
	}
}

func TestClient_AllKeysFollowsTokens(t *testing.T) {
	p := mustPKI(t)
	_, addrs := mustServers(t, p, 2)
	c := mustClient(t, p, nil, addrs...)
	var gkids []string
	for k, err := range c.AllKeys(testCtx(t), &cofferv1.ListKeysRequest{PageSize: 2}) {
		if err != nil {
			t.Fatalf("AllKeys: %v", err)
		}
		gkids = append(gkids, k.GetGkid())
	}
	want := []string{"gk-0-a", "gk-0-b", "gk-1-a", "gk-1-b", "gk-2-a", "gk-2-b"}
	if !slices.Equal(gkids, want) {
		t.Fatalf("AllKeys = %v, want %v", gkids, want)
	}
}

func TestClient_HelpersAndStatus(t *testing.T) {
	p := mustPKI(t)
	_, addrs := mustServers(t, p, 1)
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)
	md, err := c.Generate(ctx, "", "r", cofferv1.Algorithm_ALGORITHM_AES_128)
	if err != nil || md.GetGkid() == "" {
		t.Fatalf("Generate = %v, %v", md, err)
	}
	material, md, err := c.Get(ctx, "g1")
	if err != nil || len(material) != 32 || md.GetGkid() != "g1" {
		t.Fatalf("Get = %d bytes, %v, %v", len(material), md, err)
	}
	st, err := c.ClusterStatus(ctx, nil)
	if err != nil || st.GetClusterId() != "c1" {
		t.Fatalf("ClusterStatus = %v, %v", st, err)
	}
	if _, err := c.GetKey(ctx, nil); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("GetKey(nil) = %v, want InvalidArgument", err)
	}
}

func TestClient_Closed(t *testing.T) {
	p := mustPKI(t)
	_, addrs := mustServers(t, p, 1)
	c := mustClient(t, p, nil, addrs...)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := c.GetKey(testCtx(t), &cofferv1.GetKeyRequest{Gkid: "g"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("GetKey after Close = %v, want ErrClosed", err)
	}
}

func TestClient_Backoff(t *testing.T) {
	c := &Client{cfg: Config{Backoff: 100 * time.Millisecond, MaxBackoff: time.Second}}
	for retry, want := range map[int]time.Duration{
		1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond,
		5: time.Second, 6: time.Second, 1000: time.Second,
	} {
		for range 20 {
			if got := c.backoff(retry); got < want*4/5 || got > want*6/5 {
				t.Fatalf("backoff(%d) = %v, want %v ±20%%", retry, got, want)
			}
		}
	}
	if got := (&Client{}).backoff(3); got != 0 {
		t.Errorf("zero Backoff: backoff = %v", got)
	}
	huge := &Client{cfg: Config{Backoff: time.Second, MaxBackoff: 1 << 62}}
	if got := huge.backoff(200); got < (1<<62)*4/5 || got > (1<<62)*6/5 {
		t.Errorf("backoff near the Duration limit = %v", got)
	}
}

func TestClient_WritesGoToLearntLeader(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustServers(t, p, 3)
	// Every node names srvs[1] as the leader on a successful write, as a
	// Coffer node does.
	for _, s := range srvs {
		s.setFail(func(ctx context.Context, method string) error {
			if method == "GenerateKey" {
				_ = grpc.SetHeader(ctx, metadata.Pairs(LeaderAddrKey, srvs[1].addr))
			}
			return nil
		})
	}
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)
	for range 6 {
		if _, err := c.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "r"}); err != nil {
			t.Fatalf("GenerateKey: %v", err)
		}
	}
	// The first write may land anywhere; the other five go to the leader.
	if got := srvs[1].callCount(); got < 5 {
		t.Fatalf("leader got %d of 6 writes, want at least 5", got)
	}
	// Reads still spread over every node.
	before := srvs[0].callCount() + srvs[2].callCount()
	for range 6 {
		if _, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); err != nil {
			t.Fatalf("GetKey: %v", err)
		}
	}
	if srvs[0].callCount()+srvs[2].callCount()-before < 3 {
		t.Fatal("reads were not spread over the nodes")
	}
	// When the leader fails, writes go elsewhere and the client forgets it.
	srvs[1].setFail(unavailable)
	if _, err := c.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "r"}); err != nil {
		t.Fatalf("GenerateKey after leader loss: %v", err)
	}
}
