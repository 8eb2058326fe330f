package testenv

import (
	"crypto/tls"
	"testing"

	"google.golang.org/grpc"

	"github.com/coffer-kms/coffer/msgsig"
	"github.com/coffer-kms/coffer/transport"
)

// ServerOptions are the options of an in-process stand-in for a node:
// transport.ServerOptions with the default limits, and the node's response
// signatures (msgsig), which clients require, made with serverTLS's
// certificate.
func ServerOptions(t testing.TB, serverTLS *tls.Config) []grpc.ServerOption {
	t.Helper()
	sign, err := msgsig.ResponseSigner(serverTLS.Certificates[0])
	if err != nil {
		t.Fatalf("response signer: %v", err)
	}
	return append(transport.ServerOptions(serverTLS, transport.DefaultGRPCLimits()), grpc.UnaryInterceptor(sign))
}

// Signing is the dial option of a test that calls nodes through raw gRPC
// stubs as the client library would: its requests signed with the key of
// tlsConf's certificate, the responses that must be signed verified
// against tlsConf's RootCAs.
func Signing(t testing.TB, tlsConf *tls.Config) grpc.DialOption {
	t.Helper()
	var signer *msgsig.Signer
	if len(tlsConf.Certificates) > 0 {
		var err error
		if signer, err = msgsig.NewSigner(tlsConf.Certificates[0]); err != nil {
			t.Fatalf("request signer: %v", err)
		}
	}
	return grpc.WithChainUnaryInterceptor(msgsig.ClientInterceptor(signer, msgsig.NodeCertVerifier(tlsConf.RootCAs)))
}
