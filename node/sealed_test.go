package node

import (
	"bytes"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/keyseal"
)

// TestNode_SealedKeys: a get or a data key asked for with a SealTo comes
// back sealed to that key (both KEMs), opens only for the binding of that
// request and caller, and equals what a plain get returns; bad SealTos are
// refused before anything is decided.
func TestNode_SealedKeys(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	gen, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "seal/a"})
	if err != nil {
		t.Fatal(err)
	}
	key := gen.GetKey().GetGkid()
	plain, err := admin.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: key})
	if err != nil {
		t.Fatal(err)
	}
	for _, kem := range []uint16{keyseal.KEMX25519, keyseal.KEMMLKEM768X25519} {
		r, err := keyseal.NewRecipient(kem)
		if err != nil {
			t.Fatal(err)
		}
		rc := metadata.AppendToOutgoingContext(ctx, RequestIDKey, "sealed-get")
		resp, err := admin.keys[f].GetKey(rc, &cofferv1.GetKeyRequest{Gkid: key, SealTo: &cofferv1.SealTo{KemId: uint32(kem), PublicKey: r.PublicKey()}})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetMaterial()) != 0 || len(resp.GetSealedMaterial()) == 0 || bytes.Contains(resp.GetSealedMaterial(), plain.GetMaterial()) {
			t.Fatalf("kem %#x: material %d bytes, sealed %d bytes", kem, len(resp.GetMaterial()), len(resp.GetSealedMaterial()))
		}
		b := keyseal.Binding{Operation: "get", GKID: key, Version: 1, RequestID: "sealed-get", Client: "client:app"}
		got, err := r.Open(b, resp.GetSealedMaterial())
		if err != nil || !bytes.Equal(got, plain.GetMaterial()) {
			t.Fatalf("kem %#x: open: %v", kem, err)
		}
		b.RequestID = "another"
		if _, err := r.Open(b, resp.GetSealedMaterial()); err == nil {
			t.Fatalf("kem %#x: opened for another request id", kem)
		}
	}

	r, _ := keyseal.NewRecipient(keyseal.KEMX25519)
	st := &cofferv1.SealTo{KemId: uint32(keyseal.KEMX25519), PublicKey: r.PublicKey()}
	dc := metadata.AppendToOutgoingContext(ctx, RequestIDKey, "sealed-dk")
	dk, err := admin.crypto[l].GenerateDataKey(dc, &cofferv1.GenerateDataKeyRequest{Gkid: key, SealTo: st})
	if err != nil || len(dk.GetPlaintext()) != 0 || len(dk.GetSealedPlaintext()) == 0 {
		t.Fatalf("sealed data key: %v %v", dk, err)
	}
	opened, err := r.Open(keyseal.Binding{Operation: "datakey", GKID: key, Version: 1, RequestID: "sealed-dk", Client: "client:app"}, dk.GetSealedPlaintext())
	if err != nil {
		t.Fatal(err)
	}
	back, err := admin.crypto[f].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: dk.GetCiphertext()})
	if err != nil || !bytes.Equal(back.GetPlaintext(), opened) {
		t.Fatalf("the sealed data key is not the wrapped one: %v", err)
	}

	for name, c := range map[string]struct {
		st   *cofferv1.SealTo
		want string
	}{
		"unknown KEM":     {&cofferv1.SealTo{KemId: 0x10, PublicKey: r.PublicKey()}, "unsupported KEM"},
		"KEM id too big":  {&cofferv1.SealTo{KemId: 1 << 20, PublicKey: r.PublicKey()}, "not an HPKE KEM id"},
		"short key":       {&cofferv1.SealTo{KemId: uint32(keyseal.KEMX25519), PublicKey: []byte("short")}, "bad public key"},
		"hybrid key size": {&cofferv1.SealTo{KemId: uint32(keyseal.KEMMLKEM768X25519), PublicKey: r.PublicKey()}, "bad public key"},
	} {
		_, err := admin.keys[f].GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: key, SealTo: c.st})
		wantCode(t, name, err, codes.InvalidArgument, c.want)
	}
	_, err = admin.crypto[f].GenerateDataKey(ctx, &cofferv1.GenerateDataKeyRequest{Gkid: key, SealTo: st, WithoutPlaintext: true})
	wantCode(t, "sealed and without plaintext", err, codes.InvalidArgument, "without_plaintext asks for none")
	_, err = admin.crypto[f].GenerateDataKeyBatch(ctx, &cofferv1.GenerateDataKeyBatchRequest{Items: []*cofferv1.GenerateDataKeyRequest{{Gkid: key, SealTo: st}}})
	wantCode(t, "sealed batch item", err, codes.InvalidArgument, "seal_to goes on the batch")

	// A sealed batch: each item's data key bound to the item's request id.
	bc := metadata.AppendToOutgoingContext(ctx, RequestIDKey, "sealed-batch")
	batch, err := admin.crypto[f].GenerateDataKeyBatch(bc, &cofferv1.GenerateDataKeyBatchRequest{SealTo: st,
		Items: []*cofferv1.GenerateDataKeyRequest{{Gkid: key}, {Gkid: "k1-nosuchkey0-aaaaaaaaaaaaaaaaaaaaaaaaaa"}, {Gkid: key}}})
	if err != nil {
		t.Fatal(err)
	}
	for i, res := range batch.GetResults() {
		if i == 1 {
			if res.GetError() == nil {
				t.Fatal("the item of a key that does not exist was served")
			}
			continue
		}
		dk := res.GetResponse()
		if len(dk.GetPlaintext()) != 0 {
			t.Fatalf("item %d in the clear", i)
		}
		b := keyseal.Binding{Operation: "datakey", GKID: key, Version: 1, RequestID: fmt.Sprintf("sealed-batch#%d", i), Client: "client:app"}
		got, err := r.Open(b, dk.GetSealedPlaintext())
		if err != nil {
			t.Fatalf("item %d: %v", i, err)
		}
		back, err := admin.crypto[l].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: dk.GetCiphertext()})
		if err != nil || !bytes.Equal(back.GetPlaintext(), got) {
			t.Fatalf("item %d: the sealed data key is not the wrapped one: %v", i, err)
		}
	}
}
