package audit

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

func TestChainHash_IsDomainSeparatedSHA256(t *testing.T) {
	e := proposal(3)
	Link(GenesisHash(), 1, e)
	want := sha256.Sum256(append([]byte(EntryDomain), EntryDigestInput(e)...))
	if !bytes.Equal(e.Hash, want[:]) || !bytes.Equal(ChainHash(e), want[:]) {
		t.Fatalf("hash %x, want %x", e.Hash, want)
	}
}

func TestEntryDigestInput_ExcludesHashOnly(t *testing.T) {
	e := proposal(5)
	Link(GenesisHash(), 7, e)
	in := EntryDigestInput(e)
	e.Hash = bytes.Repeat([]byte{0xff}, HashLen)
	if !bytes.Equal(in, EntryDigestInput(e)) {
		t.Fatal("the encoding depends on hash")
	}
	if len(in) != entryInputLen(e) {
		t.Fatalf("length %d, precomputed %d", len(in), entryInputLen(e))
	}
}

// TestChainHash_EveryFieldMatters changes each field of AuditEntry but hash,
// found by reflection so that a field added to the proto later without being
// added to the encoding fails this test.
func TestChainHash_EveryFieldMatters(t *testing.T) {
	base := proposal(10)
	Link(GenesisHash(), 1, base)
	baseHash := ChainHash(base)
	fields := base.ProtoReflect().Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Name() == "hash" {
			continue
		}
		t.Run(string(fd.Name()), func(t *testing.T) {
			for _, variant := range []int{0, 1} {
				e := proto.Clone(base).(*cofferv1.AuditEntry)
				m := e.ProtoReflect()
				v := m.Get(fd)
				var nv protoreflect.Value
				switch fd.Kind() {
				case protoreflect.Uint64Kind:
					nv = protoreflect.ValueOfUint64(v.Uint() + 1 + uint64(variant))
				case protoreflect.Uint32Kind:
					nv = protoreflect.ValueOfUint32(uint32(v.Uint()) + 1 + uint32(variant))
				case protoreflect.Int64Kind:
					nv = protoreflect.ValueOfInt64(v.Int() - 1 - int64(variant))
				case protoreflect.StringKind:
					nv = protoreflect.ValueOfString(v.String() + []string{"x", "\x00"}[variant])
				case protoreflect.BytesKind:
					nv = protoreflect.ValueOfBytes(append(bytes.Clone(v.Bytes()), byte(variant)))
				case protoreflect.EnumKind:
					nv = protoreflect.ValueOfEnum(v.Enum() + 1 + protoreflect.EnumNumber(variant))
				default:
					t.Fatalf("field kind %v is not covered by the encoding", fd.Kind())
				}
				m.Set(fd, nv)
				if bytes.Equal(ChainHash(e), baseHash) {
					t.Fatalf("changing %s does not change the hash", fd.Name())
				}
			}
		})
	}
}

// Moving bytes from one string field to its neighbour must change the hash:
// the length prefixes keep fields apart.
func TestChainHash_FieldBoundaries(t *testing.T) {
	a := &cofferv1.AuditEntry{Caller: "client:ab", Operation: "c"}
	b := &cofferv1.AuditEntry{Caller: "client:a", Operation: "bc"}
	if bytes.Equal(ChainHash(a), ChainHash(b)) {
		t.Fatal("field boundary not encoded")
	}
	c := &cofferv1.AuditEntry{Reason: "x"}
	d := &cofferv1.AuditEntry{RequestId: "x"}
	if bytes.Equal(ChainHash(c), ChainHash(d)) {
		t.Fatal("field identity not encoded")
	}
}

// An entry without a key version encodes as entries did before the field
// existed: nothing is written for it.
func TestEntryDigestInput_KeyVersionOnlyWhenSet(t *testing.T) {
	e := proposal(3)
	without := EntryDigestInput(e)
	e.KeyVersion = 2
	with := EntryDigestInput(e)
	if want := append(bytes.Clone(without), 17, 0, 0, 0, 2); !bytes.Equal(with, want) {
		t.Fatalf("with key version 2: %x, want %x", with, want)
	}
}

func TestLink_Deterministic(t *testing.T) {
	prev := GenesisHash()
	for i := 1; i <= 50; i++ {
		a, b := proposal(i), proposal(i)
		Link(prev, uint64(i), a)
		Link(bytes.Clone(prev), uint64(i), b)
		if !proto.Equal(a, b) {
			t.Fatalf("seq %d: two links of the same proposal differ", i)
		}
		// Linking again (a replayed Apply) gives the same result.
		c := proto.Clone(a).(*cofferv1.AuditEntry)
		Link(prev, uint64(i), c)
		if !proto.Equal(a, c) {
			t.Fatalf("seq %d: relinking changed the entry", i)
		}
		// A marshal round trip (what the Raft log does) keeps the hash.
		raw, err := proto.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		var d cofferv1.AuditEntry
		if err := proto.Unmarshal(raw, &d); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ChainHash(&d), a.Hash) {
			t.Fatalf("seq %d: hash changed across marshalling", i)
		}
		prev = a.Hash
	}
}

func TestLink_CopiesPrev(t *testing.T) {
	prev := bytes.Repeat([]byte{7}, HashLen)
	e := proposal(1)
	Link(prev, 2, e)
	prev[0] = 0
	if e.PrevHash[0] != 7 {
		t.Fatal("Link aliases prev")
	}
	h := bytes.Clone(e.Hash)
	e.PrevHash = append(e.PrevHash, 1) // must not clobber Hash
	if !bytes.Equal(e.Hash, h) {
		t.Fatal("PrevHash and Hash overlap")
	}
}

func TestValidate(t *testing.T) {
	ok := proposal(1)
	if err := Validate(ok); err != nil {
		t.Fatalf("valid proposal: %v", err)
	}
	long := strings.Repeat("a", MaxFieldLen+1)
	cases := map[string]func(e *cofferv1.AuditEntry){
		"seq set":             func(e *cofferv1.AuditEntry) { e.Seq = 1 },
		"prev_hash set":       func(e *cofferv1.AuditEntry) { e.PrevHash = GenesisHash() },
		"hash set":            func(e *cofferv1.AuditEntry) { e.Hash = GenesisHash() },
		"outcome unspecified": func(e *cofferv1.AuditEntry) { e.Outcome = 0 },
		"outcome unknown":     func(e *cofferv1.AuditEntry) { e.Outcome = 9 },
		"consistency unknown": func(e *cofferv1.AuditEntry) { e.Consistency = 9 },
		"no caller":           func(e *cofferv1.AuditEntry) { e.Caller = "" },
		"no operation":        func(e *cofferv1.AuditEntry) { e.Operation = "" },
		"long resource":       func(e *cofferv1.AuditEntry) { e.Resource = long },
		"long reason":         func(e *cofferv1.AuditEntry) { e.Reason = long },
		"long request id":     func(e *cofferv1.AuditEntry) { e.RequestId = long },
		"bad utf-8":           func(e *cofferv1.AuditEntry) { e.Node = "\xff" },
		"short detail_hmac":   func(e *cofferv1.AuditEntry) { e.DetailHmac = []byte{1} },
	}
	for name, mutate := range cases {
		e := proto.Clone(ok).(*cofferv1.AuditEntry)
		mutate(e)
		if err := Validate(e); !errors.Is(err, ErrInvalidEntry) {
			t.Errorf("%s: got %v, want ErrInvalidEntry", name, err)
		}
	}
	if err := Validate(nil); !errors.Is(err, ErrInvalidEntry) {
		t.Errorf("nil: %v", err)
	}
	e := proto.Clone(ok).(*cofferv1.AuditEntry)
	e.Resource = strings.Repeat("a", MaxFieldLen)
	if err := Validate(e); err != nil {
		t.Errorf("field at the limit: %v", err)
	}
}

func TestDetailHMAC(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, DetailKeyLen)
	a := DetailHMAC(key, "ab", "c")
	if len(a) != HashLen {
		t.Fatalf("length %d", len(a))
	}
	for _, other := range [][]string{{"a", "bc"}, {"abc"}, {"ab", "c", ""}, {}} {
		if bytes.Equal(a, DetailHMAC(key, other...)) {
			t.Errorf("%q collides with [ab c]", other)
		}
	}
	if bytes.Equal(a, DetailHMAC(bytes.Repeat([]byte{0x43}, DetailKeyLen), "ab", "c")) {
		t.Error("key does not matter")
	}
	if !MatchDetail(key, a, "ab", "c") || MatchDetail(key, a, "ab", "d") {
		t.Error("MatchDetail")
	}
}

// BenchmarkLink measures what Apply pays per audit entry.
func BenchmarkLink(b *testing.B) {
	e := proposal(5) // with detail_hmac and the usual fields
	prev := GenesisHash()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e.Seq, e.PrevHash, e.Hash = 0, nil, nil
		Link(prev, uint64(i+1), e)
		prev = e.Hash
	}
}

func BenchmarkVerifierAddEntry(b *testing.B) {
	const n = 4096
	prev := GenesisHash()
	entries := make([]*cofferv1.AuditEntry, n)
	for i := range entries {
		e := proposal(i)
		Link(prev, uint64(i+1), e)
		prev = e.Hash
		entries[i] = e
	}
	b.ReportAllocs()
	var v *Verifier
	for i := 0; b.Loop(); i++ {
		if i%n == 0 {
			v, _ = NewVerifier(TrustedKeys{}, VerifyOptions{})
		}
		if err := v.AddEntry(entries[i%n]); err != nil {
			b.Fatal(err)
		}
	}
}

func TestClip(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 5, "abc"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"},  // é is 2 bytes: never half of it
		{"aé", 3, "aé"}, // fits
		{"€€", 5, "€"},  // € is 3 bytes
		{"€", 0, ""},
	} {
		got := Clip(tc.in, tc.n)
		if got != tc.want || !utf8.ValidString(got) {
			t.Errorf("Clip(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
