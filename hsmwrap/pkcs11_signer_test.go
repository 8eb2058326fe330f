package hsmwrap

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
)

func mustSigner(t testing.TB, p *PKCS11, label string) crypto.Signer {
	t.Helper()
	s, err := p.Signer(label)
	if err != nil {
		t.Fatalf("Signer(%q): %v", label, err)
	}
	return s
}

// mustECPublic returns the signer's public key, which must be ECDSA P-256.
func mustECPublic(t testing.TB, s crypto.Signer) *ecdsa.PublicKey {
	t.Helper()
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("Public() is a %T, want *ecdsa.PublicKey", s.Public())
	}
	if pub.Curve != elliptic.P256() {
		t.Fatalf("curve %s, want P-256", pub.Curve.Params().Name)
	}
	return pub
}

// mustSignVerify signs the SHA-256 of msg and checks the signature with
// crypto/ecdsa.
func mustSignVerify(t testing.TB, s crypto.Signer, msg string) []byte {
	t.Helper()
	digest := sha256.Sum256([]byte(msg))
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if !ecdsa.VerifyASN1(mustECPublic(t, s), digest[:], sig) {
		t.Fatalf("signature %x does not verify", sig)
	}
	return sig
}

// signKeyObjects returns the handles of the objects of class labelled as
// Signer(label) labels them, found on the keystore's object session.
func signKeyObjects(t testing.TB, p *PKCS11, class uint, label string) []pkcs11.ObjectHandle {
	t.Helper()
	p.opMu.RLock()
	defer p.opMu.RUnlock()
	hs, err := findObjects(p.ctx, p.ep.obj, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, signKeyLabelPrefix+label),
	}, 16)
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

// TestPKCS11Signer_SameLabelSameKey: the key pair is a persistent token
// object, found again by every keystore on the token, now and after a
// restart; another token has another key under the same label.
func TestPKCS11Signer_SameLabelSameKey(t *testing.T) {
	t.Parallel()
	cfg := mustToken(t).config()
	mustInitMasterKey(t, cfg)
	p1, p2 := mustOpenPKCS11(t, cfg), mustOpenPKCS11(t, cfg)
	pub1 := mustECPublic(t, mustSigner(t, p1, "audit/n1"))
	pub2 := mustECPublic(t, mustSigner(t, p2, "audit/n1"))
	if !pub1.Equal(pub2) {
		t.Fatal("two keystores on one token give different keys for one label")
	}
	if !mustECPublic(t, mustSigner(t, p1, "audit/n1")).Equal(pub1) {
		t.Fatal("asking again gives another key")
	}
	if n := len(signKeyObjects(t, p1, pkcs11.CKO_PRIVATE_KEY, "audit/n1")); n != 1 {
		t.Fatalf("%d private keys under the label, want 1", n)
	}
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p2.Close(); err != nil {
		t.Fatal(err)
	}
	p3 := mustOpenPKCS11(t, cfg)
	s3 := mustSigner(t, p3, "audit/n1")
	if !mustECPublic(t, s3).Equal(pub1) {
		t.Fatal("the key changed across a restart")
	}
	mustSignVerify(t, s3, "after a restart")

	other, _ := mustPKCS11(t)
	if mustECPublic(t, mustSigner(t, other, "audit/n1")).Equal(pub1) {
		t.Fatal("two tokens share a signing key")
	}
}

func TestPKCS11Signer_LabelsDiffer(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	a := mustECPublic(t, mustSigner(t, p, "audit/n1"))
	b := mustECPublic(t, mustSigner(t, p, "audit/n2"))
	c := mustECPublic(t, mustSigner(t, p, "audit/n1x"))
	if a.Equal(b) || a.Equal(c) || b.Equal(c) {
		t.Fatal("different labels give the same key")
	}
	// The node publishes the key in PKIX form.
	if _, err := x509.MarshalPKIXPublicKey(a); err != nil {
		t.Fatal(err)
	}
}

func TestPKCS11Signer_SignVerify(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	s := mustSigner(t, p, "audit/n1")
	pub := mustECPublic(t, s)
	for i := range 20 {
		sig := mustSignVerify(t, s, fmt.Sprintf("message %d", i))
		var rs struct{ R, S *big.Int }
		if rest, err := asn1.Unmarshal(sig, &rs); err != nil || len(rest) != 0 || rs.R.Sign() <= 0 || rs.S.Sign() <= 0 {
			t.Fatalf("signature %x is not a DER SEQUENCE of two positive INTEGERs: %v", sig, err)
		}
	}
	digest := sha256.Sum256([]byte("m"))
	s1, err := s.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(s1, s2) {
		t.Fatal("two ECDSA signatures of one digest are equal (no fresh nonce)")
	}
	other := sha256.Sum256([]byte("n"))
	if ecdsa.VerifyASN1(pub, other[:], s1) {
		t.Fatal("a signature verifies for another digest")
	}
	// A software key of the same shape verifies the same way: the format is
	// Go's own.
	swKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	swSig, err := swKey.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if ecdsa.VerifyASN1(pub, digest[:], swSig) {
		t.Fatal("another key's signature verifies")
	}
}

// TestPKCS11Signer_AuditCheckpoint signs a checkpoint as a node does and
// verifies it as an auditor does, with the public key alone.
func TestPKCS11Signer_AuditCheckpoint(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	s := mustSigner(t, p, "audit/n1")
	cp := &cofferv1.AuditCheckpoint{Seq: 42, Head: bytes.Repeat([]byte{0xab}, audit.HashLen), TimeUnixNano: time.Now().UnixNano(), Signer: "n1"}
	if err := audit.Sign(cp, s); err != nil {
		t.Fatalf("audit.Sign: %v", err)
	}
	trusted, err := audit.NewTrustedKeys(s.Public())
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.VerifyCheckpoint(cp, trusted); err != nil {
		t.Fatalf("VerifyCheckpoint: %v", err)
	}
	// Only with the key trusted, and only unchanged.
	other, err := audit.NewTrustedKeys(mustECPublic(t, mustSigner(t, p, "audit/n2")))
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.VerifyCheckpoint(cp, other); err == nil {
		t.Fatal("verified under another node's key")
	}
	cp.Seq++
	if err := audit.VerifyCheckpoint(cp, trusted); err == nil {
		t.Fatal("a changed checkpoint verified")
	}
}

// TestPKCS11Signer_SessionLoss loses every session (and so the login)
// behind the keystore's back between signatures: signing re-establishes
// like every other operation, with the same key.
func TestPKCS11Signer_SessionLoss(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	mustNewKEK(t, p, kekA)
	s := mustSigner(t, p, "audit/n1")
	pub := mustECPublic(t, s)
	gen := func() uint64 {
		p.opMu.RLock()
		defer p.opMu.RUnlock()
		return p.gen
	}
	for i := range 3 {
		before := gen()
		closeAllSessions(t, p)
		mustSignVerify(t, s, fmt.Sprintf("after loss %d", i))
		if gen() == before {
			t.Fatal("the loss went unnoticed: no new epoch")
		}
		if err := p.Healthy(); err != nil {
			t.Fatalf("Healthy after recovery = %v", err)
		}
	}
	// Logged out behind its back.
	p.opMu.RLock()
	err := p.ctx.Logout(p.ep.obj)
	p.opMu.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	mustSignVerify(t, s, "after logout")
	// Finding the key again after a loss.
	closeAllSessions(t, p)
	if !mustECPublic(t, mustSigner(t, p, "audit/n1")).Equal(pub) {
		t.Fatal("another key after a session loss")
	}
	// The rest of the keystore is intact.
	ct := mustSealWith(t, p, kekA, []byte("m"), nil)
	mustOpenWith(t, p, kekA, ct, nil)
}

// TestPKCS11Signer_KeyAttributes: the private key is a sensitive token
// object that was never extractable, cannot be read, wrapped, copied or
// changed, and can only sign; the public key can only verify.
func TestPKCS11Signer_KeyAttributes(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	mustSigner(t, p, "audit/n1")
	privs := signKeyObjects(t, p, pkcs11.CKO_PRIVATE_KEY, "audit/n1")
	pubs := signKeyObjects(t, p, pkcs11.CKO_PUBLIC_KEY, "audit/n1")
	if len(privs) != 1 || len(pubs) != 1 {
		t.Fatalf("%d private and %d public keys under the label, want 1 and 1", len(privs), len(pubs))
	}
	p.opMu.RLock()
	defer p.opMu.RUnlock()
	ctx, s := p.ctx, p.ep.obj
	bools := func(h pkcs11.ObjectHandle, want map[uint]bool, what string) {
		t.Helper()
		var q []*pkcs11.Attribute
		for typ := range want {
			q = append(q, pkcs11.NewAttribute(typ, nil))
		}
		attrs, err := ctx.GetAttributeValue(s, h, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range attrs {
			if got := len(a.Value) == 1 && a.Value[0] != 0; got != want[a.Type] {
				t.Errorf("%s attribute %#x = %v, want %v", what, a.Type, got, want[a.Type])
			}
		}
	}
	priv, pub := privs[0], pubs[0]
	bools(priv, map[uint]bool{
		pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_ALWAYS_SENSITIVE: true,
		pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_NEVER_EXTRACTABLE: true, pkcs11.CKA_SIGN: true,
		pkcs11.CKA_SIGN_RECOVER: false, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_UNWRAP: false, pkcs11.CKA_DERIVE: false,
		pkcs11.CKA_MODIFIABLE: false, pkcs11.CKA_COPYABLE: false,
	}, "private key")
	bools(pub, map[uint]bool{
		pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_VERIFY: true,
		pkcs11.CKA_ENCRYPT: false, pkcs11.CKA_WRAP: false, pkcs11.CKA_MODIFIABLE: false,
	}, "public key")

	_, err := ctx.GetAttributeValue(s, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if rvOf(err) != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
		t.Fatalf("reading the private key's CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
	}
	if err := ctx.SetAttributeValue(s, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)}); err == nil {
		t.Fatal("the private key could be made extractable")
	}
	if _, err := ctx.CopyObject(s, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)}); err == nil {
		t.Fatal("the private key could be copied")
	}
	wrapKey, err := ctx.CreateObject(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, make([]byte, 32)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.DestroyObject(s, wrapKey)
	if _, err := ctx.WrapKey(s, kwpMechanism, wrapKey, priv); err == nil {
		t.Fatal("the private key could be wrapped")
	}
	// Signing with anything but CKM_ECDSA is refused.
	if err := ctx.SignInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA_SHA256, nil)}, priv); err == nil {
		t.Fatal("the private key signs with CKM_ECDSA_SHA256")
	}
}

// TestPKCS11Signer_Duplicates: two key pairs under one label (keystores in
// two processes that each created one) resolve to the one with the smaller
// CKA_ID, every time.
func TestPKCS11Signer_Duplicates(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	label := signKeyLabelPrefix + "audit/n1"
	gen := func(id []byte) *ecdsa.PublicKey {
		t.Helper()
		p.opMu.RLock()
		defer p.opMu.RUnlock()
		pub, _, err := p.ctx.GenerateKeyPair(p.ep.obj,
			[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
			signPublicKeyTemplate(label, id), signPrivateKeyTemplate(label, id))
		if err != nil {
			t.Fatal(err)
		}
		k, err := ecPublicKey(p.ctx, p.ep.obj, label, pub)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	high := gen(bytes.Repeat([]byte{0xff}, signKeyIDLen))
	low := gen(bytes.Repeat([]byte{0x01}, signKeyIDLen))
	for range 2 {
		got := mustECPublic(t, mustSigner(t, p, "audit/n1"))
		if !got.Equal(low) || got.Equal(high) {
			t.Fatal("the key pair with the smaller CKA_ID was not chosen")
		}
	}
}

// TestPKCS11Signer_KeyRemoved: a signer whose key was removed from the token
// fails with ErrUnavailable rather than making a new key behind the public
// key already handed out; the keystore stays healthy, and asking again
// makes a new key.
func TestPKCS11Signer_KeyRemoved(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	s := mustSigner(t, p, "audit/n1")
	old := mustECPublic(t, s)
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		for _, h := range signKeyObjects(t, p, class, "audit/n1") {
			p.opMu.RLock()
			err := p.ctx.DestroyObject(p.ep.obj, h)
			p.opMu.RUnlock()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	digest := sha256.Sum256([]byte("m"))
	_, err := s.Sign(nil, digest[:], crypto.SHA256)
	wantErr(t, err, ErrUnavailable, "Sign with the key removed")
	if !strings.Contains(err.Error(), "audit/n1") {
		t.Errorf("error %q does not name the key", err)
	}
	if err := p.Healthy(); err != nil {
		t.Fatalf("Healthy = %v after a missing signing key", err)
	}
	fresh := mustSigner(t, p, "audit/n1")
	if mustECPublic(t, fresh).Equal(old) {
		t.Fatal("a removed key came back")
	}
	mustSignVerify(t, fresh, "new key")
}

func TestPKCS11Signer_InvalidArguments(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	for _, label := range []string{"", strings.Repeat("l", maxSignLabelLen+1), "bad\xffutf8"} {
		_, err := p.Signer(label)
		wantErr(t, err, ErrInvalidArgument, fmt.Sprintf("Signer(%q)", label))
	}
	mustSigner(t, p, strings.Repeat("l", maxSignLabelLen))
	s := mustSigner(t, p, "audit/n1")
	d32 := sha256.Sum256([]byte("m"))
	for name, c := range map[string]struct {
		digest []byte
		opts   crypto.SignerOpts
	}{
		"nil opts":       {d32[:], nil},
		"SHA-384":        {make([]byte, 48), crypto.SHA384},
		"no hash":        {d32[:], crypto.Hash(0)},
		"short digest":   {d32[:31], crypto.SHA256},
		"long digest":    {make([]byte, 33), crypto.SHA256},
		"SHA-256 as PSS": {d32[:], crypto.SHA512},
	} {
		_, err := s.Sign(nil, c.digest, c.opts)
		wantErr(t, err, ErrInvalidArgument, name)
	}
}

func TestPKCS11Signer_Closed(t *testing.T) {
	t.Parallel()
	cfg := mustToken(t).config()
	mustInitMasterKey(t, cfg)
	p, err := OpenPKCS11(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := mustSigner(t, p, "audit/n1")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = p.Signer("audit/n1")
	wantErr(t, err, ErrClosed, "Signer after Close")
	d := sha256.Sum256([]byte("m"))
	_, err = s.Sign(nil, d[:], crypto.SHA256)
	wantErr(t, err, ErrClosed, "Sign after Close")
}

// TestPKCS11Signer_Concurrent asks two keystores on one token for the same
// label from many goroutines at once and signs with every signer: one key
// pair, every signature valid. Run with -race.
func TestPKCS11Signer_Concurrent(t *testing.T) {
	t.Parallel()
	cfg := mustToken(t).config()
	mustInitMasterKey(t, cfg)
	ks := []*PKCS11{mustOpenPKCS11(t, cfg), mustOpenPKCS11(t, cfg)}
	mustNewKEK(t, ks[0], kekA)
	const workers = 12
	pubs := make([]*ecdsa.PublicKey, workers)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := ks[i%2]
			s, err := p.Signer("audit/shared")
			if err != nil {
				errs <- err
				return
			}
			pubs[i] = s.Public().(*ecdsa.PublicKey)
			for j := range 10 {
				d := sha256.Sum256([]byte(fmt.Sprintf("%d/%d", i, j)))
				sig, err := s.Sign(nil, d[:], crypto.SHA256)
				if err != nil {
					errs <- err
					return
				}
				if !ecdsa.VerifyASN1(pubs[i], d[:], sig) {
					errs <- fmt.Errorf("worker %d: bad signature", i)
					return
				}
				// Other operations on the same pool in between.
				if _, err := ks[0].Seal(kekA, []byte("m"), nil); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := 1; i < workers; i++ {
		if !pubs[i].Equal(pubs[0]) {
			t.Fatalf("worker %d got another key", i)
		}
	}
	if n := len(signKeyObjects(t, ks[0], pkcs11.CKO_PRIVATE_KEY, "audit/shared")); n != 1 {
		t.Fatalf("%d key pairs made for one label, want 1", n)
	}
}

func TestDecodeECPoint(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point, err := k.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	der, err := asn1.Marshal(point)
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string][]byte{"DER": der, "bare": point} {
		got, err := decodeECPoint(in)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !got.Equal(&k.PublicKey) {
			t.Fatalf("%s: decoded another key", name)
		}
	}
	bad := bytes.Clone(point)
	bad[len(bad)-1] ^= 1 // off the curve
	compressed := append([]byte{2 + point[len(point)-1]&1}, point[1:33]...)
	trailing := append(bytes.Clone(der), 0)
	for name, in := range map[string][]byte{
		"empty": nil, "off curve": bad, "compressed": compressed, "trailing data": trailing,
		"short DER": der[:len(der)-1], "DER around garbage": mustASN1(t, []byte("not a point")),
	} {
		if _, err := decodeECPoint(in); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func mustASN1(t testing.TB, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
