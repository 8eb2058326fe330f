package p11cred_test

import (
	"log"

	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/p11cred"
	"github.com/coffer-kms/coffer/transport"
)

// A client whose certificate key is in a token: Go's TLS signs each
// handshake in the token, and the same key, as a crypto.Signer, is
// cfg.TLS.Certificates[0].PrivateKey. The cache file's key comes from
// cred.DeriveKey, whose signature is that of client.Config.CacheFileKey.
func Example() {
	cfg := p11cred.DefaultConfig() // PIN from COFFER_PKCS11_PIN
	cfg.Module = "/usr/lib/softhsm/libsofthsm2.so"
	cfg.TokenLabel = "app-token"
	cfg.KeyLabel = "app"
	cred, err := p11cred.Open(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer cred.Close() // after the client is closed
	pair, err := cred.Certificate()
	if err != nil {
		log.Fatal(err)
	}
	tlsConf, err := transport.TLSConfig{CAFile: "pki/node-ca.pem"}.ClientTLSWithCertificate(pair)
	if err != nil {
		log.Fatal(err)
	}
	ccfg := client.DefaultConfig()
	ccfg.Endpoints = []string{"127.0.0.1:7101"}
	ccfg.TLS = tlsConf
	ccfg.CacheFile = "/var/lib/app/coffer-cache" // kept only if the server's policy says persist
	ccfg.CacheFileKey = cred.DeriveKey
	c, err := client.New(ccfg)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}
