package client

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/metadata"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/keyseal"
)

// TestSealedGet: GetKey asks for the material sealed to a fresh key of the
// call (X25519 by default, the hybrid KEM if configured) and opens it; a
// node answering in the clear, or sealing for another request, is refused;
// PlainKeys asks for the material in the clear.
func TestSealedGet(t *testing.T) {
	p := mustPKI(t)
	srv := mustServer(t, p, "n1")
	ctx := testCtx(t)
	for _, kem := range []uint16{0, keyseal.KEMMLKEM768X25519} {
		c := mustClient(t, p, func(c *Config) { c.SealKEM, c.DisableKeyCache = kem, true }, srv.addr)
		resp, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"})
		if err != nil || len(resp.GetMaterial()) != 32 || len(resp.GetSealedMaterial()) != 0 {
			t.Fatalf("kem %#x: sealed get: %v %v", kem, resp, err)
		}
	}
	c := mustClient(t, p, func(c *Config) { c.DisableKeyCache = true }, srv.addr)
	srv.mu.Lock()
	srv.sealFor = func(ctx context.Context) context.Context {
		md, _ := metadata.FromIncomingContext(ctx)
		md = md.Copy()
		md.Set(RequestIDKey, "someone-else")
		return metadata.NewIncomingContext(ctx, md)
	}
	srv.mu.Unlock()
	if _, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); !errors.Is(err, keyseal.ErrOpen) {
		t.Fatalf("sealed for another request: %v, want keyseal.ErrOpen", err)
	}
	srv.mu.Lock()
	srv.sealFor, srv.unsealed = nil, true
	srv.mu.Unlock()
	if _, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); !errors.Is(err, ErrNotSealed) {
		t.Fatalf("answered in the clear: %v, want ErrNotSealed", err)
	}
	plain := mustClient(t, p, func(c *Config) { c.PlainKeys, c.DisableKeyCache = true, true }, srv.addr)
	if resp, err := plain.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: "g"}); err != nil || len(resp.GetMaterial()) != 32 {
		t.Fatalf("PlainKeys: %v %v", resp, err)
	}
	if _, err := New(Config{Endpoints: []string{srv.addr}, TLS: p.clientTLS, RequestTimeout: 1, RetryDeadline: 1, SealKEM: 0x10}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("SealKEM 0x10: %v", err)
	}
}
