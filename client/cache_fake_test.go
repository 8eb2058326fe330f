package client

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/ciphertext"
)

// fakeCacheService is a node's CacheService: the policy it answers
// (nil: Unimplemented, a node that predates it) and a log of events that
// Watch streams deliver.
type fakeCacheService struct {
	cofferv1.UnimplementedCacheServiceServer
	srv *fakeServer

	mu       sync.Mutex
	policy   *cofferv1.ClientCachePolicy
	gets     int
	watchers int
	// afterSeqs are the after_seq of every Watch.
	afterSeqs []uint64
	events    []*cofferv1.CacheEvent
	// notify is closed when an event is added.
	notify chan struct{}
}

// permissivePolicy lets clients cache every key for an hour, for GetKey.
func permissivePolicy() *cofferv1.ClientCachePolicy {
	return &cofferv1.ClientCachePolicy{Ttl: durationpb.New(time.Hour), MaxEntries: 100,
		AllowedOperations: []string{"get"}, Source: "default", Generation: 1}
}

// fakeCrypto is a node's CryptoService over the fake's keys: every key's
// material is 32 zero bytes at version 1 with resource "r" (as the fake's
// GetKey answers), used the way node/crypto.go uses a key.
type fakeCrypto struct {
	cofferv1.UnimplementedCryptoServiceServer
	srv *fakeServer
}

func registerCacheFakes(f *fakeServer) {
	f.cacheSvc = &fakeCacheService{srv: f, policy: permissivePolicy(), notify: make(chan struct{})}
	cofferv1.RegisterCacheServiceServer(f.srv, f.cacheSvc)
	cofferv1.RegisterCryptoServiceServer(f.srv, &fakeCrypto{srv: f})
}

// failure returns the injected failure for method, if any, without
// recording a call.
func (f *fakeServer) failure(ctx context.Context, method string) error {
	f.mu.Lock()
	fail := f.fail
	f.mu.Unlock()
	if fail != nil {
		return fail(ctx, method)
	}
	return nil
}

func (s *fakeCacheService) setPolicy(p *cofferv1.ClientCachePolicy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.policy = p
}

func (s *fakeCacheService) getCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gets
}

func (s *fakeCacheService) watching() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watchers
}

// push adds an event with the next seq and wakes the streams.
func (s *fakeCacheService) push(ev *cofferv1.CacheEvent) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev.Seq = uint64(len(s.events) + 1)
	s.events = append(s.events, ev)
	close(s.notify)
	s.notify = make(chan struct{})
	return ev.Seq
}

func (s *fakeCacheService) GetCachePolicy(ctx context.Context, _ *cofferv1.GetCachePolicyRequest) (*cofferv1.GetCachePolicyResponse, error) {
	if err := s.srv.failure(ctx, "GetCachePolicy"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	if s.policy == nil {
		return nil, status.Error(codes.Unimplemented, "unknown service coffer.v1.CacheService")
	}
	return &cofferv1.GetCachePolicyResponse{Policy: proto.CloneOf(s.policy), Client: "tester"}, nil
}

// Watch sends the events after after_seq (0: from now on), then each new
// one, until the client goes away.
func (s *fakeCacheService) Watch(req *cofferv1.WatchCacheRequest, stream cofferv1.CacheService_WatchServer) error {
	if err := s.srv.failure(stream.Context(), "Watch"); err != nil {
		return err
	}
	s.mu.Lock()
	if s.policy == nil {
		s.mu.Unlock()
		return status.Error(codes.Unimplemented, "unknown service coffer.v1.CacheService")
	}
	s.watchers++
	s.afterSeqs = append(s.afterSeqs, req.GetAfterSeq())
	sent := req.GetAfterSeq()
	if sent == 0 {
		sent = uint64(len(s.events))
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.watchers--
		s.mu.Unlock()
	}()
	for {
		s.mu.Lock()
		var pending []*cofferv1.CacheEvent
		if sent < uint64(len(s.events)) {
			pending = append(pending, s.events[sent:]...)
		}
		ch := s.notify
		s.mu.Unlock()
		for _, ev := range pending {
			if err := stream.Send(ev); err != nil {
				return err
			}
			sent = ev.GetSeq()
		}
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-ch:
		}
	}
}

var fakeKey = make([]byte, 32)

func (s *fakeCrypto) Encrypt(ctx context.Context, req *cofferv1.EncryptRequest) (*cofferv1.EncryptResponse, error) {
	if err := s.srv.record(ctx, "Encrypt", ""); err != nil {
		return nil, err
	}
	ct, err := ciphertext.Seal(fakeKey, ciphertext.Header{GKID: req.GetGkid(), KeyVersion: 1}, "r", req.GetContext(), req.GetPlaintext())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &cofferv1.EncryptResponse{Ciphertext: ct, Gkid: req.GetGkid(), KeyVersion: 1}, nil
}

func (s *fakeCrypto) Decrypt(ctx context.Context, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	if err := s.srv.record(ctx, "Decrypt", ""); err != nil {
		return nil, err
	}
	h, err := ciphertext.ParseHeader(req.GetCiphertext())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	pt, err := ciphertext.Open(fakeKey, "r", req.GetContext(), req.GetCiphertext())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &cofferv1.DecryptResponse{Plaintext: pt, Gkid: h.GKID, KeyVersion: h.KeyVersion}, nil
}

// fakeClock is an injectable clock (Client.now).
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// eventually waits, up to testTimeout, for cond to hold.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
