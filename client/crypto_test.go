package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// sealed is what a cryptoServer keeps for a ciphertext it issued.
type sealed struct {
	gkid      string
	context   map[string]string
	plaintext []byte
}

// cryptoVault is the store the cryptoServers of one test share, so that a
// ciphertext from one decrypts on another. A ciphertext is "ct-" and a
// serial number.
type cryptoVault struct {
	mu    sync.Mutex
	items map[string]sealed
}

func (v *cryptoVault) seal(gkid string, plaintext []byte, encCtx map[string]string) []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	ct := fmt.Sprintf("ct-%d", len(v.items)+1)
	v.items[ct] = sealed{gkid: gkid, context: maps.Clone(encCtx), plaintext: bytes.Clone(plaintext)}
	return []byte(ct)
}

func (v *cryptoVault) open(ct []byte, encCtx map[string]string) (sealed, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s, ok := v.items[string(ct)]
	if !ok || !maps.Equal(s.context, encCtx) {
		return sealed{}, status.Error(codes.InvalidArgument, "ciphertext does not decrypt")
	}
	return s, nil
}

// cryptoServer is a node serving only CryptoService over a shared vault.
type cryptoServer struct {
	cofferv1.UnimplementedCryptoServiceServer

	name  string
	addr  string
	vault *cryptoVault

	mu    sync.Mutex
	calls []string
	reqs  []any
	fail  func(ctx context.Context, method string) error
}

func mustCryptoServers(t *testing.T, p *testPKI, n int) ([]*cryptoServer, []string) {
	t.Helper()
	vault := &cryptoVault{items: map[string]sealed{}}
	var srvs []*cryptoServer
	var addrs []string
	for i := range n {
		name := fmt.Sprintf("c%d", i+1)
		conf := p.issue(t, transport.Identity{Kind: transport.KindNode, Name: name})
		serverTLS, err := conf.ServerTLS()
		if err != nil {
			t.Fatalf("ServerTLS: %v", err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		s := &cryptoServer{name: name, addr: lis.Addr().String(), vault: vault}
		gs := grpc.NewServer(testenv.ServerOptions(t, serverTLS)...)
		cofferv1.RegisterCryptoServiceServer(gs, s)
		go func() { _ = gs.Serve(lis) }()
		t.Cleanup(gs.Stop)
		srvs = append(srvs, s)
		addrs = append(addrs, s.addr)
	}
	return srvs, addrs
}

func (s *cryptoServer) setFail(fn func(context.Context, string) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = fn
}

// record notes the call and its request and returns the injected failure,
// if any.
func (s *cryptoServer) record(ctx context.Context, method string, req any) error {
	s.mu.Lock()
	s.calls = append(s.calls, method)
	s.reqs = append(s.reqs, req)
	fail := s.fail
	s.mu.Unlock()
	if fail != nil {
		return fail(ctx, method)
	}
	return nil
}

func (s *cryptoServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

func (s *cryptoServer) lastReq() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs[len(s.reqs)-1]
}

func (s *cryptoServer) Encrypt(ctx context.Context, req *cofferv1.EncryptRequest) (*cofferv1.EncryptResponse, error) {
	if err := s.record(ctx, "Encrypt", req); err != nil {
		return nil, err
	}
	if len(req.GetPlaintext()) > MaxEncryptPlaintext {
		return nil, status.Error(codes.InvalidArgument, "plaintext too large")
	}
	return &cofferv1.EncryptResponse{Ciphertext: s.vault.seal(req.GetGkid(), req.GetPlaintext(), req.GetContext()),
		Gkid: req.GetGkid(), KeyVersion: 1}, nil
}

func (s *cryptoServer) Decrypt(ctx context.Context, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	if err := s.record(ctx, "Decrypt", req); err != nil {
		return nil, err
	}
	it, err := s.vault.open(req.GetCiphertext(), req.GetContext())
	if err != nil {
		return nil, err
	}
	return &cofferv1.DecryptResponse{Plaintext: it.plaintext, Gkid: it.gkid, KeyVersion: 1}, nil
}

// GenerateDataKeyBatch answers each item as GenerateDataKey does, sealed to
// the batch's SealTo for the item's request id when there is one.
func (s *cryptoServer) GenerateDataKeyBatch(ctx context.Context, req *cofferv1.GenerateDataKeyBatchRequest) (*cofferv1.GenerateDataKeyBatchResponse, error) {
	out := &cofferv1.GenerateDataKeyBatchResponse{}
	for i, it := range req.GetItems() {
		resp, err := s.GenerateDataKey(ctx, it)
		if err != nil {
			return nil, err
		}
		if st := req.GetSealTo(); st != nil {
			if resp.SealedPlaintext, err = testenv.SealItemReply(ctx, st, "datakey", it.GetGkid(), 1, strconv.Itoa(i), resp.GetPlaintext()); err != nil {
				return nil, err
			}
			resp.Plaintext = nil
		}
		out.Results = append(out.Results, &cofferv1.GenerateDataKeyBatchResult{Response: resp})
	}
	return out, nil
}

// GenerateDataKey makes a data key of bytes 1, 2, 3, ... of the algorithm's
// length.
func (s *cryptoServer) GenerateDataKey(ctx context.Context, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	if err := s.record(ctx, "GenerateDataKey", req); err != nil {
		return nil, err
	}
	alg := req.GetAlgorithm()
	n := 32
	switch alg {
	case cofferv1.Algorithm_ALGORITHM_UNSPECIFIED:
		alg = cofferv1.Algorithm_ALGORITHM_AES_256
	case cofferv1.Algorithm_ALGORITHM_AES_128:
		n = 16
	case cofferv1.Algorithm_ALGORITHM_AES_256:
	default:
		return nil, status.Error(codes.InvalidArgument, "data keys are AES-128 or AES-256")
	}
	key := make([]byte, n)
	for i := range key {
		key[i] = byte(i + 1)
	}
	resp := &cofferv1.GenerateDataKeyResponse{Ciphertext: s.vault.seal(req.GetGkid(), key, req.GetContext()),
		Gkid: req.GetGkid(), KeyVersion: 1, Algorithm: alg}
	if st := req.GetSealTo(); st != nil {
		sealed, err := testenv.SealReply(ctx, st, "datakey", req.GetGkid(), 1, key)
		if err != nil {
			return nil, err
		}
		resp.SealedPlaintext = sealed
	} else if !req.GetWithoutPlaintext() {
		resp.Plaintext = key
	}
	return resp, nil
}

func TestCrypto_EveryCall(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustCryptoServers(t, p, 1)
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)
	encCtx := map[string]string{"tenant": "acme", "purpose": "a,b=c"}

	enc, err := c.Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: "g1", Plaintext: []byte("secret"), Context: encCtx,
		Consistency: cofferv1.Consistency_CONSISTENCY_STALE})
	if err != nil || enc.GetGkid() != "g1" || len(enc.GetCiphertext()) == 0 {
		t.Fatalf("Encrypt = %v, %v", enc, err)
	}
	if got := srvs[0].lastReq().(*cofferv1.EncryptRequest); got.GetGkid() != "g1" || string(got.GetPlaintext()) != "secret" ||
		!maps.Equal(got.GetContext(), encCtx) || got.GetConsistency() != cofferv1.Consistency_CONSISTENCY_STALE {
		t.Fatalf("server got %v", got)
	}
	dec, err := c.Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), Context: encCtx})
	if err != nil || string(dec.GetPlaintext()) != "secret" || dec.GetGkid() != "g1" {
		t.Fatalf("Decrypt = %v, %v", dec, err)
	}
	// Another context does not decrypt, and the refusal is not retried.
	if _, err := c.Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: enc.GetCiphertext(), Context: map[string]string{"tenant": "acme"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Decrypt with another context = %v, want InvalidArgument", err)
	}

	dk, err := c.GenerateDataKey(ctx, &cofferv1.GenerateDataKeyRequest{Gkid: "g1", Context: encCtx, Algorithm: cofferv1.Algorithm_ALGORITHM_AES_128})
	if err != nil || len(dk.GetPlaintext()) != 16 || dk.GetAlgorithm() != cofferv1.Algorithm_ALGORITHM_AES_128 {
		t.Fatalf("GenerateDataKey = %v, %v", dk, err)
	}
	wrapped, err := c.DecryptBytes(ctx, dk.GetCiphertext(), encCtx)
	if err != nil || !bytes.Equal(wrapped, dk.GetPlaintext()) {
		t.Fatalf("DecryptBytes(data key) = %x, %v; want %x", wrapped, err, dk.GetPlaintext())
	}
	dk, err = c.GenerateDataKey(ctx, &cofferv1.GenerateDataKeyRequest{Gkid: "g1", WithoutPlaintext: true})
	if err != nil || len(dk.GetPlaintext()) != 0 || len(dk.GetCiphertext()) == 0 {
		t.Fatalf("GenerateDataKey without plaintext = %v, %v", dk, err)
	}
	if got := srvs[0].lastReq().(*cofferv1.GenerateDataKeyRequest); !got.GetWithoutPlaintext() || got.GetGkid() != "g1" {
		t.Fatalf("server got %v", got)
	}
	ct, err := c.EncryptBytes(ctx, "g2", []byte("more"), nil)
	if err != nil || len(ct) == 0 {
		t.Fatalf("EncryptBytes = %q, %v", ct, err)
	}
	if got := srvs[0].lastReq().(*cofferv1.EncryptRequest); got.GetGkid() != "g2" || len(got.GetContext()) != 0 {
		t.Fatalf("server got %v", got)
	}
	pt, err := c.DecryptBytes(ctx, ct, nil)
	if err != nil || string(pt) != "more" {
		t.Fatalf("DecryptBytes = %q, %v", pt, err)
	}

	want := []string{"Encrypt", "Decrypt", "Decrypt", "GenerateDataKey", "Decrypt", "GenerateDataKey", "Encrypt", "Decrypt"}
	if got := srvs[0].seen(); !slices.Equal(got, want) {
		t.Fatalf("server saw %v, want %v", got, want)
	}
	// A batch: every item's data key sealed to the call, bound to the
	// item's request id, opened here.
	batch, err := c.GenerateDataKeyBatch(ctx, &cofferv1.GenerateDataKeyBatchRequest{Items: []*cofferv1.GenerateDataKeyRequest{{Gkid: "g1"}, {Gkid: "g2"}}})
	if err != nil || len(batch.GetResults()) != 2 {
		t.Fatalf("GenerateDataKeyBatch = %v, %v", batch, err)
	}
	for i, res := range batch.GetResults() {
		dk := res.GetResponse()
		back, err := c.DecryptBytes(ctx, dk.GetCiphertext(), nil)
		if len(dk.GetPlaintext()) != 32 || len(dk.GetSealedPlaintext()) != 0 || err != nil || !bytes.Equal(back, dk.GetPlaintext()) {
			t.Fatalf("batch item %d: %d bytes, %v", i, len(dk.GetPlaintext()), err)
		}
	}

}

func TestCrypto_NilRequests(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustCryptoServers(t, p, 1)
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)
	calls := map[string]func() error{
		"Encrypt":         func() error { _, err := c.Encrypt(ctx, nil); return err },
		"Decrypt":         func() error { _, err := c.Decrypt(ctx, nil); return err },
		"GenerateDataKey": func() error { _, err := c.GenerateDataKey(ctx, nil); return err },
	}
	for method, call := range calls {
		err := call()
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s(nil) = %v, want InvalidArgument", method, err)
		}
		var ce *Error
		if !errors.As(err, &ce) || ce.Method != method {
			t.Errorf("%s(nil) = %#v, want an *Error naming the method", method, err)
		}
	}
	if n := len(srvs[0].seen()); n != 0 {
		t.Fatalf("nil requests reached the server %d times", n)
	}
}

// TestCrypto_ReadsRetriedAndSpread: the crypto calls are reads. They are
// spread over every node, and a node that answers Unavailable is left for
// another, where the call succeeds; a refusal is returned at once.
func TestCrypto_ReadsRetriedAndSpread(t *testing.T) {
	p := mustPKI(t)
	srvs, addrs := mustCryptoServers(t, p, 3)
	c := mustClient(t, p, nil, addrs...)
	ctx := testCtx(t)

	ct, err := c.EncryptBytes(ctx, "g", []byte("x"), nil)
	if err != nil {
		t.Fatalf("EncryptBytes: %v", err)
	}
	for range 3 {
		if _, err := c.DecryptBytes(ctx, ct, nil); err != nil {
			t.Fatalf("DecryptBytes: %v", err)
		}
		if _, err := c.GenerateDataKey(ctx, &cofferv1.GenerateDataKeyRequest{Gkid: "g"}); err != nil {
			t.Fatalf("GenerateDataKey: %v", err)
		}
	}
	for _, s := range srvs {
		if n := len(s.seen()); n < 2 {
			t.Errorf("node %s served %d of 7 calls: reads are not spread", s.name, n)
		}
	}

	// Two nodes down, with no cool-down so that calls keep starting there:
	// of two calls in a row at least one starts at a down node and moves
	// on to the live one.
	down := mustClient(t, p, func(cfg *Config) { cfg.Cooldown = 0 }, addrs...)
	srvs[0].setFail(unavailable)
	srvs[1].setFail(unavailable)
	calls := map[string]func() error{
		"Encrypt": func() error { _, err := down.EncryptBytes(ctx, "g", []byte("y"), nil); return err },
		"Decrypt": func() error { _, err := down.DecryptBytes(ctx, ct, nil); return err },
		"GenerateDataKey": func() error {
			_, err := down.GenerateDataKey(ctx, &cofferv1.GenerateDataKeyRequest{Gkid: "g"})
			return err
		},
	}
	for method, call := range calls {
		count := func(s *cryptoServer) int {
			n := 0
			for _, m := range s.seen() {
				if m == method {
					n++
				}
			}
			return n
		}
		downBefore, liveBefore := count(srvs[0])+count(srvs[1]), count(srvs[2])
		for range 2 {
			if err := call(); err != nil {
				t.Fatalf("%s with two nodes down: %v", method, err)
			}
		}
		if n := count(srvs[2]) - liveBefore; n != 2 {
			t.Errorf("the live node served %d of 2 %s calls", n, method)
		}
		if n := count(srvs[0]) + count(srvs[1]) - downBefore; n == 0 {
			t.Errorf("no %s attempt reached a down node: nothing was retried", method)
		}
	}

	for _, s := range srvs {
		s.setFail(func(context.Context, string) error {
			return status.Error(codes.FailedPrecondition, "key g is not an AES key")
		})
	}
	before := len(srvs[0].seen()) + len(srvs[1].seen()) + len(srvs[2].seen())
	_, err = c.EncryptBytes(ctx, "g", []byte("z"), nil)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("EncryptBytes = %v, want FailedPrecondition", err)
	}
	if n := len(srvs[0].seen()) + len(srvs[1].seen()) + len(srvs[2].seen()) - before; n != 1 {
		t.Fatalf("FailedPrecondition was tried %d times, want 1", n)
	}
}
