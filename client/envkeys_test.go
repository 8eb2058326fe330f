package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/ciphertext"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// envServer is a node for envelope tests: keys in memory, real Coffer
// ciphertexts for the wrapped data keys, and a log of the calls.
type envServer struct {
	cofferv1.UnimplementedKeyServiceServer
	cofferv1.UnimplementedCryptoServiceServer

	mu       sync.Mutex
	keys     map[string]*cofferv1.KeyMetadata
	material map[string][]byte
	calls    []string
}

func mustEnvServer(t *testing.T, p *testPKI) (*envServer, string) {
	t.Helper()
	conf := p.issue(t, transport.Identity{Kind: transport.KindNode, Name: "env1"})
	serverTLS, err := conf.ServerTLS()
	if err != nil {
		t.Fatalf("ServerTLS: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := &envServer{keys: map[string]*cofferv1.KeyMetadata{}, material: map[string][]byte{}}
	gs := grpc.NewServer(testenv.ServerOptions(t, serverTLS)...)
	cofferv1.RegisterKeyServiceServer(gs, s)
	cofferv1.RegisterCryptoServiceServer(gs, s)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return s, lis.Addr().String()
}

// add stores a key; created orders keys by creation.
func (s *envServer) add(policy, resource string, alg cofferv1.Algorithm, state cofferv1.KeyState, created time.Time) *cofferv1.KeyMetadata {
	s.mu.Lock()
	defer s.mu.Unlock()
	gkid := fmt.Sprintf("k1-test%033d", len(s.keys)+1)
	md := &cofferv1.KeyMetadata{Gkid: gkid, Policy: policy, Resource: resource, Algorithm: alg, State: state,
		CreatedAt: timestamppb.New(created), Version: 1}
	m := make([]byte, 32)
	_, _ = rand.Read(m)
	s.keys[gkid], s.material[gkid] = md, m
	return md
}

func (s *envServer) setState(gkid string, st cofferv1.KeyState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[gkid].State = st
}

func (s *envServer) note(method string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, method)
}

func (s *envServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

func (s *envServer) ListKeys(_ context.Context, req *cofferv1.ListKeysRequest) (*cofferv1.ListKeysResponse, error) {
	s.note("ListKeys")
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &cofferv1.ListKeysResponse{}
	for _, md := range s.keys {
		if md.GetPolicy() == req.GetPolicy() && md.GetResource() == req.GetResource() {
			resp.Keys = append(resp.Keys, md)
		}
	}
	return resp, nil
}

func (s *envServer) GenerateKey(_ context.Context, req *cofferv1.GenerateKeyRequest) (*cofferv1.GenerateKeyResponse, error) {
	s.note("GenerateKey")
	return &cofferv1.GenerateKeyResponse{Key: s.add(req.GetPolicy(), req.GetResource(), req.GetAlgorithm(), cofferv1.KeyState_KEY_STATE_ACTIVE, time.Now())}, nil
}

func (s *envServer) GenerateDataKey(ctx context.Context, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	s.note("GenerateDataKey")
	s.mu.Lock()
	defer s.mu.Unlock()
	md, ok := s.keys[req.GetGkid()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such key")
	}
	if md.GetState() != cofferv1.KeyState_KEY_STATE_ACTIVE {
		return nil, status.Error(codes.FailedPrecondition, "key is not active")
	}
	dk := make([]byte, 32)
	_, _ = rand.Read(dk)
	ct, err := ciphertext.Seal(s.material[md.GetGkid()], ciphertext.Header{GKID: md.GetGkid(), KeyVersion: 1}, md.GetResource(), req.GetContext(), dk)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &cofferv1.GenerateDataKeyResponse{Plaintext: dk, Ciphertext: ct, Gkid: md.GetGkid(), KeyVersion: 1,
		Algorithm: cofferv1.Algorithm_ALGORITHM_AES_256}
	if st := req.GetSealTo(); st != nil {
		if resp.SealedPlaintext, err = testenv.SealReply(ctx, st, "datakey", md.GetGkid(), 1, dk); err != nil {
			return nil, err
		}
		resp.Plaintext = nil
	}
	return resp, nil
}

func (s *envServer) Decrypt(_ context.Context, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	s.note("Decrypt")
	s.mu.Lock()
	defer s.mu.Unlock()
	h, err := ciphertext.ParseHeader(req.GetCiphertext())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	md, ok := s.keys[h.GKID]
	if !ok || md.GetState() == cofferv1.KeyState_KEY_STATE_DESTROYED {
		return nil, status.Error(codes.NotFound, "no such key")
	}
	pt, err := ciphertext.Open(s.material[h.GKID], md.GetResource(), req.GetContext(), req.GetCiphertext())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "ciphertext does not decrypt")
	}
	return &cofferv1.DecryptResponse{Plaintext: pt, Gkid: h.GKID, KeyVersion: 1}, nil
}

func TestEnvelopeClient_KeyCreatedOnceAndReused(t *testing.T) {
	p := mustPKI(t)
	s, addr := mustEnvServer(t, p)
	c := mustClient(t, p, nil, addr)
	ctx := context.Background()

	rows := [][]byte{[]byte("alice,4111"), []byte("bob,5500"), {}}
	var blobs [][]byte
	for _, row := range rows {
		blob, err := c.Seal(ctx, "", "billing/cards", row)
		if err != nil {
			t.Fatalf("Seal: %v", err)
		}
		blobs = append(blobs, blob)
	}
	for i, blob := range blobs {
		got, err := c.Open(ctx, blob)
		if err != nil || !bytes.Equal(got, rows[i]) {
			t.Fatalf("Open row %d = %q, %v", i, got, err)
		}
	}
	want := []string{"ListKeys", "GenerateKey", "GenerateDataKey", "GenerateDataKey", "GenerateDataKey", "Decrypt", "Decrypt", "Decrypt"}
	if got := s.seen(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("calls = %v, want %v", got, want)
	}
	// A second client finds the key instead of creating one.
	c2 := mustClient(t, p, nil, addr)
	if _, err := c2.Seal(ctx, "default", "billing/cards", []byte("x")); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	n := len(s.keys)
	s.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d keys, want 1", n)
	}
}

func TestEnvelopeClient_PicksNewestUsableKey(t *testing.T) {
	p := mustPKI(t)
	s, addr := mustEnvServer(t, p)
	c := mustClient(t, p, nil, addr)
	now := time.Now()
	aes, hmac := cofferv1.Algorithm_ALGORITHM_AES_256, cofferv1.Algorithm_ALGORITHM_HMAC_SHA256
	active, off := cofferv1.KeyState_KEY_STATE_ACTIVE, cofferv1.KeyState_KEY_STATE_DEACTIVATED
	s.add("default", "r", aes, active, now.Add(-time.Hour))
	want := s.add("default", "r", aes, active, now.Add(-time.Minute))
	s.add("default", "r", aes, off, now)
	s.add("default", "r", hmac, active, now)
	s.add("other", "r", aes, active, now)
	got, err := c.envelopeKey(context.Background(), "default", "r")
	if err != nil || got != want.GetGkid() {
		t.Fatalf("envelopeKey = %s, %v; want %s", got, err, want.GetGkid())
	}
}

// A remembered key that stops issuing data keys is looked up again; old
// envelopes still open.
func TestEnvelopeClient_KeyDeactivated(t *testing.T) {
	p := mustPKI(t)
	s, addr := mustEnvServer(t, p)
	c := mustClient(t, p, nil, addr)
	ctx := context.Background()
	old, err := c.Seal(ctx, "default", "r", []byte("old row"))
	if err != nil {
		t.Fatal(err)
	}
	first, _ := c.envelopeKey(ctx, "default", "r")
	s.setState(first, cofferv1.KeyState_KEY_STATE_DEACTIVATED)
	if _, err := c.Seal(ctx, "default", "r", []byte("new row")); err != nil {
		t.Fatalf("Seal after deactivation: %v", err)
	}
	if second, _ := c.envelopeKey(ctx, "default", "r"); second == first {
		t.Fatal("still wrapping under the deactivated key")
	}
	if got, err := c.Open(ctx, old); err != nil || string(got) != "old row" {
		t.Fatalf("Open old = %q, %v", got, err)
	}
	s.setState(first, cofferv1.KeyState_KEY_STATE_DESTROYED)
	_, err = c.Open(ctx, old)
	if status.Code(err) != codes.NotFound {
		t.Fatalf("Open under a destroyed key = %v, want NotFound", err)
	}
}

func TestEnvelopeClient_Stream(t *testing.T) {
	p := mustPKI(t)
	_, addr := mustEnvServer(t, p)
	c := mustClient(t, p, nil, addr)
	ctx := context.Background()
	pt := make([]byte, 5*DefaultSegmentSize/2)
	_, _ = rand.Read(pt)
	var buf bytes.Buffer
	w, err := c.SealStream(ctx, "default", "files", &buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := c.OpenStream(ctx, &buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("OpenStream read %d bytes, %v", len(got), err)
	}
	// The stream's wrapped data key is bound to the envelope context: it
	// does not decrypt as a plain ciphertext.
	blob, _ := c.Seal(ctx, "default", "files", []byte("x"))
	_, end, _ := parsePrefix(blob)
	if _, err := c.DecryptBytes(ctx, blob[envPrefixLen:end], nil); err == nil {
		t.Fatal("a wrapped data key decrypted without the envelope context")
	}
	if _, err := c.Seal(ctx, "default", "", []byte("x")); !errors.Is(err, ErrEnvelopeKey) {
		t.Fatalf("Seal without a resource = %v", err)
	}
}

// The goroutines of one client that seal for a new resource at once create
// one envelope key between them.
func TestEnvelopeClient_ConcurrentFirstSeal(t *testing.T) {
	p := mustPKI(t)
	s, addr := mustEnvServer(t, p)
	c := mustClient(t, p, nil, addr)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			blob, err := c.Seal(context.Background(), "default", "r", []byte{byte(i)})
			if err == nil {
				_, err = c.Open(context.Background(), blob)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.keys) != 1 {
		t.Fatalf("%d envelope keys created, want 1", len(s.keys))
	}
}
