package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/coffer-kms/coffer/ciphertext"
)

// localKeys is a dataKeySource without a cluster: it wraps data keys with
// the ciphertext package under one in-memory AES-256 key, as a node would,
// so envelopes carry real Coffer ciphertexts.
type localKeys struct {
	master   []byte
	gkid     string
	resource string
	issued   atomic.Int64
	unwraps  atomic.Int64
	// keys, when set, collects every data key issued (before it is wiped).
	keys chan []byte
}

func newLocalKeys() *localKeys {
	m := make([]byte, 32)
	_, _ = rand.Read(m)
	return &localKeys{master: m, gkid: "k1-q4zcmv2ypu-7x3kfm4r2dq6n5hwtjzscybvae", resource: "payments/db"}
}

func (l *localKeys) newDataKey(_ context.Context, policy, resource string) ([]byte, []byte, error) {
	if resource == "" {
		return nil, nil, fmt.Errorf("%w: a resource is required", ErrEnvelopeKey)
	}
	key := make([]byte, dataKeySize)
	_, _ = rand.Read(key)
	wrapped, err := ciphertext.Seal(l.master, ciphertext.Header{GKID: l.gkid, KeyVersion: 1}, l.resource, envelopeContext, key)
	if err != nil {
		return nil, nil, err
	}
	l.issued.Add(1)
	if l.keys != nil {
		l.keys <- key
	}
	return key, wrapped, nil
}

func (l *localKeys) unwrapDataKey(_ context.Context, wrapped []byte) ([]byte, error) {
	l.unwraps.Add(1)
	return ciphertext.Open(l.master, l.resource, envelopeContext, wrapped)
}

func mustSeal(t testing.TB, src dataKeySource, pt []byte) []byte {
	t.Helper()
	blob, err := sealRecord(context.Background(), src, "default", "payments/db", pt)
	if err != nil {
		t.Fatalf("seal: %v", err)
	}
	return blob
}

func TestEnvelope_RoundTrip(t *testing.T) {
	src := newLocalKeys()
	for _, n := range []int{0, 1, 15, 16, 17, 1000, 64 << 10, 1 << 20} {
		pt := make([]byte, n)
		_, _ = rand.Read(pt)
		orig := bytes.Clone(pt)
		blob := mustSeal(t, src, pt)
		if !bytes.Equal(pt, orig) {
			t.Fatalf("%d bytes: Seal modified its plaintext", n)
		}
		_, hdrLen, err := parsePrefix(blob)
		if err != nil {
			t.Fatalf("%d bytes: parsePrefix: %v", n, err)
		}
		if want := hdrLen + envNonceSize + n + envTagSize; len(blob) != want {
			t.Fatalf("%d bytes: blob is %d bytes, want %d", n, len(blob), want)
		}
		if n >= 16 && bytes.Contains(blob, pt[:16]) {
			t.Fatalf("%d bytes: plaintext visible in the blob", n)
		}
		got, err := openRecord(context.Background(), src, blob)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%d bytes: open = %d bytes, %v", n, len(got), err)
		}
	}
	if got := src.issued.Load(); got != 8 {
		t.Fatalf("%d data keys issued, want one per record (8)", got)
	}
}

// Every data key is fresh and wiped once Seal returns.
func TestEnvelope_DataKeyFreshAndWiped(t *testing.T) {
	src := newLocalKeys()
	src.keys = make(chan []byte, 2)
	a, b := mustSeal(t, src, []byte("row 1")), mustSeal(t, src, []byte("row 1"))
	k1, k2 := <-src.keys, <-src.keys
	if !bytes.Equal(k1, make([]byte, dataKeySize)) || !bytes.Equal(k2, make([]byte, dataKeySize)) {
		t.Fatal("a data key was not wiped after Seal")
	}
	if bytes.Equal(a[envPrefixLen:], b[envPrefixLen:]) {
		t.Fatal("two records share a wrapped data key")
	}
}

// Every byte of a record is covered: a flipped bit anywhere is refused, and
// no plaintext is returned.
func TestEnvelope_EveryBitFlipRefused(t *testing.T) {
	src := newLocalKeys()
	blob := mustSeal(t, src, []byte("the quick brown fox"))
	for i := range blob {
		for _, bit := range []byte{0x01, 0x80} {
			bad := bytes.Clone(blob)
			bad[i] ^= bit
			pt, err := openRecord(context.Background(), src, bad)
			if err == nil || pt != nil {
				t.Fatalf("byte %d bit %#x: open = %q, %v", i, bit, pt, err)
			}
			if !errors.Is(err, ErrEnvelopeMalformed) && !errors.Is(err, ErrEnvelopeAuthentication) &&
				!errors.Is(err, ErrEnvelopeVersion) && !errors.Is(err, ciphertext.ErrAuthentication) {
				t.Fatalf("byte %d bit %#x: unexpected error %v", i, bit, err)
			}
		}
	}
}

func TestEnvelope_Refused(t *testing.T) {
	src := newLocalKeys()
	blob := mustSeal(t, src, []byte("secret row"))
	other := mustSeal(t, src, []byte("another row"))
	_, hdrLen, _ := parsePrefix(blob)
	swapped := append(bytes.Clone(other[:hdrLen]), blob[hdrLen:]...) // another record's header
	plain, _ := ciphertext.Seal(src.master, ciphertext.Header{GKID: src.gkid, KeyVersion: 1}, src.resource, nil, []byte("x"))
	newer := bytes.Clone(blob)
	newer[3] = 2
	stream := new(bytes.Buffer)
	sw, _ := sealStream(context.Background(), src, "default", "r", stream, DefaultSegmentSize)
	_ = sw.Close()
	badLen := bytes.Clone(blob)
	binary.BigEndian.PutUint16(badLen[5:], 1000)
	for _, tc := range []struct {
		name string
		blob []byte
		want error
	}{
		{"empty", nil, ErrEnvelopeMalformed},
		{"magic only", envMagic[:], ErrEnvelopeMalformed},
		{"a Coffer ciphertext", plain, ErrEnvelopeMalformed},
		{"text", []byte("hello, this is not an envelope at all"), ErrEnvelopeMalformed},
		{"a later version", newer, ErrEnvelopeVersion},
		{"truncated in the header", blob[:hdrLen-1], ErrEnvelopeMalformed},
		{"truncated after the header", blob[:hdrLen+envNonceSize+envTagSize-1], ErrEnvelopeMalformed},
		{"truncated by one byte", blob[:len(blob)-1], ErrEnvelopeAuthentication},
		{"one byte more", append(bytes.Clone(blob), 0), ErrEnvelopeAuthentication},
		{"another record's header", swapped, ErrEnvelopeAuthentication},
		{"a stream", stream.Bytes(), ErrEnvelopeMalformed},
		{"a wrapped key length out of bounds", badLen, ErrEnvelopeMalformed},
	} {
		pt, err := openRecord(context.Background(), src, tc.blob)
		if !errors.Is(err, tc.want) || pt != nil {
			t.Errorf("%s: open = %q, %v; want %v", tc.name, pt, err, tc.want)
		}
	}
	if _, err := sealRecord(context.Background(), src, "default", "", []byte("x")); !errors.Is(err, ErrEnvelopeKey) {
		t.Errorf("seal without a resource: %v, want ErrEnvelopeKey", err)
	}
}

// A wrapped data key that unwraps to something other than 32 bytes is
// refused, and the bytes are wiped.
func TestEnvelope_ShortDataKey(t *testing.T) {
	key := make([]byte, 16)
	for i := range key {
		key[i] = 0xaa
	}
	if _, err := newAEAD(key, true); !errors.Is(err, ErrEnvelopeAuthentication) {
		t.Fatalf("newAEAD(16 bytes) = %v", err)
	}
	if !bytes.Equal(key, make([]byte, 16)) {
		t.Fatal("the refused key was not wiped")
	}
}

// vectorKeys unwraps the test vectors' data key with the key ENVELOPE.md
// names.
type vectorKeys struct{ master []byte }

func (vectorKeys) newDataKey(context.Context, string, string) ([]byte, []byte, error) {
	return nil, nil, errors.New("vectors are only opened")
}

func (v vectorKeys) unwrapDataKey(_ context.Context, wrapped []byte) ([]byte, error) {
	return ciphertext.Open(v.master, "payments/db", envelopeContext, wrapped)
}

// TestEnvelopeVectors opens the test vectors of ENVELOPE.md as printed
// there, and checks the data key they hold.
func TestEnvelopeVectors(t *testing.T) {
	doc, err := os.ReadFile("ENVELOPE.md")
	if err != nil {
		t.Fatal(err)
	}
	block := func(name string) []byte {
		m := regexp.MustCompile("(?s)```" + name + "\n(.*?)```").FindSubmatch(doc)
		if m == nil {
			t.Fatalf("ENVELOPE.md has no %s vector", name)
		}
		b, err := hex.DecodeString(strings.Join(strings.Fields(string(m[1])), ""))
		if err != nil {
			t.Fatalf("%s vector: %v", name, err)
		}
		return b
	}
	master, _ := hex.DecodeString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	wantKey, _ := hex.DecodeString("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
	src := vectorKeys{master}
	rec, stream := block("record"), block("stream")
	if got, err := openRecord(context.Background(), src, rec); err != nil || string(got) != "hello, coffer" {
		t.Fatalf("record vector: %q, %v", got, err)
	}
	if got, err := openAll(src, stream); err != nil || string(got) != "hello, coffer" {
		t.Fatalf("stream vector: %q, %v", got, err)
	}
	for _, v := range [][]byte{rec, stream} {
		dk, err := src.unwrapDataKey(context.Background(), v[envPrefixLen:envPrefixLen+109])
		if err != nil || !bytes.Equal(dk, wantKey) {
			t.Fatalf("vector data key %x, %v", dk, err)
		}
	}
}
