package p11cred

import (
	"crypto/x509"
	"errors"
	"testing"
)

// FuzzDecodeChain: a certificate file is decoded without panicking, and
// either refused with ErrInvalidArgument or yields at least one block.
func FuzzDecodeChain(f *testing.F) {
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		chain, err := decodeChain(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("decodeChain error %v does not wrap ErrInvalidArgument", err)
			}
			return
		}
		if len(chain) == 0 {
			t.Fatal("decodeChain returned no certificate and no error")
		}
		_, _ = x509.ParseCertificate(chain[0])
	})
}
