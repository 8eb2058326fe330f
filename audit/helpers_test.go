package audit

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// baseTime is 2023-11-14T22:13:20.123456789Z.
const baseTime = int64(1700000000123456789)

type namedSigner struct {
	name   string
	signer crypto.Signer
}

// mustEd25519 returns an Ed25519 signer from a fixed seed byte, so that
// signatures are reproducible.
func mustEd25519(t testing.TB, seedByte byte) crypto.Signer {
	t.Helper()
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seedByte}, ed25519.SeedSize))
}

func mustECDSA(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustTrusted(t testing.TB, signers ...crypto.Signer) TrustedKeys {
	t.Helper()
	var tk TrustedKeys
	for _, s := range signers {
		if err := tk.Add(s.Public()); err != nil {
			t.Fatal(err)
		}
	}
	return tk
}

// proposal returns a varied, valid entry proposal for index i.
func proposal(i int) *cofferv1.AuditEntry {
	ops := []string{"generate", "get", "describe", "acl.grant", "encrypt"}
	outcomes := []cofferv1.AuditOutcome{
		cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED,
		cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED,
		cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED,
		cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED,
	}
	e := &cofferv1.AuditEntry{
		TimeUnixNano: baseTime + int64(i)*1_000_000,
		Node:         fmt.Sprintf("node-%d", i%3+1),
		Caller:       fmt.Sprintf("client:app%d", i%7),
		Operation:    ops[i%len(ops)],
		Gkid:         fmt.Sprintf("k1-abcdefghij-%026d", i),
		Resource:     fmt.Sprintf("payments/db%d", i%11),
		Policy:       "default",
		Outcome:      outcomes[i%len(outcomes)],
		RequestId:    fmt.Sprintf("req-%d", i),
		Consistency:  cofferv1.Consistency(i % 3),
	}
	if e.Operation == "acl.grant" {
		e.Client = "client:other"
	}
	if e.Outcome != cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED {
		e.Reason = "no grant for resource \"payments\" <&>"
	}
	if i%5 == 0 {
		e.DetailHmac = DetailHMAC(bytes.Repeat([]byte{0x42}, DetailKeyLen), fmt.Sprintf("user%d@example.com", i))
	}
	return e
}

type chainSpec struct {
	n       int // entries
	every   int // a checkpoint covers every seq divisible by every
	lag     int // a checkpoint for s is emitted after entry min(s+lag, n)
	signers []namedSigner
}

// buildChain links n entries and interleaves signed checkpoints the way the
// state machine would apply them. It returns the items in stream order and
// the entries by seq (index seq-1).
func buildChain(t testing.TB, spec chainSpec) ([]Item, []*cofferv1.AuditEntry) {
	t.Helper()
	var items []Item
	var entries []*cofferv1.AuditEntry
	pending := map[int][]uint64{} // emit after entry -> checkpoint seqs
	prev := GenesisHash()
	k := 0
	for i := 1; i <= spec.n; i++ {
		e := proposal(i)
		if err := Validate(e); err != nil {
			t.Fatal(err)
		}
		Link(prev, uint64(i), e)
		prev = e.Hash
		entries = append(entries, e)
		items = append(items, Item{Entry: e})
		if spec.every > 0 && i%spec.every == 0 {
			at := min(i+spec.lag, spec.n)
			pending[at] = append(pending[at], uint64(i))
		}
		for _, s := range pending[i] {
			ns := spec.signers[k%len(spec.signers)]
			k++
			cp := signedCheckpoint(t, s, entries[s-1].Hash, ns)
			items = append(items, Item{Checkpoint: cp})
		}
	}
	return items, entries
}

func signedCheckpoint(t testing.TB, seq uint64, head []byte, ns namedSigner) *cofferv1.AuditCheckpoint {
	t.Helper()
	cp := &cofferv1.AuditCheckpoint{
		Seq:          seq,
		Head:         bytes.Clone(head),
		TimeUnixNano: baseTime + int64(seq)*1_000_000 + 500_000,
		Signer:       ns.name,
	}
	if err := Sign(cp, ns.signer); err != nil {
		t.Fatal(err)
	}
	return cp
}

func exportLines(t testing.TB, items []Item) []string {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, it := range items {
		if err := w.Write(it); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
}

func itemLine(t testing.TB, it Item) string {
	t.Helper()
	return exportLines(t, []Item{it})[0]
}

func joinLines(lines []string) string { return strings.Join(lines, "\n") + "\n" }
