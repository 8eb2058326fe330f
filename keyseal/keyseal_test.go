package keyseal

import (
	"bytes"
	"errors"
	"testing"
)

func binding() Binding {
	return Binding{Operation: "get", GKID: "k1-abcdefghij-xyz", Version: 2, RequestID: "req-1", Client: "client:app"}
}

// TestSealOpen round-trips with both KEMs and refuses every other binding,
// another recipient and altered bytes.
func TestSealOpen(t *testing.T) {
	material := []byte("0123456789abcdef0123456789abcdef")
	for _, id := range []uint16{KEMX25519, KEMMLKEM768X25519} {
		r, err := NewRecipient(id)
		if err != nil {
			t.Fatal(err)
		}
		pk, err := PublicKey(r.KEMID(), r.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		sealed, err := Seal(pk, binding(), material)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(sealed, material) {
			t.Fatal("sealed bytes hold the material")
		}
		got, err := r.Open(binding(), sealed)
		if err != nil || !bytes.Equal(got, material) {
			t.Fatalf("kem %#x: open: %v", id, err)
		}
		for name, edit := range map[string]func(*Binding){
			"operation":  func(b *Binding) { b.Operation = "datakey" },
			"gkid":       func(b *Binding) { b.GKID += "x" },
			"version":    func(b *Binding) { b.Version = 1 },
			"request id": func(b *Binding) { b.RequestID = "req-2" },
			"client":     func(b *Binding) { b.Client = "client:mallory" },
		} {
			b := binding()
			edit(&b)
			if _, err := r.Open(b, sealed); !errors.Is(err, ErrOpen) {
				t.Errorf("kem %#x: another %s opened: %v", id, name, err)
			}
		}
		other, _ := NewRecipient(id)
		if _, err := other.Open(binding(), sealed); !errors.Is(err, ErrOpen) {
			t.Errorf("kem %#x: another recipient opened: %v", id, err)
		}
		flipped := bytes.Clone(sealed)
		flipped[len(flipped)-1] ^= 1
		if _, err := r.Open(binding(), flipped); !errors.Is(err, ErrOpen) {
			t.Errorf("kem %#x: altered bytes opened: %v", id, err)
		}
	}
}

func TestBadInputs(t *testing.T) {
	if _, err := NewRecipient(0x0010); !errors.Is(err, ErrUnsupportedKEM) {
		t.Fatalf("P-256 KEM: %v", err)
	}
	if _, err := PublicKey(KEMX25519, []byte("short")); !errors.Is(err, ErrBadPublicKey) {
		t.Fatalf("short key: %v", err)
	}
	if _, err := PublicKey(7, make([]byte, 32)); !errors.Is(err, ErrUnsupportedKEM) {
		t.Fatalf("kem 7: %v", err)
	}
}

// TestInfo pins the info string's encoding (FORMAT.md gives the same
// bytes).
func TestInfo(t *testing.T) {
	got := Binding{Operation: "get", GKID: "k1", Version: 2, RequestID: "r", Client: "client:a"}.Info()
	want := []byte("\x00\x14coffer-sealed-key-v1\x00\x03get\x00\x02k1\x00\x04\x00\x00\x00\x02\x00\x01r\x00\x08client:a")
	if !bytes.Equal(got, want) {
		t.Fatalf("info %q, want %q", got, want)
	}
	a := Binding{GKID: "ab", RequestID: "c"}.Info()
	b := Binding{GKID: "a", RequestID: "bc"}.Info()
	if bytes.Equal(a, b) {
		t.Fatal("field boundaries not encoded")
	}
}

func BenchmarkSeal(b *testing.B) {
	for _, id := range []uint16{KEMX25519, KEMMLKEM768X25519} {
		r, _ := NewRecipient(id)
		pk, _ := PublicKey(id, r.PublicKey())
		material := make([]byte, 32)
		b.Run(map[uint16]string{KEMX25519: "x25519", KEMMLKEM768X25519: "mlkem768x25519"}[id], func(b *testing.B) {
			for b.Loop() {
				if _, err := Seal(pk, binding(), material); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRecipient(b *testing.B) {
	for _, id := range []uint16{KEMX25519, KEMMLKEM768X25519} {
		r0, _ := NewRecipient(id)
		pk, _ := PublicKey(id, r0.PublicKey())
		sealed, _ := Seal(pk, binding(), make([]byte, 32))
		b.Run(map[uint16]string{KEMX25519: "x25519", KEMMLKEM768X25519: "mlkem768x25519"}[id], func(b *testing.B) {
			for b.Loop() {
				r, err := NewRecipient(id)
				if err != nil {
					b.Fatal(err)
				}
				_ = r.PublicKey()
				if _, err := r0.Open(binding(), sealed); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
