package client

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/msgsig"
	"github.com/coffer-kms/coffer/transport"
)

// The client signs what releases key material, and the node can check it
// against the certificate the client authenticated with.
func TestSigning_RequestsAreSigned(t *testing.T) {
	p := mustPKI(t)
	f := mustServer(t, p, "n1")
	var (
		mu  sync.Mutex
		err error
	)
	f.setFail(func(ctx context.Context, method string) error {
		if method != "GetKey" {
			return nil
		}
		sig, e := msgsig.RequestSignatureFrom(ctx)
		if e == nil && sig == nil {
			e = msgsig.ErrUnsigned
		}
		leaf, _, perr := transport.PeerFromContext(ctx)
		if e == nil {
			e = perr
		}
		if e == nil {
			// The fake seals nothing it was not asked to: check the
			// statement as a node would, against the request as sent.
			_, e = msgsig.VerifyStatement(sig.GetStatement(), sig.GetSignature(), leaf)
		}
		mu.Lock()
		err = e
		mu.Unlock()
		return nil
	})
	c := mustClient(t, p, func(cfg *Config) { cfg.DisableKeyCache = true }, f.addr)
	if _, e := c.GetKey(ctxTimeout(t), &cofferv1.GetKeyRequest{Gkid: "k1"}); e != nil {
		t.Fatal(e)
	}
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		t.Fatalf("the node's view of the request signature: %v", err)
	}
}

// Responses that carry key material must be signed by a node of the
// cluster: unsigned, or signed by a certificate from another CA, they are
// refused and nothing of them is returned.
func TestSigning_ResponsesMustBeSigned(t *testing.T) {
	p := mustPKI(t)
	unsigned := mustServerWith(t, p, "n1", func(_ testing.TB, serverTLS *tls.Config) []grpc.ServerOption {
		return transport.ServerOptions(serverTLS, transport.DefaultGRPCLimits())
	})
	rogue := mustPKI(t)
	forged := mustServerWith(t, p, "n2", func(t testing.TB, serverTLS *tls.Config) []grpc.ServerOption {
		// TLS with the cluster's node certificate; signatures with a node
		// certificate of another CA.
		conf := rogue.issue(t, transport.Identity{Kind: transport.KindNode, Name: "n2"})
		other, err := conf.ServerTLS()
		if err != nil {
			t.Fatal(err)
		}
		sign, err := msgsig.ResponseSigner(other.Certificates[0])
		if err != nil {
			t.Fatal(err)
		}
		return append(transport.ServerOptions(serverTLS, transport.DefaultGRPCLimits()), grpc.UnaryInterceptor(sign))
	})
	for name, c := range map[string]struct {
		f    *fakeServer
		want error
	}{"unsigned": {unsigned, msgsig.ErrUnsigned}, "signed by a stranger": {forged, msgsig.ErrBadSignature}} {
		t.Run(name, func(t *testing.T) {
			cl := mustClient(t, p, func(cfg *Config) { cfg.DisableKeyCache = true; cfg.MaxAttempts = 1 }, c.f.addr)
			resp, err := cl.GetKey(ctxTimeout(t), &cofferv1.GetKeyRequest{Gkid: "k1"})
			if !errors.Is(err, c.want) || resp != nil {
				t.Fatalf("GetKey = %v, %v; want %v", resp, err, c.want)
			}
			// A call that is not signed either way still works.
			if _, err := cl.DescribeKey(ctxTimeout(t), &cofferv1.DescribeKeyRequest{Gkid: "k1"}); err != nil {
				t.Fatalf("DescribeKey: %v", err)
			}
		})
	}
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}
