package hsmwrap

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// testArgon2Params keeps unit tests fast; production uses
// defaultArgon2Params.
var testArgon2Params = argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}

var testPassphrase = []byte("correct horse battery staple")

// mustSealedFile creates a passphrase-sealed master key file in a fresh temp
// dir and returns its path.
func mustSealedFile(t testing.TB, passphrase []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "master.sealed.json")
	if err := createMasterKeyFile(path, SealOptions{Passphrase: passphrase}, testArgon2Params); err != nil {
		t.Fatalf("createMasterKeyFile: %v", err)
	}
	return path
}

// mustKeyFile generates a key file in dir and returns its path.
func mustKeyFile(t testing.TB, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := GenerateKeyFile(path); err != nil {
		t.Fatalf("GenerateKeyFile: %v", err)
	}
	return path
}

// mustKeyFileSealed creates a key file and a master key file sealed with it.
func mustKeyFileSealed(t testing.TB) (sealedPath, keyPath string) {
	t.Helper()
	dir := t.TempDir()
	keyPath = mustKeyFile(t, dir, "seal.key")
	sealedPath = filepath.Join(dir, "master.sealed.json")
	if err := CreateMasterKeyFile(sealedPath, SealOptions{KeyFile: keyPath}); err != nil {
		t.Fatalf("CreateMasterKeyFile: %v", err)
	}
	return sealedPath, keyPath
}

func mustOpenMasterKeyFile(t testing.TB, path string, opts SealOptions) []byte {
	t.Helper()
	key, err := openMasterKeyFile(path, opts)
	if err != nil {
		t.Fatalf("openMasterKeyFile: %v", err)
	}
	if len(key) != masterKeyLen {
		t.Fatalf("master key is %d bytes, want %d", len(key), masterKeyLen)
	}
	return key
}

func mustReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustWriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestSealed_PassphraseRoundTrip(t *testing.T) {
	path := mustSealedFile(t, testPassphrase)
	k1 := mustOpenMasterKeyFile(t, path, SealOptions{Passphrase: testPassphrase})
	k2 := mustOpenMasterKeyFile(t, path, SealOptions{Passphrase: bytes.Clone(testPassphrase)})
	if !bytes.Equal(k1, k2) {
		t.Fatal("two opens of the same file gave different master keys")
	}
	if bytes.Equal(k1, make([]byte, masterKeyLen)) {
		t.Fatal("master key is all zero")
	}
}

func TestSealed_KeyFileRoundTrip(t *testing.T) {
	sealed, key := mustKeyFileSealed(t)
	k1 := mustOpenMasterKeyFile(t, sealed, SealOptions{KeyFile: key})
	k2 := mustOpenMasterKeyFile(t, sealed, SealOptions{KeyFile: key})
	if !bytes.Equal(k1, k2) {
		t.Fatal("two opens of the same file gave different master keys")
	}
}

func TestSealed_FreshKeyEachFile(t *testing.T) {
	a := mustOpenMasterKeyFile(t, mustSealedFile(t, testPassphrase), SealOptions{Passphrase: testPassphrase})
	b := mustOpenMasterKeyFile(t, mustSealedFile(t, testPassphrase), SealOptions{Passphrase: testPassphrase})
	if bytes.Equal(a, b) {
		t.Fatal("two sealed files hold the same master key")
	}
}

func TestSealed_DefaultParamsRecorded(t *testing.T) {
	if testing.Short() {
		t.Skip("argon2id at production cost")
	}
	path := filepath.Join(t.TempDir(), "master.sealed.json")
	if err := CreateMasterKeyFile(path, SealOptions{Passphrase: testPassphrase}); err != nil {
		t.Fatal(err)
	}
	f, err := parseSealedFile(mustReadFile(t, path))
	if err != nil {
		t.Fatal(err)
	}
	want := sealedKDF{Name: kdfArgon2id, Time: 3, MemoryKiB: 64 << 10, Threads: 2}
	if f.KDF != want {
		t.Fatalf("kdf = %+v, want %+v", f.KDF, want)
	}
	mustOpenMasterKeyFile(t, path, SealOptions{Passphrase: testPassphrase})
}

func TestSealed_WrongPassphrase(t *testing.T) {
	path := mustSealedFile(t, testPassphrase)
	for _, p := range [][]byte{
		[]byte("correct horse battery stapl"),
		[]byte("correct horse battery staple "),
		[]byte("Correct horse battery staple"),
		[]byte("x"),
	} {
		if _, err := openMasterKeyFile(path, SealOptions{Passphrase: p}); !errors.Is(err, ErrSealed) {
			t.Errorf("passphrase %q: err = %v, want ErrSealed", p, err)
		} else if strings.Contains(err.Error(), string(p)) {
			t.Errorf("error %q contains the passphrase", err)
		}
	}
}

func TestSealed_WrongKeyFile(t *testing.T) {
	sealed, _ := mustKeyFileSealed(t)
	other := mustKeyFile(t, t.TempDir(), "other.key")
	if _, err := openMasterKeyFile(sealed, SealOptions{KeyFile: other}); !errors.Is(err, ErrSealed) {
		t.Fatalf("err = %v, want ErrSealed", err)
	}
	// A key file that is too short, or missing.
	short := filepath.Join(t.TempDir(), "short.key")
	mustWriteFile(t, short, make([]byte, 31))
	if _, err := openMasterKeyFile(sealed, SealOptions{KeyFile: short}); !errors.Is(err, ErrSealed) {
		t.Fatalf("short key file: err = %v, want ErrSealed", err)
	}
	missing := filepath.Join(t.TempDir(), "missing.key")
	if _, err := openMasterKeyFile(sealed, SealOptions{KeyFile: missing}); !errors.Is(err, ErrSealed) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing key file: err = %v, want ErrSealed and fs.ErrNotExist", err)
	}
}

func TestSealed_WrongSecretKind(t *testing.T) {
	passSealed := mustSealedFile(t, testPassphrase)
	keySealed, key := mustKeyFileSealed(t)
	if _, err := openMasterKeyFile(passSealed, SealOptions{KeyFile: key}); !errors.Is(err, ErrSealed) {
		t.Errorf("key file on passphrase-sealed file: err = %v, want ErrSealed", err)
	}
	if _, err := openMasterKeyFile(keySealed, SealOptions{Passphrase: testPassphrase}); !errors.Is(err, ErrSealed) {
		t.Errorf("passphrase on key-file-sealed file: err = %v, want ErrSealed", err)
	}
}

func TestSealed_MissingFile(t *testing.T) {
	_, err := openMasterKeyFile(filepath.Join(t.TempDir(), "nope.json"), SealOptions{Passphrase: testPassphrase})
	if !errors.Is(err, ErrSealed) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want ErrSealed and fs.ErrNotExist", err)
	}
}

// TestSealed_FlippedBytes flips every bit of every byte of a sealed file
// (and also inverts each byte whole): every variant must be refused with
// ErrSealed, never opened.
func TestSealed_FlippedBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(t *testing.T) (string, SealOptions)
	}{
		{"passphrase", func(t *testing.T) (string, SealOptions) {
			return mustSealedFile(t, testPassphrase), SealOptions{Passphrase: testPassphrase}
		}},
		{"keyfile", func(t *testing.T) (string, SealOptions) {
			s, k := mustKeyFileSealed(t)
			return s, SealOptions{KeyFile: k}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, opts := tc.make(t)
			orig := mustReadFile(t, path)
			mustOpenMasterKeyFile(t, path, opts)
			try := func(i int, mask byte) {
				data := bytes.Clone(orig)
				data[i] ^= mask
				if _, err := unsealMasterKey(data, opts); !errors.Is(err, ErrSealed) {
					t.Errorf("byte %d (%q) ^ %#02x: err = %v, want ErrSealed", i, orig[i], mask, err)
				}
			}
			for i := range orig {
				for bit := range 8 {
					try(i, 1<<bit)
				}
				try(i, 0xff)
			}
			for n := range len(orig) - 1 { // the last byte is the optional newline
				if _, err := unsealMasterKey(orig[:n], opts); !errors.Is(err, ErrSealed) {
					t.Errorf("truncated to %d bytes: err = %v, want ErrSealed", n, err)
				}
			}
			// And once through the file system.
			data := bytes.Clone(orig)
			data[len(data)/2] ^= 0x04
			tampered := filepath.Join(t.TempDir(), "tampered.json")
			mustWriteFile(t, tampered, data)
			if _, err := openMasterKeyFile(tampered, opts); !errors.Is(err, ErrSealed) {
				t.Errorf("tampered file: err = %v, want ErrSealed", err)
			}
		})
	}
}

// TestSealed_HeaderBoundAsAAD rewrites header fields consistently (valid
// JSON, valid values) and checks that the result no longer opens: the header
// is authenticated, not only parsed.
func TestSealed_HeaderBoundAsAAD(t *testing.T) {
	path := mustSealedFile(t, testPassphrase)
	orig, err := parseSealedFile(mustReadFile(t, path))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(f *sealedFile)
	}{
		{"time", func(f *sealedFile) { f.KDF.Time++ }},
		{"memory", func(f *sealedFile) { f.KDF.MemoryKiB *= 2 }},
		{"threads", func(f *sealedFile) { f.KDF.Threads++; f.KDF.MemoryKiB = 8 * 2 * 8 }},
		{"salt", func(f *sealedFile) { f.Salt[0] ^= 1 }},
		{"nonce", func(f *sealedFile) { f.Nonce[0] ^= 1 }},
		{"ciphertext", func(f *sealedFile) { f.Ciphertext[0] ^= 1 }},
		{"tag", func(f *sealedFile) { f.Ciphertext[len(f.Ciphertext)-1] ^= 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := *orig
			f.Salt, f.Nonce, f.Ciphertext = bytes.Clone(orig.Salt), bytes.Clone(orig.Nonce), bytes.Clone(orig.Ciphertext)
			tc.mutate(&f)
			doc, err := json.Marshal(&f)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := parseSealedFile(doc); err != nil {
				t.Fatalf("rewritten file does not parse: %v", err)
			}
			p := filepath.Join(t.TempDir(), "rewritten.json")
			mustWriteFile(t, p, doc)
			if _, err := openMasterKeyFile(p, SealOptions{Passphrase: testPassphrase}); !errors.Is(err, ErrSealed) {
				t.Fatalf("err = %v, want ErrSealed", err)
			}
		})
	}
}

func TestSealed_ParseRefuses(t *testing.T) {
	path := mustSealedFile(t, testPassphrase)
	valid := string(mustReadFile(t, path))
	var m map[string]any
	if err := json.Unmarshal([]byte(valid), &m); err != nil {
		t.Fatal(err)
	}
	rewrite := func(edit func(m map[string]any)) string {
		var c map[string]any
		if err := json.Unmarshal([]byte(valid), &c); err != nil {
			t.Fatal(err)
		}
		edit(c)
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	kdf := func(m map[string]any) map[string]any { return m["kdf"].(map[string]any) }
	for _, tc := range []struct {
		name, doc string
	}{
		{"empty", ""},
		{"not json", "master key"},
		{"array", "[]"},
		{"trailing data", valid + "{}"},
		{"format", rewrite(func(m map[string]any) { m["format"] = "something-else" })},
		{"version 2", rewrite(func(m map[string]any) { m["version"] = 2 })},
		{"version fraction", rewrite(func(m map[string]any) { m["version"] = 1.5 })},
		{"unknown member", rewrite(func(m map[string]any) { m["comment"] = "hi" })},
		{"missing nonce", rewrite(func(m map[string]any) { delete(m, "nonce") })},
		{"member case", strings.Replace(valid, `"format"`, `"Format"`, 1)},
		{"duplicate member", strings.Replace(valid, `"format":`, `"version": 1, "format":`, 1)},
		{"unknown kdf", rewrite(func(m map[string]any) { kdf(m)["name"] = "scrypt" })},
		{"kdf extra member", rewrite(func(m map[string]any) { kdf(m)["pepper"] = 1 })},
		{"hkdf with cost", rewrite(func(m map[string]any) { kdf(m)["name"] = kdfHKDFSHA256 })},
		{"huge memory", rewrite(func(m map[string]any) { kdf(m)["memory_kib"] = 1 << 30 })},
		{"huge time", rewrite(func(m map[string]any) { kdf(m)["time"] = 1 << 20 })},
		{"zero threads", rewrite(func(m map[string]any) { kdf(m)["threads"] = 0 })},
		{"too little memory", rewrite(func(m map[string]any) { kdf(m)["memory_kib"] = 4 })},
		{"negative time", rewrite(func(m map[string]any) { kdf(m)["time"] = -1 })},
		{"short salt", rewrite(func(m map[string]any) { m["salt"] = base64.StdEncoding.EncodeToString(make([]byte, 16)) })},
		{"long nonce", rewrite(func(m map[string]any) { m["nonce"] = base64.StdEncoding.EncodeToString(make([]byte, 16)) })},
		{"short ciphertext", rewrite(func(m map[string]any) { m["ciphertext"] = base64.StdEncoding.EncodeToString(make([]byte, 47)) })},
		{"bad base64", rewrite(func(m map[string]any) { m["nonce"] = "!!!!" })},
		{"non-strict base64", rewrite(func(m map[string]any) {
			s := m["salt"].(string) // 32 bytes: 43 characters and one '='; the last character has 2 spare bits
			last := strings.IndexByte(base64Alphabet, s[42])
			m["salt"] = s[:42] + string(base64Alphabet[last|1]) + "="
			if last&1 == 1 {
				m["salt"] = s[:42] + string(base64Alphabet[last&^1]) + "="
			}
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseSealedFile([]byte(tc.doc)); !errors.Is(err, ErrSealed) {
				t.Fatalf("err = %v, want ErrSealed", err)
			}
		})
	}
	if _, err := parseSealedFile([]byte(valid)); err != nil {
		t.Fatalf("valid file: %v", err)
	}
}

const base64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

func TestSealed_RefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "master.sealed.json")
	if err := createMasterKeyFile(path, SealOptions{Passphrase: testPassphrase}, testArgon2Params); err != nil {
		t.Fatal(err)
	}
	before := mustReadFile(t, path)
	err := createMasterKeyFile(path, SealOptions{Passphrase: testPassphrase}, testArgon2Params)
	if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second create: err = %v, want fs.ErrExist with a clear message", err)
	}
	if !bytes.Equal(before, mustReadFile(t, path)) {
		t.Fatal("existing sealed file was changed")
	}

	key := mustKeyFile(t, dir, "seal.key")
	keyBefore := mustReadFile(t, key)
	if err := GenerateKeyFile(key); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second GenerateKeyFile: err = %v, want fs.ErrExist", err)
	}
	if err := CreateMasterKeyFile(key, SealOptions{Passphrase: testPassphrase}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("CreateMasterKeyFile over a key file: err = %v, want fs.ErrExist", err)
	}
	if !bytes.Equal(keyBefore, mustReadFile(t, key)) {
		t.Fatal("existing key file was changed")
	}
}

// TestSealed_LinkRefusesRace covers the final no-clobber step on its own: a
// file that appears between the early check and the link is not replaced.
func TestSealed_LinkRefusesRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	mustWriteFile(t, path, []byte("first"))
	if err := writeNewFileAtomic(path, []byte("second")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("err = %v, want fs.ErrExist", err)
	}
	if got := mustReadFile(t, path); string(got) != "first" {
		t.Fatalf("file content %q, want %q", got, "first")
	}
	assertNoTempFiles(t, filepath.Dir(path), 1)
}

func assertNoTempFiles(t *testing.T, dir string, want int) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(entries) != want {
		t.Fatalf("dir holds %v, want %d entries (no temporary files left)", names, want)
	}
}

func TestSealed_FileModes(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("unix permissions")
	}
	dir := t.TempDir()
	key := mustKeyFile(t, dir, "seal.key")
	sealed := filepath.Join(dir, "master.sealed.json")
	if err := CreateMasterKeyFile(sealed, SealOptions{KeyFile: key}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{key, sealed} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", filepath.Base(p), fi.Mode().Perm())
		}
	}
	if fi, _ := os.Stat(key); fi.Size() != 32 {
		t.Errorf("key file is %d bytes, want 32", fi.Size())
	}
	assertNoTempFiles(t, dir, 2)
}

// TestSealed_MasterKeyNotInFile scans the sealed file for the master key in
// the encodings a careless writer might use.
func TestSealed_MasterKeyNotInFile(t *testing.T) {
	type sealedCase struct {
		name string
		path string
		opts SealOptions
	}
	keySealed, keyFile := mustKeyFileSealed(t)
	for _, tc := range []sealedCase{
		{"passphrase", mustSealedFile(t, testPassphrase), SealOptions{Passphrase: testPassphrase}},
		{"keyfile", keySealed, SealOptions{KeyFile: keyFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := mustOpenMasterKeyFile(t, tc.path, tc.opts)
			data := mustReadFile(t, tc.path)
			for _, enc := range []struct {
				name string
				s    []byte
			}{
				{"raw", key},
				{"raw prefix", key[:8]},
				{"hex", []byte(hex.EncodeToString(key))},
				{"HEX", []byte(strings.ToUpper(hex.EncodeToString(key)))},
				{"base64", []byte(base64.StdEncoding.EncodeToString(key))},
				{"base64 prefix", []byte(base64.StdEncoding.EncodeToString(key)[:12])},
				{"base64url", []byte(base64.RawURLEncoding.EncodeToString(key))},
			} {
				if bytes.Contains(data, enc.s) {
					t.Errorf("sealed file contains the master key (%s)", enc.name)
				}
			}
			if tc.opts.Passphrase != nil && bytes.Contains(data, tc.opts.Passphrase) {
				t.Error("sealed file contains the passphrase")
			}
			if tc.opts.KeyFile != "" && bytes.Contains(data, mustReadFile(t, tc.opts.KeyFile)[:8]) {
				t.Error("sealed file contains key file bytes")
			}
		})
	}
}

func TestSealed_OptionsRefused(t *testing.T) {
	dir := t.TempDir()
	key := mustKeyFile(t, dir, "seal.key")
	short := filepath.Join(dir, "short.key")
	mustWriteFile(t, short, make([]byte, 16))
	for _, tc := range []struct {
		name string
		opts SealOptions
	}{
		{"neither", SealOptions{}},
		{"both", SealOptions{Passphrase: testPassphrase, KeyFile: key}},
		{"short passphrase", SealOptions{Passphrase: []byte("1234567")}},
		{"short key file", SealOptions{KeyFile: short}},
		{"missing key file", SealOptions{KeyFile: filepath.Join(dir, "missing")}},
		{"key file is a directory", SealOptions{KeyFile: dir}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.json")
			if err := CreateMasterKeyFile(path, tc.opts); !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("err = %v, want ErrInvalidArgument", err)
			}
			if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("a file was written despite the error")
			}
		})
	}
	if err := createMasterKeyFile(filepath.Join(dir, "m.json"), SealOptions{Passphrase: testPassphrase},
		argon2Params{Time: 0, MemoryKiB: 64, Threads: 1}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("zero argon2 time: err = %v, want ErrInvalidArgument", err)
	}
}

func TestSealed_OversizedInputsRefused(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	mustWriteFile(t, big, bytes.Repeat([]byte{'{'}, maxSealedFileSize+1))
	if _, err := openMasterKeyFile(big, SealOptions{Passphrase: testPassphrase}); !errors.Is(err, ErrSealed) {
		t.Fatalf("oversized sealed file: err = %v, want ErrSealed", err)
	}
	if _, err := openMasterKeyFile(dir, SealOptions{Passphrase: testPassphrase}); !errors.Is(err, ErrSealed) {
		t.Fatalf("directory as sealed file: err = %v, want ErrSealed", err)
	}
}

func FuzzParseSealedFile(f *testing.F) {
	path := mustSealedFile(f, testPassphrase)
	f.Add(mustReadFile(f, path))
	s, _ := mustKeyFileSealed(f)
	f.Add(mustReadFile(f, s))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"format":"coffer-sealed-master-key","version":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		sf, err := parseSealedFile(data)
		if err != nil {
			if !errors.Is(err, ErrSealed) {
				t.Fatalf("error does not wrap ErrSealed: %v", err)
			}
			return
		}
		// Anything accepted re-encodes to a file that parses to the same
		// content.
		doc, err := json.Marshal(sf)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseSealedFile(doc)
		if err != nil {
			t.Fatalf("re-encoded file does not parse: %v", err)
		}
		if !bytes.Equal(sf.associatedData(), again.associatedData()) ||
			!bytes.Equal(sf.Nonce, again.Nonce) || !bytes.Equal(sf.Ciphertext, again.Ciphertext) {
			t.Fatal("re-encoded file differs")
		}
	})
}
