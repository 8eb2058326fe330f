package gkid

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestNewAndValidate(t *testing.T) {
	cid, err := NewClusterID(bytes.Repeat([]byte{0xab}, ClusterIDRandomBytes))
	if err != nil {
		t.Fatal(err)
	}
	id, err := New(cid, bytes.Repeat([]byte{0x5c}, RandomBytes))
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != Length {
		t.Fatalf("len %d", len(id))
	}
	if err := Validate(id); err != nil {
		t.Fatalf("validate %q: %v", id, err)
	}
	got, err := ClusterOf(id)
	if err != nil || got != cid {
		t.Fatalf("ClusterOf = %q, %v; want %q", got, err, cid)
	}
	other, _ := New(cid, bytes.Repeat([]byte{0x5d}, RandomBytes))
	if other == id {
		t.Fatal("different randomness gave the same gkid")
	}
}

func TestValidateRejects(t *testing.T) {
	good, _ := New("abcdefghij", make([]byte, RandomBytes))
	cases := map[string]string{
		"empty":       "",
		"short":       good[:39],
		"long":        good + "a",
		"version":     "k2" + good[2:],
		"separator":   good[:13] + "_" + good[14:],
		"upper":       strings.ToUpper(good),
		"digit 1":     good[:20] + "1" + good[21:],
		"slash":       good[:20] + "/" + good[21:],
		"cluster bad": "k1-ABCDEFGHIJ" + good[13:],
	}
	for name, s := range cases {
		if err := Validate(s); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Validate(%q) = %v, want ErrMalformed", name, s, err)
		}
	}
	if _, err := New("abc", make([]byte, RandomBytes)); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad cluster id accepted: %v", err)
	}
	if _, err := New("abcdefghij", make([]byte, 3)); !errors.Is(err, ErrMalformed) {
		t.Errorf("short randomness accepted: %v", err)
	}
}

func FuzzValidate(f *testing.F) {
	good, _ := New("abcdefghij", make([]byte, RandomBytes))
	f.Add(good)
	f.Add("k1-")
	f.Fuzz(func(t *testing.T, s string) {
		if Validate(s) == nil {
			if len(s) != Length || !strings.HasPrefix(s, "k1-") {
				t.Fatalf("accepted %q", s)
			}
		}
	})
}
