package escrow

import (
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"io"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// Recovered is one key recovered from its escrow copy.
type Recovered struct {
	GKID      string
	Policy    string
	Resource  string
	Algorithm cofferv1.Algorithm
	// Version is the key version the material is (1 for a key never
	// rotated).
	Version  uint32
	Material []byte
}

// Source yields the key records to recover from.
type Source func(fn func(*cofferv1.KeyRecord) error) error

// FromSnapshot reads records from a snapshot stream (`coffer snapshot save`).
func FromSnapshot(r io.Reader) Source {
	return func(fn func(*cofferv1.KeyRecord) error) error { return fsm.ForEachKeyRecordInSnapshot(r, fn) }
}

// FromDataDir reads records from a stopped node's data directory.
func FromDataDir(dir string) Source {
	return func(fn func(*cofferv1.KeyRecord) error) error { return fsm.ForEachKeyRecordInDir(dir, fn) }
}

// Recover decrypts the escrow copies made for priv. With gkids empty it
// recovers every key that has a copy for priv; otherwise exactly the named
// keys, and a named key without such a copy is an error.
func Recover(src Source, priv *rsa.PrivateKey, gkids []string) ([]Recovered, error) {
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return nil, err
	}
	id := KeyID(der)
	want := map[string]bool{}
	for _, g := range gkids {
		want[g] = true
	}
	var out []Recovered
	found := map[string]bool{}
	err = src(func(rec *cofferv1.KeyRecord) error {
		if len(want) > 0 && !want[rec.GetGkid()] {
			return nil
		}
		// Every version that still has copies: the older ones, then the
		// newest.
		copies := map[uint32][]*cofferv1.EscrowCopy{}
		var versions []uint32
		for _, v := range rec.GetVersions() {
			copies[v.GetVersion()] = v.GetEscrow()
			versions = append(versions, v.GetVersion())
		}
		newest := authz.NewestVersion(rec)
		copies[newest] = rec.GetEscrow()
		versions = append(versions, newest)
		for _, v := range versions {
			for _, c := range copies[v] {
				if c.GetKeyId() != id || c.GetScheme() != Scheme {
					continue
				}
				m, err := Decrypt(priv, rec.GetGkid(), c.GetCiphertext())
				if err != nil {
					return fmt.Errorf("key %s version %d: %w", rec.GetGkid(), v, err)
				}
				out = append(out, Recovered{GKID: rec.GetGkid(), Policy: rec.GetPolicy(), Resource: rec.GetResource(),
					Algorithm: rec.GetAlgorithm(), Version: v, Material: m})
				found[rec.GetGkid()] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for g := range want {
		if !found[g] {
			return nil, fmt.Errorf("%w: %s (escrow key %s…)", ErrNoCopy, g, id[:16])
		}
	}
	return out, nil
}
