package node

import (
	"bytes"
	"crypto/x509"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/escrow"
)

// TestNode_EscrowRecoveryWithoutKeystores creates a policy with an escrow
// key, generates keys under it, saves a snapshot through the API, stops every
// node and forgets the master key, then recovers the keys offline from the
// snapshot and from a data directory and compares them with what getkey
// returned.
func TestNode_EscrowRecoveryWithoutKeystores(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	officer, err := escrow.GenerateKey(3072)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&officer.PublicKey)
	cfg := client.DefaultConfig()
	for _, c := range tc.cfgs {
		cfg.Endpoints = append(cfg.Endpoints, c.APIAddr)
	}
	cfg.TLS = tc.clientTLS
	cl, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := ctxT(t)

	pol, err := cl.CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: "escrowed",
		EscrowKeys: []*cofferv1.EscrowKeyInfo{{PublicKey: pubDER, Label: "officer"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(pol.GetPolicy().GetEscrowKeys()) != 1 || pol.GetPolicy().GetEscrowKeys()[0].GetId() != escrow.KeyID(pubDER) {
		t.Fatalf("policy escrow keys: %+v", pol.GetPolicy().GetEscrowKeys())
	}
	if _, err := cl.CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: "escrowed"}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("duplicate policy: %v", err)
	}
	want := map[string][]byte{}
	for i := 0; i < 4; i++ {
		md, err := cl.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Policy: "escrowed", Resource: "vault"})
		if err != nil {
			t.Fatal(err)
		}
		g, err := cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: md.GetKey().GetGkid()})
		if err != nil {
			t.Fatal(err)
		}
		want[md.GetKey().GetGkid()] = g.GetMaterial()
	}
	imported := bytes.Repeat([]byte{0x5a}, 32)
	put, err := cl.PutKey(ctx, &cofferv1.PutKeyRequest{Policy: "escrowed", Resource: "vault", Material: imported})
	if err != nil {
		t.Fatal(err)
	}
	want[put.GetKey().GetGkid()] = imported
	// A key under a policy without escrow keys has no copy.
	plain, err := cl.GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: "plain"})
	if err != nil {
		t.Fatal(err)
	}

	var snap bytes.Buffer
	idx, err := cl.Snapshot(ctx, &snap)
	if err != nil || idx == 0 || snap.Len() == 0 {
		t.Fatalf("snapshot: index %d, %d bytes, %v", idx, snap.Len(), err)
	}
	for _, m := range want {
		if bytes.Contains(snap.Bytes(), m) {
			t.Fatal("snapshot holds plaintext key material")
		}
	}
	cl.Close()
	tc.stopAll()
	clear(tc.masterKey) // every keystore is gone

	check := func(name string, got []escrow.Recovered) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: recovered %d keys, want %d", name, len(got), len(want))
		}
		for _, r := range got {
			if !bytes.Equal(r.Material, want[r.GKID]) {
				t.Fatalf("%s: key %s recovered different material", name, r.GKID)
			}
			if r.Policy != "escrowed" || r.Resource != "vault" {
				t.Fatalf("%s: metadata %+v", name, r)
			}
		}
	}
	fromSnap, err := escrow.Recover(escrow.FromSnapshot(bytes.NewReader(snap.Bytes())), officer, nil)
	if err != nil {
		t.Fatal(err)
	}
	check("snapshot", fromSnap)
	fromDir, err := escrow.Recover(escrow.FromDataDir(tc.cfgs[1].DataDir), officer, nil)
	if err != nil {
		t.Fatal(err)
	}
	check("data dir", fromDir)
	if _, err := escrow.Recover(escrow.FromSnapshot(bytes.NewReader(snap.Bytes())), officer, []string{plain.GetKey().GetGkid()}); err == nil {
		t.Fatal("recovered a key that has no escrow copy")
	}
	other, _ := escrow.GenerateKey(3072)
	if got, err := escrow.Recover(escrow.FromSnapshot(bytes.NewReader(snap.Bytes())), other, nil); err != nil || len(got) != 0 {
		t.Fatalf("another officer's key recovered %d keys (%v)", len(got), err)
	}
}

func TestNode_PolicyErrors(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	weak := []byte("not a key")
	conn := tc.keys(tc.follower()) // make sure a connection exists
	_ = conn
	tc.mu.Lock()
	c := tc.conns[tc.cfgs[tc.follower()].APIAddr]
	tc.mu.Unlock()
	pc := cofferv1.NewPolicyServiceClient(c)
	ctx := ctxT(t)
	for name, req := range map[string]*cofferv1.CreatePolicyRequest{
		"bad name":       {Name: "Bad Name"},
		"bad escrow key": {Name: "p1", EscrowKeys: []*cofferv1.EscrowKeyInfo{{PublicKey: weak}}},
		"bad algorithm":  {Name: "p2", AllowedAlgorithms: []cofferv1.Algorithm{42}},
	} {
		if _, err := pc.CreatePolicy(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if _, err := pc.GetPolicy(ctx, &cofferv1.GetPolicyRequest{Name: "missing"}); status.Code(err) != codes.NotFound {
		t.Errorf("missing policy: %v", err)
	}
	// A policy restricted to AES-128 refuses other algorithms.
	if _, err := pc.CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: "small", AllowedAlgorithms: []cofferv1.Algorithm{cofferv1.Algorithm_ALGORITHM_AES_128}}); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.keys(0).GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Policy: "small", Resource: "r"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("disallowed algorithm: %v", err)
	}
	if _, err := tc.keys(0).GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Policy: "small", Resource: "r", Algorithm: cofferv1.Algorithm_ALGORITHM_AES_128}); err != nil {
		t.Errorf("allowed algorithm: %v", err)
	}
	list, err := pc.ListPolicies(ctx, &cofferv1.ListPoliciesRequest{})
	if err != nil || len(list.GetPolicies()) != 2 {
		t.Fatalf("list: %d policies, %v", len(list.GetPolicies()), err)
	}
}
