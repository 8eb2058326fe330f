package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "material")
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // umask may have masked bits
		t.Fatal(err)
	}
	return p
}

func TestReadMaterial(t *testing.T) {
	want := []byte{0xde, 0xad, 0xbe, 0xef, 0xfb, 0xff}
	for _, tc := range []struct{ encoding, content string }{
		{"raw", string(want)},
		{"base64", "3q2+7/v/\n"},
		{"base64", "3q2-7_v_"},
		{"hex", " deadbeefFBFF\n"},
	} {
		var warn bytes.Buffer
		got, err := readMaterial(writeFile(t, tc.content, 0o600), tc.encoding, nil, &warn)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s %q: got %x, %v", tc.encoding, tc.content, got, err)
		}
		if warn.Len() != 0 {
			t.Errorf("unexpected warning %q", warn.String())
		}
	}

	got, err := readMaterial("-", "hex", strings.NewReader("0102"), &bytes.Buffer{})
	if err != nil || !bytes.Equal(got, []byte{1, 2}) {
		t.Errorf("stdin: %x, %v", got, err)
	}
}

func TestReadMaterial_Refused(t *testing.T) {
	for name, tc := range map[string]struct {
		path, encoding, wantErr string
	}{
		"too large":    {writeFile(t, strings.Repeat("k", maxMaterialFile+1), 0o600), "raw", "larger than 1024 bytes"},
		"empty":        {writeFile(t, "\n", 0o600), "base64", "no key material"},
		"bad hex":      {writeFile(t, "zz", 0o600), "hex", "bad hex"},
		"bad base64":   {writeFile(t, "!!!!", 0o600), "base64", "bad base64"},
		"bad encoding": {writeFile(t, "k", 0o600), "rot13", "unknown encoding"},
		"missing":      {filepath.Join(t.TempDir(), "none"), "raw", "no such file"},
		"directory":    {t.TempDir(), "raw", "not a regular file"},
	} {
		if _, err := readMaterial(tc.path, tc.encoding, nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.wantErr)
		}
	}
	// Exactly the limit is fine.
	if _, err := readMaterial(writeFile(t, strings.Repeat("k", maxMaterialFile), 0o600), "raw", nil, &bytes.Buffer{}); err != nil {
		t.Errorf("file at the limit: %v", err)
	}
}

func TestReadMaterial_WorldReadableWarns(t *testing.T) {
	var warn bytes.Buffer
	p := writeFile(t, "0123456789abcdef", 0o644)
	if _, err := readMaterial(p, "raw", nil, &warn); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(warn.String(), "readable by every user") {
		t.Errorf("warning = %q", warn.String())
	}
}
