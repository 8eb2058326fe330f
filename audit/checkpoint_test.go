package audit

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"google.golang.org/protobuf/proto"
)

func TestCheckpoint_SignVerify(t *testing.T) {
	for _, tc := range []struct {
		name   string
		signer crypto.Signer
	}{
		{"ecdsa-p256", mustECDSA(t)},
		{"ed25519", mustEd25519(t, 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trusted := mustTrusted(t, tc.signer)
			cp := signedCheckpoint(t, 42, bytes.Repeat([]byte{9}, HashLen), namedSigner{"node-1", tc.signer})
			if err := VerifyCheckpoint(cp, trusted); err != nil {
				t.Fatalf("verify: %v", err)
			}
			der, _ := x509.MarshalPKIXPublicKey(tc.signer.Public())
			if !bytes.Equal(cp.PublicKey, der) {
				t.Fatal("public_key is not the signer's PKIX DER key")
			}

			// Any change to a signed field breaks the signature.
			alter := map[string]func(*cofferv1.AuditCheckpoint){
				"seq":       func(c *cofferv1.AuditCheckpoint) { c.Seq++ },
				"head":      func(c *cofferv1.AuditCheckpoint) { c.Head[0] ^= 1 },
				"time":      func(c *cofferv1.AuditCheckpoint) { c.TimeUnixNano++ },
				"signer":    func(c *cofferv1.AuditCheckpoint) { c.Signer = "node-2" },
				"signature": func(c *cofferv1.AuditCheckpoint) { c.Signature[len(c.Signature)-1] ^= 1 },
			}
			for field, f := range alter {
				c := proto.Clone(cp).(*cofferv1.AuditCheckpoint)
				f(c)
				if err := VerifyCheckpoint(c, trusted); !errors.Is(err, ErrBadSignature) {
					t.Errorf("altered %s: got %v, want ErrBadSignature", field, err)
				}
			}

			// A key outside the set.
			other := mustTrusted(t, mustEd25519(t, 99))
			if err := VerifyCheckpoint(cp, other); !errors.Is(err, ErrUntrustedKey) {
				t.Fatalf("untrusted: got %v", err)
			}
			if err := VerifyCheckpoint(cp, TrustedKeys{}); !errors.Is(err, ErrUntrustedKey) {
				t.Fatalf("empty set: got %v", err)
			}
		})
	}
}

// The ECDSA signature is standard ECDSA-with-SHA256 over the digest's
// pre-image, as DESIGN.md tells an independent verifier.
func TestCheckpoint_ECDSAIsSHA256OverPreimage(t *testing.T) {
	k := mustECDSA(t)
	cp := signedCheckpoint(t, 5, bytes.Repeat([]byte{1}, HashLen), namedSigner{"n", k})
	pre := checkpointPreimage(cp)
	sum := sha256.Sum256(pre)
	if !bytes.Equal(sum[:], CheckpointDigest(cp)) {
		t.Fatal("digest is not SHA-256 of the documented pre-image")
	}
	if !ecdsa.VerifyASN1(&k.(*ecdsa.PrivateKey).PublicKey, sum[:], cp.Signature) {
		t.Fatal("signature does not verify as ECDSA-SHA256")
	}
}

// checkpointPreimage spells the documented layout out by hand.
func checkpointPreimage(cp *cofferv1.AuditCheckpoint) []byte {
	var b bytes.Buffer
	b.WriteString("coffer-audit-checkpoint-v1\x00")
	u64 := func(tag byte, v uint64) {
		b.WriteByte(tag)
		for i := 7; i >= 0; i-- {
			b.WriteByte(byte(v >> (8 * i)))
		}
	}
	lv := func(tag byte, v []byte) {
		b.WriteByte(tag)
		n := uint32(len(v))
		b.Write([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
		b.Write(v)
	}
	u64(1, cp.Seq)
	lv(2, cp.Head)
	u64(3, uint64(cp.TimeUnixNano))
	lv(4, []byte(cp.Signer))
	lv(6, cp.PublicKey)
	return b.Bytes()
}

func TestCheckpoint_SignRefuses(t *testing.T) {
	good := func() *cofferv1.AuditCheckpoint {
		return &cofferv1.AuditCheckpoint{Seq: 1, Head: GenesisHash(), Signer: "n"}
	}
	rk, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if err := Sign(good(), rk); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("RSA: %v", err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err := Sign(good(), p384); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("P-384: %v", err)
	}
	if err := Sign(good(), wrongKeySigner{mustEd25519(t, 1), mustEd25519(t, 2)}); !errors.Is(err, ErrBadSignature) {
		t.Errorf("signer with mismatched key: %v", err)
	}
	for name, cp := range map[string]*cofferv1.AuditCheckpoint{
		"seq 0":      {Head: GenesisHash(), Signer: "n"},
		"short head": {Seq: 1, Head: []byte{1}, Signer: "n"},
		"no signer":  {Seq: 1, Head: GenesisHash()},
	} {
		if err := Sign(cp, mustEd25519(t, 1)); !errors.Is(err, ErrInvalidCheckpoint) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// wrongKeySigner claims one public key and signs with another.
type wrongKeySigner struct{ claimed, actual crypto.Signer }

func (w wrongKeySigner) Public() crypto.PublicKey { return w.claimed.Public() }
func (w wrongKeySigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	return w.actual.Sign(r, d, o)
}

func TestTrustedKeys_LoadPEM(t *testing.T) {
	dir := t.TempDir()
	ec, ed := mustECDSA(t), mustEd25519(t, 3)
	pemEC, err := MarshalPublicKeyPEM(ec.Public())
	if err != nil {
		t.Fatal(err)
	}
	pemED, err := MarshalPublicKeyPEM(ed.Public())
	if err != nil {
		t.Fatal(err)
	}
	both := filepath.Join(dir, "both.pem")
	one := filepath.Join(dir, "one.pem")
	os.WriteFile(both, append(pemEC, pemED...), 0o600)
	os.WriteFile(one, pemED, 0o600)
	tk, err := LoadTrustedKeys(both, one)
	if err != nil {
		t.Fatal(err)
	}
	if tk.Len() != 2 {
		t.Fatalf("%d keys, want 2", tk.Len())
	}
	for _, s := range []crypto.Signer{ec, ed} {
		cp := signedCheckpoint(t, 1, GenesisHash(), namedSigner{"n", s})
		if err := VerifyCheckpoint(cp, tk); err != nil {
			t.Fatal(err)
		}
		if !tk.Contains(cp.PublicKey) {
			t.Fatal("Contains")
		}
	}
	if len(tk.PKIX()) != 2 {
		t.Fatal("PKIX")
	}

	priv := filepath.Join(dir, "priv.pem")
	der, _ := x509.MarshalPKCS8PrivateKey(ed)
	os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	if _, err := LoadTrustedKeys(priv); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("private key file: %v", err)
	}
	empty := filepath.Join(dir, "empty.pem")
	os.WriteFile(empty, []byte("nothing here\n"), 0o600)
	if _, err := LoadTrustedKeys(empty); !errors.Is(err, ErrNoTrustedKeys) {
		t.Errorf("empty file: %v", err)
	}
	if _, err := LoadTrustedKeys(); !errors.Is(err, ErrNoTrustedKeys) {
		t.Errorf("no files: %v", err)
	}
	if _, err := LoadTrustedKeys(filepath.Join(dir, "missing.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsaDER, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	var t2 TrustedKeys
	if err := t2.AddPKIX(rsaDER); !errors.Is(err, ErrUnsupportedKey) {
		t.Errorf("RSA key: %v", err)
	}
}

func TestCheckpoint_ValidateLimits(t *testing.T) {
	cp := signedCheckpoint(t, 1, GenesisHash(), namedSigner{"n", mustEd25519(t, 1)})
	for name, f := range map[string]func(*cofferv1.AuditCheckpoint){
		"no signature":   func(c *cofferv1.AuditCheckpoint) { c.Signature = nil },
		"long signature": func(c *cofferv1.AuditCheckpoint) { c.Signature = make([]byte, MaxSignatureLen+1) },
		"no key":         func(c *cofferv1.AuditCheckpoint) { c.PublicKey = nil },
		"long key":       func(c *cofferv1.AuditCheckpoint) { c.PublicKey = make([]byte, MaxPublicKeyLen+1) },
		"long signer":    func(c *cofferv1.AuditCheckpoint) { c.Signer = string(make([]byte, MaxFieldLen+1)) },
	} {
		c := proto.Clone(cp).(*cofferv1.AuditCheckpoint)
		f(c)
		if err := ValidateCheckpoint(c); !errors.Is(err, ErrInvalidCheckpoint) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestPruneMarker(t *testing.T) {
	signer := mustEd25519(t, 1)
	trusted := mustTrusted(t, signer)
	head := bytes.Repeat([]byte{5}, HashLen)
	cp := signedCheckpoint(t, 300, head, namedSigner{"node-1", signer})
	m, err := NewPruneMarker(cp)
	if err != nil {
		t.Fatal(err)
	}
	if m.FirstSeq != 301 || !bytes.Equal(m.PrevHash, head) || !proto.Equal(m.Checkpoint, cp) {
		t.Fatalf("marker %v", m)
	}
	if err := VerifyMarker(m, trusted); err != nil {
		t.Fatal(err)
	}
	m.PrevHash[0] ^= 1
	if err := VerifyMarker(m, trusted); !errors.Is(err, ErrInvalidMarker) {
		t.Fatalf("wrong prev_hash: %v", err)
	}
	if cp.Head[0] != 5 {
		t.Fatal("marker aliases the checkpoint")
	}
	m, _ = NewPruneMarker(cp)
	m.FirstSeq = 300
	if err := VerifyMarker(m, trusted); !errors.Is(err, ErrInvalidMarker) {
		t.Fatalf("wrong first_seq: %v", err)
	}
	if _, err := NewPruneMarker(&cofferv1.AuditCheckpoint{Seq: 1}); !errors.Is(err, ErrInvalidCheckpoint) {
		t.Fatalf("invalid checkpoint: %v", err)
	}
}
