package escrow

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzReadPrivateKey feeds arbitrary files to the escrow key reader (an
// officer's key file may be damaged): it must never panic and must return
// an error for anything that is not a valid key.
func FuzzReadPrivateKey(f *testing.F) {
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), []byte(""))
	f.Add([]byte("-----BEGIN COFFER ENCRYPTED PRIVATE KEY-----\nKDF: argon2id\nParams: t=1,m=8,p=1\n\nAAAA\n-----END COFFER ENCRYPTED PRIVATE KEY-----\n"), []byte("pw"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data, pass []byte) {
		p := filepath.Join(dir, "k")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := ReadPrivateKey(p, pass)
		if err == nil && (k == nil || k.N.BitLen() < MinBits) {
			t.Fatalf("accepted a weak or nil key")
		}
	})
}
