package client

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"google.golang.org/grpc"

	"github.com/coffer-kms/coffer/msgsig"
)

// newSigning returns the interceptor that signs every request releasing
// key material or changing state with the key of the client certificate
// in tlsConf, and refuses every response carrying key material or a
// decision that a node of the cluster (a certificate from tlsConf's
// RootCAs, the node CA) did not sign for the request as sent
// (msgsig/FORMAT.md). There is no way to turn either off: a client whose
// certificate key cannot sign cannot make those calls.
func newSigning(tlsConf *tls.Config) (grpc.UnaryClientInterceptor, error) {
	var signer *msgsig.Signer
	if len(tlsConf.Certificates) > 0 {
		var err error
		if signer, err = msgsig.NewSigner(tlsConf.Certificates[0]); err != nil {
			return nil, fmt.Errorf("%w: the client certificate's key cannot sign requests: %w", ErrInvalidConfig, err)
		}
	}
	roots := tlsConf.RootCAs
	if roots == nil {
		var err error
		if roots, err = x509.SystemCertPool(); err != nil {
			return nil, fmt.Errorf("%w: no RootCAs to verify response signatures with: %w", ErrInvalidConfig, err)
		}
	}
	return msgsig.ClientInterceptor(signer, msgsig.NodeCertVerifier(roots)), nil
}
