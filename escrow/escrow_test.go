package escrow

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

var testKey *rsa.PrivateKey

func mustKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	if testKey == nil {
		k, err := GenerateKey(3072)
		if err != nil {
			t.Fatal(err)
		}
		testKey = k
	}
	return testKey
}

func TestEncryptDecryptBoundToGKID(t *testing.T) {
	k := mustKey(t)
	m := bytes.Repeat([]byte{7}, 32)
	ct, err := Encrypt(&k.PublicKey, "k1-a", m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decrypt(k, "k1-a", ct)
	if err != nil || !bytes.Equal(got, m) {
		t.Fatalf("decrypt: %v", err)
	}
	if _, err := Decrypt(k, "k1-b", ct); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("copy moved to another gkid decrypted: %v", err)
	}
	ct[10] ^= 1
	if _, err := Decrypt(k, "k1-a", ct); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("tampered copy decrypted: %v", err)
	}
}

func TestKeyFiles(t *testing.T) {
	k := mustKey(t)
	dir := t.TempDir()
	for _, pass := range [][]byte{nil, []byte("correct horse")} {
		prefix := filepath.Join(dir, "officer"+string(pass))
		pub, keyPath, err := WriteKeyPair(prefix, k, pass)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(keyPath)
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("key file mode %v", st.Mode().Perm())
		}
		der, err := ReadPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if !bytes.Equal(der, want) || KeyID(der) != KeyID(want) {
			t.Fatal("public key round trip")
		}
		got, err := ReadPrivateKey(keyPath, pass)
		if err != nil || !got.Equal(k) {
			t.Fatalf("private key round trip: %v", err)
		}
		if _, _, err := WriteKeyPair(prefix, k, pass); !errors.Is(err, ErrExists) {
			t.Fatalf("overwrote: %v", err)
		}
		if pass != nil {
			if _, err := ReadPrivateKey(keyPath, []byte("wrong")); !errors.Is(err, ErrPassphrase) {
				t.Fatalf("wrong passphrase: %v", err)
			}
			if _, err := ReadPrivateKey(keyPath, nil); !errors.Is(err, ErrPassphrase) {
				t.Fatalf("missing passphrase: %v", err)
			}
			raw, _ := os.ReadFile(keyPath)
			if bytes.Contains(raw, []byte("PRIVATE KEY-----\nMII")) {
				t.Fatal("encrypted key file holds a plain PKCS#8 block")
			}
		}
	}
}

func TestWeakKeysRefused(t *testing.T) {
	if _, err := GenerateKey(2048); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("2048-bit key generated: %v", err)
	}
	small, err := rsa.GenerateKey(randReader{}, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	if _, err := ParsePublicKey(der); !errors.Is(err, ErrWeakKey) {
		t.Fatalf("2048-bit escrow key accepted: %v", err)
	}
	if _, err := ParsePublicKey([]byte("junk")); !errors.Is(err, ErrBadKey) {
		t.Fatalf("junk accepted: %v", err)
	}
}
