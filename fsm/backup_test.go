package fsm

import (
	"bytes"
	"errors"
	"io"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// A backup file's header round-trips; anything else is ErrNotBackup.
func TestBackupHeader(t *testing.T) {
	seal := &cofferv1.SnapshotSeal{ClusterId: "abcdefghij", AppliedIndex: 7, Sha256: bytes.Repeat([]byte{1}, 32), Size: 5}
	var b bytes.Buffer
	if err := WriteBackupHeader(&b, seal); err != nil {
		t.Fatal(err)
	}
	b.WriteString("STREAM")
	got, rest, err := ReadBackupHeader(&b)
	if err != nil || got.GetClusterId() != "abcdefghij" || got.GetAppliedIndex() != 7 {
		t.Fatalf("header: %v %v", got, err)
	}
	if body, _ := io.ReadAll(rest); string(body) != "STREAM" {
		t.Fatalf("stream after the header: %q", body)
	}
	for _, bad := range []string{"", "coffer-backup 2\n{}\n", "coffer-backup 1\nnot json\n", "coffer-backup 1\n{\"size\":"} {
		if _, _, err := ReadBackupHeader(bytes.NewReader([]byte(bad))); !errors.Is(err, ErrNotBackup) {
			t.Errorf("%q: %v; want ErrNotBackup", bad, err)
		}
	}
}

// FuzzReadBackupHeader: a backup file is untrusted input; its header never
// panics and never reads past its bound.
func FuzzReadBackupHeader(f *testing.F) {
	var b bytes.Buffer
	_ = WriteBackupHeader(&b, &cofferv1.SnapshotSeal{ClusterId: "c", Size: 1})
	f.Add(b.Bytes())
	f.Add([]byte("coffer-backup 1\n{}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		seal, rest, err := ReadBackupHeader(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrNotBackup) {
				t.Fatalf("error not ErrNotBackup: %v", err)
			}
			return
		}
		if seal == nil || rest == nil {
			t.Fatal("no seal or stream without an error")
		}
	})
}
