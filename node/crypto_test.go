package node

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/ciphertext"
	"github.com/coffer-kms/coffer/fsm"
)

// TestNode_DataEncryptionService encrypts, decrypts and wraps data keys
// through every node: each operation needs its own grant on the key's
// resource, the key's use policy and an AES key; the context and the
// ciphertext bind; every call leaves one audit entry naming the operation,
// and no entry holds the plaintext, the context or a data key.
func TestNode_DataEncryptionService(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	gen := func(policy, resource string, alg cofferv1.Algorithm) string {
		t.Helper()
		r, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Policy: policy, Resource: resource, Algorithm: alg})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetKey().GetGkid()
	}
	aes := gen("", "crypto/a", cofferv1.Algorithm_ALGORITHM_AES_256)
	aes128 := gen("", "crypto/b", cofferv1.Algorithm_ALGORITHM_AES_128)
	hmacKey := gen("", "crypto/a", cofferv1.Algorithm_ALGORITHM_HMAC_SHA256)
	if _, err := admin.policy[l].CreatePolicy(ctx, &cofferv1.CreatePolicyRequest{Name: "decrypt-only",
		DefaultUsePolicy: &cofferv1.KeyUsePolicy{Operations: []string{"decrypt"}}}); err != nil {
		t.Fatal(err)
	}
	decryptOnly := gen("decrypt-only", "crypto/a", cofferv1.Algorithm_ALGORITHM_AES_256)
	enc := tc.ungrantedClient(admin, l, "enc")
	tc.mustGrant(admin, l, "client:enc", "crypto/**", "encrypt")
	dec := tc.ungrantedClient(admin, l, "dec")
	tc.mustGrant(admin, l, "client:dec", "crypto/**", "decrypt")

	plaintext := []byte("PLAINTEXT-MARKER: the data the service encrypts")
	bound := map[string]string{"tenant": "CONTEXT-MARKER-t1", "table": "orders"}
	var ids []string
	call := func(id string) context.Context {
		ids = append(ids, id)
		return metadata.AppendToOutgoingContext(ctx, RequestIDKey, id)
	}
	var cts [][]byte
	for _, i := range []int{l, f} {
		for _, key := range []string{aes, aes128} {
			r, err := enc.crypto[i].Encrypt(call("encrypt-"+key+"-"+tc.cfgs[i].ID), &cofferv1.EncryptRequest{Gkid: key, Plaintext: plaintext, Context: bound})
			if err != nil {
				t.Fatalf("encrypt on %s: %v", tc.cfgs[i].ID, err)
			}
			h, err := ciphertext.ParseHeader(r.GetCiphertext())
			if err != nil || h.GKID != key || h.KeyVersion != 1 || r.GetGkid() != key || r.GetKeyVersion() != 1 {
				t.Fatalf("ciphertext header %+v (%v), response %s v%d; want %s v1", h, err, r.GetGkid(), r.GetKeyVersion(), key)
			}
			if bytes.Contains(r.GetCiphertext(), plaintext) {
				t.Fatal("the ciphertext holds the plaintext")
			}
			cts = append(cts, r.GetCiphertext())
		}
	}
	for n, ct := range cts {
		for i := range tc.nodes {
			r, err := dec.crypto[i].Decrypt(call("decrypt-"+tc.cfgs[i].ID+"-"+string(rune('a'+n))), &cofferv1.DecryptRequest{Ciphertext: ct, Context: bound})
			if err != nil || !bytes.Equal(r.GetPlaintext(), plaintext) {
				t.Fatalf("decrypt on %s: %q, %v", tc.cfgs[i].ID, r.GetPlaintext(), err)
			}
		}
	}
	stale, err := dec.crypto[f].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: cts[0], Context: bound, Consistency: cofferv1.Consistency_CONSISTENCY_STALE})
	if err != nil || !bytes.Equal(stale.GetPlaintext(), plaintext) {
		t.Fatalf("stale decrypt: %v", err)
	}

	// Bindings and bad input.
	other := map[string]string{"tenant": "t2", "table": "orders"}
	_, err = dec.crypto[f].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: cts[0], Context: other})
	wantCode(t, "another context", err, codes.InvalidArgument, "does not decrypt under key "+aes)
	_, err = dec.crypto[f].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: cts[0]})
	wantCode(t, "no context", err, codes.InvalidArgument, "does not decrypt")
	altered := bytes.Clone(cts[0])
	altered[len(altered)-1] ^= 1
	_, err = dec.crypto[l].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: altered, Context: bound})
	wantCode(t, "altered ciphertext", err, codes.InvalidArgument, "does not decrypt")
	_, err = dec.crypto[l].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: []byte("not a ciphertext")})
	wantCode(t, "garbage", err, codes.InvalidArgument, "ciphertext")
	_, err = enc.crypto[f].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: aes, Plaintext: make([]byte, maxPlaintext+1)})
	wantCode(t, "plaintext too large", err, codes.InvalidArgument, "at most 65536")
	tooMany := map[string]string{}
	for i := range ciphertext.MaxContextPairs + 1 {
		tooMany[string(rune('a'+i))] = "v"
	}
	_, err = enc.crypto[f].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: aes, Plaintext: plaintext, Context: tooMany})
	wantCode(t, "context too large", err, codes.InvalidArgument, "context")
	_, err = enc.crypto[f].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: "nope", Plaintext: plaintext})
	wantCode(t, "bad gkid", err, codes.InvalidArgument, "")

	// Double access control: each operation its own grant.
	_, err = enc.crypto[f].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: cts[0], Context: bound})
	wantCode(t, "encrypt grant only", err, codes.PermissionDenied, "holds no grant for decrypt")
	_, err = dec.crypto[f].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: aes, Plaintext: plaintext})
	wantCode(t, "decrypt grant only", err, codes.PermissionDenied, "holds no grant for encrypt")
	_, err = enc.crypto[f].GenerateDataKey(ctx, &cofferv1.GenerateDataKeyRequest{Gkid: aes})
	wantCode(t, "no datakey grant", err, codes.PermissionDenied, "holds no grant for datakey")
	// The key's use policy and kind.
	_, err = enc.crypto[l].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: decryptOnly, Plaintext: plaintext})
	wantCode(t, "use policy", err, codes.PermissionDenied, "use policy")
	_, err = enc.crypto[l].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: hmacKey, Plaintext: plaintext})
	wantCode(t, "HMAC key", err, codes.FailedPrecondition, "needs an AES key")

	// Data keys.
	for _, c := range []struct {
		alg  cofferv1.Algorithm
		size int
	}{{cofferv1.Algorithm_ALGORITHM_UNSPECIFIED, 32}, {cofferv1.Algorithm_ALGORITHM_AES_128, 16}} {
		dk, err := admin.crypto[f].GenerateDataKey(call("datakey-"+c.alg.String()), &cofferv1.GenerateDataKeyRequest{Gkid: aes, Algorithm: c.alg, Context: bound})
		if err != nil || len(dk.GetPlaintext()) != c.size {
			t.Fatalf("data key %v: %d bytes, %v", c.alg, len(dk.GetPlaintext()), err)
		}
		back, err := dec.crypto[l].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: dk.GetCiphertext(), Context: bound})
		if err != nil || !bytes.Equal(back.GetPlaintext(), dk.GetPlaintext()) {
			t.Fatalf("unwrap the data key: %v", err)
		}
	}
	wrapped, err := admin.crypto[l].GenerateDataKey(ctx, &cofferv1.GenerateDataKeyRequest{Gkid: aes, WithoutPlaintext: true})
	if err != nil || len(wrapped.GetPlaintext()) != 0 || len(wrapped.GetCiphertext()) == 0 {
		t.Fatalf("without plaintext: %d plaintext bytes, %v", len(wrapped.GetPlaintext()), err)
	}
	_, err = admin.crypto[l].GenerateDataKey(ctx, &cofferv1.GenerateDataKeyRequest{Gkid: aes, Algorithm: cofferv1.Algorithm_ALGORITHM_HMAC_SHA256})
	wantCode(t, "HMAC data key", err, codes.InvalidArgument, "AES_128 or AES_256")

	// One audit entry per call, naming its operation and key; no secret in
	// any entry.
	byID := tc.entriesByRequestID(l, fsm.AuditFilter{})
	for _, id := range ids {
		es := byID[id]
		if len(es) != 1 {
			t.Fatalf("request %s has %d audit entries, want 1", id, len(es))
		}
		op := strings.SplitN(id, "-", 2)[0]
		if es[0].GetOperation() != op || es[0].GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED || es[0].GetGkid() == "" || es[0].GetResource() == "" {
			t.Errorf("request %s: entry %v", id, es[0])
		}
	}
	entries, _, err := tc.nodes[f].FSM().AuditEntries(0, 100000, fsm.AuditFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, _ := proto.Marshal(e)
		if bytes.Contains(b, []byte("PLAINTEXT-MARKER")) || bytes.Contains(b, []byte("CONTEXT-MARKER")) {
			t.Fatalf("audit entry %d holds the plaintext or the context: %v", e.GetSeq(), e)
		}
	}
}

// TestNode_DataEncryptionBatches sends batches through a follower: each item
// gets the result and the audit entry its single call would have, the
// items' ciphertexts decrypt in a batch, and a batch outside its bounds is
// refused whole, with one entry.
func TestNode_DataEncryptionBatches(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	gen := func(resource string) string {
		t.Helper()
		r, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: resource})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetKey().GetGkid()
	}
	mine, theirs := gen("batch/a"), gen("batch/b")
	app := tc.ungrantedClient(admin, l, "batcher")
	tc.mustGrant(admin, l, "client:batcher", "batch/a", "encrypt", "decrypt")
	withID := func(id string) context.Context { return metadata.AppendToOutgoingContext(ctx, RequestIDKey, id) }

	bound := map[string]string{"row": "1"}
	items := []*cofferv1.EncryptRequest{
		{Gkid: theirs, Plaintext: []byte("x")},                                                    // no grant on batch/b
		{Gkid: mine, Plaintext: make([]byte, maxPlaintext+1)},                                     // too large
		{Gkid: mine, Plaintext: []byte("x"), Consistency: cofferv1.Consistency_CONSISTENCY_STALE}, // own consistency
		{Gkid: "nope", Plaintext: []byte("x")},                                                    // not a GKID
	}
	const good = 60
	for i := range good {
		items = append(items, &cofferv1.EncryptRequest{Gkid: mine, Plaintext: []byte{byte(i)}, Context: bound})
	}
	resp, err := app.crypto[f].EncryptBatch(withID("batch-enc"), &cofferv1.EncryptBatchRequest{Items: items})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResults()) != len(items) {
		t.Fatalf("%d results for %d items", len(resp.GetResults()), len(items))
	}
	for i, want := range []struct {
		code codes.Code
		msg  string
	}{
		{codes.PermissionDenied, "holds no grant for encrypt"},
		{codes.InvalidArgument, "at most 65536"},
		{codes.InvalidArgument, "set it on the batch"},
		{codes.InvalidArgument, ""},
	} {
		e := resp.GetResults()[i].GetError()
		if codes.Code(e.GetCode()) != want.code || !strings.Contains(e.GetMessage(), want.msg) || resp.GetResults()[i].GetResponse() != nil {
			t.Errorf("item %d: %v, want %v %q", i, e, want.code, want.msg)
		}
	}
	dec := &cofferv1.DecryptBatchRequest{}
	for i, r := range resp.GetResults()[4:] {
		if r.GetError() != nil || r.GetResponse().GetGkid() != mine {
			t.Fatalf("item %d: %v", i+4, r.GetError())
		}
		dec.Items = append(dec.Items, &cofferv1.DecryptRequest{Ciphertext: r.GetResponse().GetCiphertext(), Context: bound})
	}
	altered := bytes.Clone(dec.Items[0].GetCiphertext())
	altered[len(altered)-1] ^= 1
	dec.Items = append(dec.Items, &cofferv1.DecryptRequest{Ciphertext: altered, Context: bound})
	for _, cons := range []cofferv1.Consistency{cofferv1.Consistency_CONSISTENCY_UNSPECIFIED, cofferv1.Consistency_CONSISTENCY_STALE} {
		dec.Consistency = cons
		out, err := app.crypto[f].DecryptBatch(withID("batch-dec-"+cons.String()), dec)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range out.GetResults()[:good] {
			if r.GetError() != nil || !bytes.Equal(r.GetResponse().GetPlaintext(), []byte{byte(i)}) {
				t.Fatalf("%v: decrypt item %d: %v", cons, i, r.GetError())
			}
		}
		if e := out.GetResults()[good].GetError(); codes.Code(e.GetCode()) != codes.InvalidArgument || !strings.Contains(e.GetMessage(), "does not decrypt") {
			t.Fatalf("%v: altered item: %v", cons, e)
		}
	}
	dks, err := admin.crypto[l].GenerateDataKeyBatch(ctx, &cofferv1.GenerateDataKeyBatchRequest{Items: []*cofferv1.GenerateDataKeyRequest{{Gkid: mine}, {Gkid: mine, Algorithm: cofferv1.Algorithm_ALGORITHM_AES_128}}})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range dks.GetResults() {
		back, err := admin.crypto[f].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: r.GetResponse().GetCiphertext()})
		if r.GetError() != nil || err != nil || !bytes.Equal(back.GetPlaintext(), r.GetResponse().GetPlaintext()) || len(back.GetPlaintext()) != []int{32, 16}[i] {
			t.Fatalf("data key %d: %v %v", i, r.GetError(), err)
		}
	}

	// Refused whole.
	_, err = app.crypto[f].EncryptBatch(withID("batch-empty"), &cofferv1.EncryptBatchRequest{})
	wantCode(t, "empty batch", err, codes.InvalidArgument, "1 to 1000 items")
	huge := &cofferv1.EncryptBatchRequest{}
	for range maxBatchItems + 1 {
		huge.Items = append(huge.Items, &cofferv1.EncryptRequest{Gkid: mine})
	}
	_, err = app.crypto[f].EncryptBatch(withID("batch-huge"), huge)
	wantCode(t, "1001 items", err, codes.InvalidArgument, "not 1001")

	// One entry per item (request id #index), none for the batch itself.
	byID := tc.entriesByRequestID(l, fsm.AuditFilter{})
	for i := range items {
		es := byID["batch-enc#"+strconv.Itoa(i)]
		if len(es) != 1 || es[0].GetOperation() != "encrypt" {
			t.Fatalf("item %d: entries %v", i, es)
		}
		want := cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED
		switch i {
		case 0:
			want = cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED
		case 1, 2, 3:
			want = cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED
		}
		if es[0].GetOutcome() != want {
			t.Errorf("item %d: outcome %v, want %v (%s)", i, es[0].GetOutcome(), want, es[0].GetReason())
		}
	}
	for _, id := range []string{"batch-enc", "batch-dec-CONSISTENCY_UNSPECIFIED", "batch-dec-CONSISTENCY_STALE"} {
		if es := byID[id]; len(es) != 0 {
			t.Errorf("batch %s has entries of its own: %v", id, es)
		}
	}
	if n := len(byID["batch-dec-CONSISTENCY_STALE#"+strconv.Itoa(good)]); n != 1 {
		t.Errorf("stale batch's altered item: %d entries", n)
	}
	for _, id := range []string{"batch-empty", "batch-huge"} {
		if es := byID[id]; len(es) != 1 || es[0].GetOutcome() != cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED {
			t.Errorf("refused batch %s: entries %v", id, es)
		}
	}
}

// TestNode_EncryptAndCustody creates a key and encrypts with it in one
// call through a follower: the ciphertext decrypts under the new key, a
// retry with the same request id gives the same key, and a caller without
// both grants gets nothing created.
func TestNode_EncryptAndCustody(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	app := tc.ungrantedClient(admin, l, "rows")
	tc.mustGrant(admin, l, "client:rows", "rows/**", "generate", "encrypt", "decrypt")
	half := tc.ungrantedClient(admin, l, "half")
	tc.mustGrant(admin, l, "client:half", "rows/**", "generate")

	pt := []byte("row 17: alice, 42")
	req := &cofferv1.EncryptNewRequest{RequestId: "row-17", Resource: "rows/17", Plaintext: pt, Context: map[string]string{"table": "people"}}
	first, err := app.crypto[f].EncryptNew(metadata.AppendToOutgoingContext(ctx, RequestIDKey, "ignored"), req)
	if err != nil {
		t.Fatal(err)
	}
	gk := first.GetKey().GetGkid()
	if h, err := ciphertext.ParseHeader(first.GetCiphertext()); err != nil || h.GKID != gk || first.GetKey().GetResource() != "rows/17" {
		t.Fatalf("ciphertext names %v (%v), key %v", h, err, first.GetKey())
	}
	again, err := app.crypto[l].EncryptNew(ctx, req)
	if err != nil || again.GetKey().GetGkid() != gk {
		t.Fatalf("retry: %v %v, want key %s", again, err, gk)
	}
	for _, ct := range [][]byte{first.GetCiphertext(), again.GetCiphertext()} {
		back, err := app.crypto[f].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: ct, Context: map[string]string{"table": "people"}})
		if err != nil || !bytes.Equal(back.GetPlaintext(), pt) {
			t.Fatalf("decrypt: %v", err)
		}
	}
	_, err = half.crypto[f].EncryptNew(ctx, &cofferv1.EncryptNewRequest{Resource: "rows/18", Plaintext: pt})
	wantCode(t, "generate grant only", err, codes.PermissionDenied, "encrypt")
	_, err = app.crypto[f].EncryptNew(ctx, &cofferv1.EncryptNewRequest{Resource: "rows/19", Plaintext: pt, Algorithm: cofferv1.Algorithm_ALGORITHM_HMAC_SHA256})
	wantCode(t, "HMAC key", err, codes.InvalidArgument, "creates an AES key")
	_, err = app.crypto[f].EncryptNew(ctx, &cofferv1.EncryptNewRequest{Resource: "rows/20", Plaintext: make([]byte, maxPlaintext+1)})
	wantCode(t, "too large", err, codes.InvalidArgument, "at most 65536")
	list, err := admin.keys[l].ListKeys(ctx, &cofferv1.ListKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, k := range list.GetKeys() {
		if strings.HasPrefix(k.GetResource(), "rows/") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d keys under rows/, want the one", n)
	}
	es := tc.entriesByRequestID(l, fsm.AuditFilter{})["row-17"]
	if len(es) != 2 || es[0].GetOperation() != "generate" || !strings.Contains(es[0].GetReason(), "encrypt-and-custody") {
		t.Fatalf("entries of row-17: %v", es)
	}
}

// TestNode_ReEncrypt moves a ciphertext to another key and context through
// a follower: the caller needs decrypt on the source and encrypt on the
// destination, and the request leaves one entry per key it used.
func TestNode_ReEncrypt(t *testing.T) {
	tc := mustCluster(t, 3, nil)
	ctx := ctxT(t)
	admin := tc.identity("app")
	l, f := tc.waitLeader(), tc.follower()
	gen := func(resource string) string {
		t.Helper()
		r, err := admin.keys[l].GenerateKey(ctx, &cofferv1.GenerateKeyRequest{Resource: resource})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetKey().GetGkid()
	}
	a, b := gen("move/a"), gen("move/b")
	mover := tc.ungrantedClient(admin, l, "mover")
	tc.mustGrant(admin, l, "client:mover", "move/a", "decrypt")
	tc.mustGrant(admin, l, "client:mover", "move/b", "encrypt")
	pt := []byte("moving day")
	enc, err := admin.crypto[l].Encrypt(ctx, &cofferv1.EncryptRequest{Gkid: a, Plaintext: pt, Context: map[string]string{"x": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	moved, err := mover.crypto[f].ReEncrypt(metadata.AppendToOutgoingContext(ctx, RequestIDKey, "move-1"), &cofferv1.ReEncryptRequest{
		Ciphertext: enc.GetCiphertext(), SourceContext: map[string]string{"x": "1"}, DestinationGkid: b, DestinationContext: map[string]string{"y": "2"}})
	if err != nil || moved.GetGkid() != b || moved.GetSourceGkid() != a {
		t.Fatalf("re-encrypt: %v %v", moved, err)
	}
	back, err := admin.crypto[f].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: moved.GetCiphertext(), Context: map[string]string{"y": "2"}})
	if err != nil || !bytes.Equal(back.GetPlaintext(), pt) || back.GetGkid() != b {
		t.Fatalf("decrypt the moved ciphertext: %v", err)
	}
	// The same key, the same context: a fresh ciphertext of the same text.
	again, err := admin.crypto[l].ReEncrypt(ctx, &cofferv1.ReEncryptRequest{Ciphertext: enc.GetCiphertext(), SourceContext: map[string]string{"x": "1"}})
	if err != nil || again.GetGkid() != a || bytes.Equal(again.GetCiphertext(), enc.GetCiphertext()) {
		t.Fatalf("re-encrypt under the same key: %v", err)
	}
	if back, err := admin.crypto[f].Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: again.GetCiphertext(), Context: map[string]string{"x": "1"}}); err != nil || !bytes.Equal(back.GetPlaintext(), pt) {
		t.Fatalf("decrypt the re-encrypted ciphertext: %v", err)
	}
	_, err = mover.crypto[f].ReEncrypt(metadata.AppendToOutgoingContext(ctx, RequestIDKey, "move-2"), &cofferv1.ReEncryptRequest{
		Ciphertext: enc.GetCiphertext(), SourceContext: map[string]string{"x": "1"}})
	wantCode(t, "no encrypt grant on the source key", err, codes.PermissionDenied, "holds no grant for encrypt")
	_, err = mover.crypto[f].ReEncrypt(ctx, &cofferv1.ReEncryptRequest{Ciphertext: enc.GetCiphertext(), DestinationGkid: b})
	wantCode(t, "wrong source context", err, codes.InvalidArgument, "does not decrypt")

	byID := tc.entriesByRequestID(l, fsm.AuditFilter{})
	for id, want := range map[string]cofferv1.AuditOutcome{
		"move-1#decrypt": cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, "move-1#encrypt": cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED,
		"move-2#decrypt": cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, "move-2#encrypt": cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED,
	} {
		if es := byID[id]; len(es) != 1 || es[0].GetOutcome() != want {
			t.Errorf("%s: entries %v, want one %v", id, es, want)
		}
	}
	if es := byID["move-1"]; len(es) != 0 {
		t.Errorf("the request itself has entries: %v", es)
	}
}
