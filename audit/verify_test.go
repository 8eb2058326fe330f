package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"google.golang.org/protobuf/proto"
)

// chainFixture is a 1,000-entry chain with a checkpoint every 100 entries,
// each applied 3 entries after the entry it covers (as when entries are
// applied while the leader's checkpoint proposal is in flight), signed in
// turn by an Ed25519 and an ECDSA P-256 node key.
type chainFixture struct {
	items   []Item
	entries []*cofferv1.AuditEntry
	lines   []string
	trusted TrustedKeys
	signers []namedSigner
}

func newChainFixture(t *testing.T) *chainFixture {
	t.Helper()
	signers := []namedSigner{{"node-1", mustEd25519(t, 1)}, {"node-2", mustECDSA(t)}}
	items, entries := buildChain(t, chainSpec{n: 1000, every: 100, lag: 3, signers: signers})
	return &chainFixture{
		items:   items,
		entries: entries,
		lines:   exportLines(t, items),
		trusted: mustTrusted(t, signers[0].signer, signers[1].signer),
		signers: signers,
	}
}

// entryLine returns the index in lines of entry seq.
func (f *chainFixture) entryLine(t *testing.T, seq uint64) int {
	t.Helper()
	for i, it := range f.items {
		if it.Entry != nil && it.Entry.Seq == seq {
			return i
		}
	}
	t.Fatalf("no entry %d", seq)
	return -1
}

func (f *chainFixture) checkpointLine(t *testing.T, seq uint64) int {
	t.Helper()
	for i, it := range f.items {
		if it.Checkpoint != nil && it.Checkpoint.Seq == seq {
			return i
		}
	}
	t.Fatalf("no checkpoint %d", seq)
	return -1
}

func (f *chainFixture) copyLines() []string { return append([]string(nil), f.lines...) }

func verifyLines(t *testing.T, lines []string, trusted TrustedKeys, opts VerifyOptions) (Report, error) {
	t.Helper()
	return VerifyJSONL(strings.NewReader(joinLines(lines)), trusted, opts)
}

func wantVerifyError(t *testing.T, err error, seq uint64, kind string) *VerifyError {
	t.Helper()
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a VerifyError %s at %d", err, kind, seq)
	}
	if ve.Seq != seq || ve.Kind != kind {
		t.Fatalf("got %v, want %s at %d", ve, kind, seq)
	}
	if !errors.Is(err, ErrChain) {
		t.Fatalf("%v does not wrap ErrChain", err)
	}
	return ve
}

// editJSON changes one field of a JSON line.
func editJSON(t *testing.T, line, field string, value any) string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	m[field] = value
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestVerifier_CleanChain(t *testing.T) {
	f := newChainFixture(t)
	for _, strict := range []bool{false, true} {
		rep, err := verifyLines(t, f.lines, f.trusted, VerifyOptions{StrictTail: strict})
		if err != nil {
			t.Fatalf("strict=%v: %v", strict, err)
		}
		if rep.Entries != 1000 || rep.FirstSeq != 1 || rep.LastSeq != 1000 || rep.Checkpoints != 10 ||
			rep.CoveredSeq != 1000 || rep.Uncovered != 0 || rep.PrunedBefore != 0 || len(rep.Signers) != 2 {
			t.Fatalf("report %+v", rep)
		}
		if !bytes.Equal(rep.Head, f.entries[999].Hash) {
			t.Fatal("head")
		}
	}

	// The same items fed directly give the same result.
	v, err := NewVerifier(f.trusted, DefaultVerifyOptions())
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range f.items {
		if err := v.Add(it); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := v.Finish(); err != nil {
		t.Fatal(err)
	}
	if err := v.AddEntry(f.entries[0]); err == nil {
		t.Fatal("AddEntry after Finish succeeded")
	}
}

func TestVerifier_RoundTripKeepsHashes(t *testing.T) {
	f := newChainFixture(t)
	r := NewReader(strings.NewReader(joinLines(f.lines)))
	for i := 0; ; i++ {
		it, err := r.Next()
		if err != nil {
			if i != len(f.items) {
				t.Fatalf("read %d items of %d: %v", i, len(f.items), err)
			}
			break
		}
		want := f.items[i]
		switch {
		case it.Entry != nil:
			if !proto.Equal(it.Entry, want.Entry) || !bytes.Equal(ChainHash(it.Entry), want.Entry.Hash) {
				t.Fatalf("line %d: entry differs after the round trip", it.Line)
			}
		case it.Checkpoint != nil:
			if !proto.Equal(it.Checkpoint, want.Checkpoint) {
				t.Fatalf("line %d: checkpoint differs", it.Line)
			}
		}
		if it.Line != i+1 {
			t.Fatalf("line number %d, want %d", it.Line, i+1)
		}
	}
}

func TestVerifier_EditedEntry(t *testing.T) {
	f := newChainFixture(t)

	// An edited field: the hash no longer recomputes.
	lines := f.copyLines()
	i := f.entryLine(t, 500)
	lines[i] = editJSON(t, lines[i], "operation", "delete")
	_, err := verifyLines(t, lines, f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 500, KindBadHash)

	// The time shown to people and the hashed time must agree.
	lines = f.copyLines()
	lines[i] = editJSON(t, lines[i], "time", "2020-01-01T00:00:00.000000000Z")
	if _, err := verifyLines(t, lines, f.trusted, VerifyOptions{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("edited display time: %v", err)
	}

	// Edited and rehashed: the next entry's link breaks.
	e := proto.Clone(f.entries[499]).(*cofferv1.AuditEntry)
	e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED
	e.Caller = "client:someone-else"
	e.Hash = ChainHash(e)
	lines = f.copyLines()
	lines[i] = itemLine(t, Item{Entry: e})
	_, err = verifyLines(t, lines, f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 501, KindBadLink)

	// Edited and the whole rest of the chain relinked: only the checkpoint
	// covering the entry catches it.
	items := append([]Item(nil), f.items...)
	prev := f.entries[498].Hash
	for k, it := range items {
		if it.Entry == nil || it.Entry.Seq < 500 {
			continue
		}
		ne := proto.Clone(it.Entry).(*cofferv1.AuditEntry)
		if ne.Seq == 500 {
			ne.Caller = "client:someone-else"
		}
		Link(prev, ne.Seq, ne)
		prev = ne.Hash
		items[k] = Item{Entry: ne}
	}
	_, err = verifyLines(t, exportLines(t, items), f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 500, KindBadCheckpoint)
}

func TestVerifier_DeletedEntry(t *testing.T) {
	f := newChainFixture(t)
	for _, seq := range []uint64{1, 500, 999} {
		lines := f.copyLines()
		i := f.entryLine(t, seq)
		lines = append(lines[:i], lines[i+1:]...)
		_, err := verifyLines(t, lines, f.trusted, VerifyOptions{})
		wantVerifyError(t, err, seq, KindGap)
	}
}

func TestVerifier_SwappedEntries(t *testing.T) {
	f := newChainFixture(t)
	for _, seq := range []uint64{1, 500, 999} {
		lines := f.copyLines()
		i, j := f.entryLine(t, seq), f.entryLine(t, seq+1)
		lines[i], lines[j] = lines[j], lines[i]
		_, err := verifyLines(t, lines, f.trusted, VerifyOptions{})
		wantVerifyError(t, err, seq, KindReorder)
	}
}

func TestVerifier_DuplicatedEntry(t *testing.T) {
	f := newChainFixture(t)
	for _, seq := range []uint64{1, 500, 1000} {
		lines := f.copyLines()
		i := f.entryLine(t, seq)
		lines = append(lines[:i+1], lines[i:]...)
		_, err := verifyLines(t, lines, f.trusted, VerifyOptions{})
		wantVerifyError(t, err, seq, KindDuplicate)
	}
	// A replayed old entry further on.
	lines := f.copyLines()
	i := f.entryLine(t, 700)
	lines = append(lines[:i+1], append([]string{lines[f.entryLine(t, 10)]}, lines[i+1:]...)...)
	_, err := verifyLines(t, lines, f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 10, KindDuplicate)
}

func TestVerifier_TruncatedTail(t *testing.T) {
	f := newChainFixture(t)
	// Cut after entry 950: the checkpoint for 1000 and entries 951.. are gone.
	lines := f.copyLines()[:f.entryLine(t, 950)+1]
	rep, err := verifyLines(t, lines, f.trusted, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.LastSeq != 950 || rep.CoveredSeq != 900 || rep.Uncovered != 50 {
		t.Fatalf("report %+v, want 50 uncovered after 900", rep)
	}
	rep, err = verifyLines(t, lines, f.trusted, VerifyOptions{StrictTail: true})
	wantVerifyError(t, err, 901, KindUncoveredTail)
	if rep.Uncovered != 50 {
		t.Fatalf("report %+v", rep)
	}

	// Cut right after entry 900, before its checkpoint was applied: 100
	// entries covered only up to 800.
	lines = f.copyLines()[:f.entryLine(t, 900)+1]
	rep, err = verifyLines(t, lines, f.trusted, VerifyOptions{})
	if err != nil || rep.CoveredSeq != 800 || rep.Uncovered != 100 {
		t.Fatalf("report %+v, %v", rep, err)
	}
}

func TestVerifier_ForgedCheckpoint(t *testing.T) {
	f := newChainFixture(t)
	i := f.checkpointLine(t, 500)
	orig := f.items[i].Checkpoint

	// A wrong head, properly signed by a trusted key (a buggy or
	// compromised signer): the head does not match the chain.
	forged := signedCheckpoint(t, 500, f.entries[498].Hash, f.signers[0])
	lines := f.copyLines()
	lines[i] = itemLine(t, Item{Checkpoint: forged})
	_, err := verifyLines(t, lines, f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 500, KindBadCheckpoint)

	// The head edited without re-signing: same finding.
	lines = f.copyLines()
	lines[i] = editJSON(t, lines[i], "head", strings.Repeat("ab", HashLen))
	_, err = verifyLines(t, lines, f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 500, KindBadCheckpoint)

	// A signed field edited: the signature fails.
	lines = f.copyLines()
	c := proto.Clone(orig).(*cofferv1.AuditCheckpoint)
	c.Signer = "node-9"
	lines[i] = itemLine(t, Item{Checkpoint: c})
	_, err = verifyLines(t, lines, f.trusted, VerifyOptions{})
	if ve := wantVerifyError(t, err, 500, KindBadSignature); !errors.Is(ve, ErrBadSignature) {
		t.Fatal("does not wrap ErrBadSignature")
	}

	// A checkpoint for an entry not yet applied.
	lines = f.copyLines()
	ahead := signedCheckpoint(t, 600, f.entries[599].Hash, f.signers[0])
	lines = append(lines[:i+1], append([]string{itemLine(t, Item{Checkpoint: ahead})}, lines[i+1:]...)...)
	_, err = verifyLines(t, lines, f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 600, KindBadCheckpoint)
}

func TestVerifier_UntrustedResign(t *testing.T) {
	f := newChainFixture(t)
	i := f.checkpointLine(t, 500)
	c := proto.Clone(f.items[i].Checkpoint).(*cofferv1.AuditCheckpoint)
	if err := Sign(c, mustEd25519(t, 77)); err != nil {
		t.Fatal(err)
	}
	lines := f.copyLines()
	lines[i] = itemLine(t, Item{Checkpoint: c})
	_, err := verifyLines(t, lines, f.trusted, VerifyOptions{})
	if ve := wantVerifyError(t, err, 500, KindUntrustedKey); !errors.Is(ve, ErrUntrustedKey) {
		t.Fatal("does not wrap ErrUntrustedKey")
	}
}

// prunedLines drops everything before entry 301 except the checkpoints that
// are applied after it, and starts the export with the marker for 300.
func prunedLines(t *testing.T, f *chainFixture, m *cofferv1.AuditPruneMarker) []string {
	t.Helper()
	start := f.entryLine(t, 301)
	return append([]string{itemLine(t, Item{Marker: m})}, f.lines[start:]...)
}

func TestVerifier_PrunedPrefix(t *testing.T) {
	f := newChainFixture(t)
	cp := f.items[f.checkpointLine(t, 300)].Checkpoint
	m, err := NewPruneMarker(cp)
	if err != nil {
		t.Fatal(err)
	}
	lines := prunedLines(t, f, m)
	if !strings.Contains(strings.Join(lines, ""), `"type":"checkpoint","seq":300`) {
		t.Fatal("fixture: the checkpoint for 300 should follow entry 301")
	}
	rep, err := verifyLines(t, lines, f.trusted, VerifyOptions{StrictTail: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.PrunedBefore != 301 || rep.FirstSeq != 301 || rep.Entries != 700 || rep.CoveredSeq != 1000 {
		t.Fatalf("report %+v", rep)
	}

	// A marker whose prev_hash is wrong.
	bad := proto.Clone(m).(*cofferv1.AuditPruneMarker)
	bad.PrevHash = f.entries[298].Hash
	_, err = verifyLines(t, prunedLines(t, f, bad), f.trusted, VerifyOptions{})
	if ve := wantVerifyError(t, err, 301, KindBadMarker); !errors.Is(ve, ErrInvalidMarker) {
		t.Fatal("does not wrap ErrInvalidMarker")
	}

	// A marker consistent with itself, but re-pointed at another prefix by
	// someone without a trusted key.
	bad = proto.Clone(m).(*cofferv1.AuditPruneMarker)
	bad.PrevHash = f.entries[298].Hash
	bad.Checkpoint.Head = f.entries[298].Hash
	if err := Sign(bad.Checkpoint, mustEd25519(t, 77)); err != nil {
		t.Fatal(err)
	}
	_, err = verifyLines(t, prunedLines(t, f, bad), f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 300, KindUntrustedKey)

	// The same with the original signature kept.
	bad.Checkpoint.Signature, bad.Checkpoint.PublicKey = cp.Signature, cp.PublicKey
	_, err = verifyLines(t, prunedLines(t, f, bad), f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 300, KindBadSignature)

	// A marker anywhere but first (here: a second one).
	lines = prunedLines(t, f, m)
	lines = append([]string{lines[0]}, lines...)
	_, err = verifyLines(t, lines, f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 301, KindBadMarker)

	// Entries without a marker must start at 1.
	_, err = verifyLines(t, prunedLines(t, f, m)[1:], f.trusted, VerifyOptions{})
	wantVerifyError(t, err, 1, KindGap)
}

func TestVerifier_Window(t *testing.T) {
	f := newChainFixture(t)
	// Checkpoints arrive 3 entries late: the window must hold the covered
	// entry and the 3 after it. 4 hashes do, 3 do not.
	if _, err := verifyLines(t, f.lines, f.trusted, VerifyOptions{Window: 4}); err != nil {
		t.Fatalf("window 4: %v", err)
	}
	_, err := verifyLines(t, f.lines, f.trusted, VerifyOptions{Window: 3})
	wantVerifyError(t, err, 100, KindBadCheckpoint)
	if _, err := NewVerifier(f.trusted, VerifyOptions{Window: -1}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("negative window: %v", err)
	}
	if _, err := NewVerifier(f.trusted, VerifyOptions{Window: MaxWindow + 1}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("huge window: %v", err)
	}
}

func TestVerifier_Empty(t *testing.T) {
	rep, err := VerifyJSONL(strings.NewReader(""), TrustedKeys{}, VerifyOptions{StrictTail: true})
	if err != nil || rep.Entries != 0 {
		t.Fatalf("%+v %v", rep, err)
	}
	if !bytes.Equal(rep.Head, GenesisHash()) {
		t.Fatal("head of an empty log is not the genesis hash")
	}
}

func TestVerifier_ErrorIsSticky(t *testing.T) {
	f := newChainFixture(t)
	v, _ := NewVerifier(f.trusted, VerifyOptions{})
	if err := v.AddEntry(f.entries[1]); err != nil { // seq 2 first: held
		t.Fatal(err)
	}
	err := v.AddEntry(f.entries[2])
	wantVerifyError(t, err, 1, KindGap)
	if err2 := v.AddEntry(f.entries[0]); err2 != err {
		t.Fatalf("second call: %v", err2)
	}
	if _, err3 := v.Finish(); err3 != err {
		t.Fatalf("Finish: %v", err3)
	}
}

// An attacker with a trusted signing key and write access rewrites history
// from entry 500 on and re-signs every later checkpoint. The export alone
// verifies; a checkpoint the auditor kept from before does not agree.
func TestVerifier_PinnedCheckpoints(t *testing.T) {
	f := newChainFixture(t)
	items := append([]Item(nil), f.items...)
	var prev []byte
	hashes := map[uint64][]byte{}
	for k, it := range items {
		switch {
		case it.Entry != nil && it.Entry.Seq >= 500:
			ne := proto.Clone(it.Entry).(*cofferv1.AuditEntry)
			if ne.Seq == 500 {
				ne.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED
			}
			Link(prev, ne.Seq, ne)
			items[k] = Item{Entry: ne}
			prev, hashes[ne.Seq] = ne.Hash, ne.Hash
		case it.Entry != nil:
			prev, hashes[it.Entry.Seq] = it.Entry.Hash, it.Entry.Hash
		case it.Checkpoint != nil && it.Checkpoint.Seq >= 500:
			items[k] = Item{Checkpoint: signedCheckpoint(t, it.Checkpoint.Seq, hashes[it.Checkpoint.Seq], f.signers[0])}
		}
	}
	lines := exportLines(t, items)
	if _, err := verifyLines(t, lines, f.trusted, VerifyOptions{StrictTail: true}); err != nil {
		t.Fatalf("the rewritten export should verify on its own: %v", err)
	}
	kept := func(seq uint64) *cofferv1.AuditCheckpoint { return f.items[f.checkpointLine(t, seq)].Checkpoint }

	_, err := verifyLines(t, lines, f.trusted, VerifyOptions{Pinned: []*cofferv1.AuditCheckpoint{kept(400), kept(600)}})
	wantVerifyError(t, err, 600, KindPinned)
	_, err = verifyLines(t, lines, f.trusted, VerifyOptions{Pinned: []*cofferv1.AuditCheckpoint{kept(500)}})
	wantVerifyError(t, err, 500, KindPinned)
	if _, err := verifyLines(t, lines, f.trusted, VerifyOptions{Pinned: []*cofferv1.AuditCheckpoint{kept(400)}}); err != nil {
		t.Fatalf("pinned before the rewrite: %v", err)
	}

	// The original export, cut short of a kept checkpoint.
	cut := f.copyLines()[:f.entryLine(t, 950)+1]
	_, err = verifyLines(t, cut, f.trusted, VerifyOptions{Pinned: []*cofferv1.AuditCheckpoint{kept(1000)}})
	wantVerifyError(t, err, 951, KindTruncated)

	// A pruned export checks a pinned checkpoint at the marker and ignores
	// older ones.
	m, _ := NewPruneMarker(kept(300))
	pruned := prunedLines(t, f, m)
	if _, err := verifyLines(t, pruned, f.trusted, VerifyOptions{Pinned: []*cofferv1.AuditCheckpoint{kept(100), kept(300), kept(1000)}}); err != nil {
		t.Fatalf("pruned with pins: %v", err)
	}
	wrong := proto.Clone(kept(300)).(*cofferv1.AuditCheckpoint)
	wrong.Head = f.entries[0].Hash
	_, err = verifyLines(t, pruned, f.trusted, VerifyOptions{Pinned: []*cofferv1.AuditCheckpoint{wrong}})
	wantVerifyError(t, err, 300, KindPinned)

	bad := []*cofferv1.AuditCheckpoint{kept(300), wrong}
	if _, err := NewVerifier(f.trusted, VerifyOptions{Pinned: bad}); !errors.Is(err, ErrInvalidOptions) {
		t.Fatalf("disagreeing pins: %v", err)
	}
}
