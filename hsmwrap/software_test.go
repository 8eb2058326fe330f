package hsmwrap

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

var (
	kekA = KEKID{Policy: "payments", Version: 1}
	kekB = KEKID{Policy: "payments", Version: 2}
	kekC = KEKID{Policy: "hr", Version: 1}
)

func mustRandom(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// mustSoftware returns a software keystore under a fresh random master key,
// closed when the test ends.
func mustSoftware(t testing.TB) *Software {
	t.Helper()
	return mustSoftwareFromKey(t, mustRandom(t, 32))
}

func mustSoftwareFromKey(t testing.TB, master []byte) *Software {
	t.Helper()
	s, err := NewSoftwareFromKey(master)
	if err != nil {
		t.Fatalf("NewSoftwareFromKey: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustGenerateKEK(t testing.TB, s *Software, id KEKID) []byte {
	t.Helper()
	w, err := s.GenerateKEK(id)
	if err != nil {
		t.Fatalf("GenerateKEK(%s): %v", id, err)
	}
	// As a node does: load the copy that was (would be) committed.
	if err := s.LoadKEK(id, w); err != nil {
		t.Fatalf("LoadKEK(%s): %v", id, err)
	}
	return w
}

func mustSeal(t testing.TB, s *Software, id KEKID, pt, aad []byte) []byte {
	t.Helper()
	ct, err := s.Seal(id, pt, aad)
	if err != nil {
		t.Fatalf("Seal(%s): %v", id, err)
	}
	return ct
}

func mustOpen(t testing.TB, s *Software, id KEKID, ct, aad []byte) []byte {
	t.Helper()
	pt, err := s.Open(id, ct, aad)
	if err != nil {
		t.Fatalf("Open(%s): %v", id, err)
	}
	return pt
}

func wantErr(t testing.TB, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: err = %v, want %v", what, err, target)
	}
}

// mustPassphraseConfig writes a sealed master key file and a passphrase file
// and returns a config naming both.
func mustPassphraseConfig(t testing.TB) SoftwareConfig {
	t.Helper()
	dir := t.TempDir()
	cfg := SoftwareConfig{
		MasterKeyFile:  filepath.Join(dir, "master.sealed.json"),
		PassphraseFile: filepath.Join(dir, "passphrase"),
	}
	if err := createMasterKeyFile(cfg.MasterKeyFile, SealOptions{Passphrase: testPassphrase}, testArgon2Params); err != nil {
		t.Fatal(err)
	}
	mustWriteFile(t, cfg.PassphraseFile, append(bytes.Clone(testPassphrase), '\n'))
	return cfg
}

func mustOpenSoftware(t testing.TB, cfg SoftwareConfig) *Software {
	t.Helper()
	s, err := OpenSoftware(cfg)
	if err != nil {
		t.Fatalf("OpenSoftware: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSoftware_Kind(t *testing.T) {
	var ks Keystore = mustSoftware(t)
	if ks.Kind() != "software" {
		t.Fatalf("Kind = %q", ks.Kind())
	}
}

func TestSoftware_SealOpenRoundTrip(t *testing.T) {
	s := mustSoftware(t)
	mustGenerateKEK(t, s, kekA)
	for _, n := range []int{0, 1, 16, 32, 33, 1000, MaxPlaintext} {
		for _, aad := range [][]byte{nil, []byte("gkid=42;policy=payments;kek=1;rev=7")} {
			pt := mustRandom(t, n)
			ct := mustSeal(t, s, kekA, pt, aad)
			if len(ct) != n+SealOverhead {
				t.Fatalf("n=%d: sealed length %d, want %d", n, len(ct), n+SealOverhead)
			}
			if n >= 16 && bytes.Contains(ct, pt[:16]) {
				t.Fatalf("n=%d: sealed output contains plaintext", n)
			}
			got := mustOpen(t, s, kekA, ct, aad)
			if !bytes.Equal(got, pt) {
				t.Fatalf("n=%d: round trip mismatch", n)
			}
		}
	}
}

func TestSoftware_SealFreshNonce(t *testing.T) {
	s := mustSoftware(t)
	mustGenerateKEK(t, s, kekA)
	pt := []byte("same plaintext")
	seen := map[string]bool{}
	for range 100 {
		ct := mustSeal(t, s, kekA, pt, nil)
		nonce := string(ct[:12])
		if seen[nonce] {
			t.Fatal("nonce repeated")
		}
		seen[nonce] = true
	}
}

// TestSoftware_Tamper flips every bit of every byte of a sealed output, by
// region, and of the associated data, and truncates and extends both: each
// must fail with ErrIntegrity and return no plaintext.
func TestSoftware_Tamper(t *testing.T) {
	s := mustSoftware(t)
	mustGenerateKEK(t, s, kekA)
	pt := mustRandom(t, 32)
	aad := []byte("gkid=42;policy=payments;kek=1;rev=7")
	ct := mustSeal(t, s, kekA, pt, aad)

	refuse := func(t *testing.T, what string, c, a []byte) {
		t.Helper()
		got, err := s.Open(kekA, c, a)
		if !errors.Is(err, ErrIntegrity) {
			t.Fatalf("%s: err = %v, want ErrIntegrity", what, err)
		}
		if got != nil {
			t.Fatalf("%s: plaintext returned with the error", what)
		}
	}
	regions := []struct {
		name       string
		start, end int
	}{
		{"nonce", 0, 12},
		{"ciphertext", 12, 12 + len(pt)},
		{"tag", 12 + len(pt), len(ct)},
	}
	for _, r := range regions {
		t.Run(r.name, func(t *testing.T) {
			for i := r.start; i < r.end; i++ {
				for bit := range 8 {
					c := bytes.Clone(ct)
					c[i] ^= 1 << bit
					refuse(t, fmt.Sprintf("byte %d bit %d", i, bit), c, aad)
				}
			}
		})
	}
	t.Run("aad", func(t *testing.T) {
		for i := range aad {
			for bit := range 8 {
				a := bytes.Clone(aad)
				a[i] ^= 1 << bit
				refuse(t, fmt.Sprintf("aad byte %d bit %d", i, bit), ct, a)
			}
		}
		refuse(t, "aad nil", ct, nil)
		refuse(t, "aad truncated", ct, aad[:len(aad)-1])
		refuse(t, "aad extended", ct, append(bytes.Clone(aad), 0))
	})
	t.Run("length", func(t *testing.T) {
		for n := range len(ct) {
			refuse(t, fmt.Sprintf("truncated to %d", n), ct[:n], aad)
		}
		refuse(t, "extended", append(bytes.Clone(ct), 0), aad)
		refuse(t, "nil", nil, aad)
		refuse(t, "too long", make([]byte, MaxPlaintext+SealOverhead+1), aad)
	})
	// The untouched input still opens.
	if got := mustOpen(t, s, kekA, ct, aad); !bytes.Equal(got, pt) {
		t.Fatal("round trip mismatch")
	}
}

func TestSoftware_WrongKEK(t *testing.T) {
	s := mustSoftware(t)
	mustGenerateKEK(t, s, kekA)
	mustGenerateKEK(t, s, kekB)
	mustGenerateKEK(t, s, kekC)
	ct := mustSeal(t, s, kekA, []byte("material"), nil)
	for _, id := range []KEKID{kekB, kekC} {
		_, err := s.Open(id, ct, nil)
		wantErr(t, err, ErrIntegrity, "open under "+id.String())
	}
	_, err := s.Open(KEKID{Policy: "never", Version: 1}, ct, nil)
	wantErr(t, err, ErrKEKNotLoaded, "open under an unknown kek")
}

func TestSoftware_OpenBeforeLoadKEK(t *testing.T) {
	master := mustRandom(t, 32)
	a := mustSoftwareFromKey(t, master)
	b := mustSoftwareFromKey(t, master)
	wrapped := mustGenerateKEK(t, a, kekA)
	ct := mustSeal(t, a, kekA, []byte("material"), []byte("aad"))

	_, err := b.Open(kekA, ct, []byte("aad"))
	wantErr(t, err, ErrKEKNotLoaded, "open before LoadKEK")
	_, err = b.Seal(kekA, []byte("x"), nil)
	wantErr(t, err, ErrKEKNotLoaded, "seal before LoadKEK")

	if err := b.LoadKEK(kekA, wrapped); err != nil {
		t.Fatalf("LoadKEK: %v", err)
	}
	if got := mustOpen(t, b, kekA, ct, []byte("aad")); string(got) != "material" {
		t.Fatalf("got %q", got)
	}
}

func TestSoftware_LoadKEKUnderOtherID(t *testing.T) {
	master := mustRandom(t, 32)
	a := mustSoftwareFromKey(t, master)
	wrapped := mustGenerateKEK(t, a, kekA)
	for _, id := range []KEKID{
		kekB,                                   // other version
		kekC,                                   // other policy
		{Policy: "payments", Version: 1 << 24}, // version bytes shuffled
		{Policy: "payment", Version: 1},
		{Policy: "payments\x01", Version: 1},
	} {
		b := mustSoftwareFromKey(t, master)
		wantErr(t, b.LoadKEK(id, wrapped), ErrIntegrity, "load kek wrapped for "+kekA.String()+" as "+id.String())
		_, err := b.Seal(id, []byte("x"), nil)
		wantErr(t, err, ErrKEKNotLoaded, "seal after a failed LoadKEK")
	}
}

func TestSoftware_LoadKEKTampered(t *testing.T) {
	master := mustRandom(t, 32)
	a := mustSoftwareFromKey(t, master)
	wrapped := mustGenerateKEK(t, a, kekA)
	b := mustSoftwareFromKey(t, master)
	for i := range wrapped {
		w := bytes.Clone(wrapped)
		w[i] ^= 0x80
		wantErr(t, b.LoadKEK(kekA, w), ErrIntegrity, fmt.Sprintf("wrapped kek byte %d flipped", i))
	}
	wantErr(t, b.LoadKEK(kekA, wrapped[:len(wrapped)-1]), ErrIntegrity, "truncated wrapped kek")
	wantErr(t, b.LoadKEK(kekA, append(bytes.Clone(wrapped), 0)), ErrIntegrity, "extended wrapped kek")
	wantErr(t, b.LoadKEK(kekA, nil), ErrIntegrity, "empty wrapped kek")

	other := mustSoftware(t) // another master key
	wantErr(t, other.LoadKEK(kekA, wrapped), ErrIntegrity, "wrapped kek under another master key")

	if err := b.LoadKEK(kekA, wrapped); err != nil {
		t.Fatalf("LoadKEK of the intact blob: %v", err)
	}
}

func TestSoftware_GenerateAndLoadIdempotence(t *testing.T) {
	s := mustSoftware(t)
	wrapped := mustGenerateKEK(t, s, kekA)
	if len(wrapped) != 32+SealOverhead {
		t.Fatalf("wrapped kek is %d bytes, want %d", len(wrapped), 32+SealOverhead)
	}
	// Generating again for the same id is allowed (a failed proposal is
	// retried) and gives another KEK; the loaded one is not touched.
	again, err := s.GenerateKEK(kekA)
	if err != nil || bytes.Equal(again, wrapped) {
		t.Fatalf("second GenerateKEK: %v (same blob: %v)", err, bytes.Equal(again, wrapped))
	}
	ct := mustSeal(t, s, kekA, []byte("material"), nil)
	// Loading a loaded id is a no-op, whatever the blob: the KEK in use is
	// not replaced.
	if err := s.LoadKEK(kekA, wrapped); err != nil {
		t.Fatalf("LoadKEK of a loaded id: %v", err)
	}
	if err := s.LoadKEK(kekA, []byte("garbage")); err != nil {
		t.Fatalf("LoadKEK of a loaded id: %v", err)
	}
	mustOpen(t, s, kekA, ct, nil)
}

func TestSoftware_InvalidKEKID(t *testing.T) {
	s := mustSoftware(t)
	for _, id := range []KEKID{
		{Policy: "", Version: 1},
		{Policy: "a\x00b", Version: 1},
		{Policy: strings.Repeat("p", 257), Version: 1},
		selfTestKEKID,
	} {
		_, err := s.GenerateKEK(id)
		wantErr(t, err, ErrInvalidArgument, fmt.Sprintf("GenerateKEK(%q)", id.Policy))
		wantErr(t, s.LoadKEK(id, make([]byte, 60)), ErrInvalidArgument, fmt.Sprintf("LoadKEK(%q)", id.Policy))
	}
	mustGenerateKEK(t, s, KEKID{Policy: strings.Repeat("p", 256), Version: 0})
}

func TestSoftware_Limits(t *testing.T) {
	s := mustSoftware(t)
	mustGenerateKEK(t, s, kekA)
	_, err := s.Seal(kekA, make([]byte, MaxPlaintext+1), nil)
	wantErr(t, err, ErrInvalidArgument, "oversized plaintext")
	_, err = s.Seal(kekA, nil, make([]byte, MaxAAD+1))
	wantErr(t, err, ErrInvalidArgument, "oversized aad")
	ct := mustSeal(t, s, kekA, nil, nil)
	_, err = s.Open(kekA, ct, make([]byte, MaxAAD+1))
	wantErr(t, err, ErrIntegrity, "open with oversized aad")
}

func TestSoftware_Random(t *testing.T) {
	s := mustSoftware(t)
	for _, n := range []int{0, -1, MaxRandom + 1} {
		_, err := s.Random(n)
		wantErr(t, err, ErrInvalidArgument, fmt.Sprintf("Random(%d)", n))
	}
	for _, n := range []int{1, 32, MaxRandom} {
		b, err := s.Random(n)
		if err != nil || len(b) != n {
			t.Fatalf("Random(%d) = %d bytes, %v", n, len(b), err)
		}
	}
	a, _ := s.Random(32)
	b, _ := s.Random(32)
	if bytes.Equal(a, b) {
		t.Fatal("two Random(32) calls returned the same bytes")
	}
}

// TestSoftware_SharedMasterKeyFile is how nodes share KEKs: two keystores
// opened from the same sealed master key file, one generating, the other
// loading the wrapped copy, each opening what the other sealed.
func TestSoftware_SharedMasterKeyFile(t *testing.T) {
	cfg := mustPassphraseConfig(t)
	leader := mustOpenSoftware(t, cfg)
	follower := mustOpenSoftware(t, cfg)

	wrapped := mustGenerateKEK(t, leader, kekA)
	aad := []byte("gkid=1")
	material := mustRandom(t, 32)
	ct := mustSeal(t, leader, kekA, material, aad)

	if err := follower.LoadKEK(kekA, wrapped); err != nil {
		t.Fatalf("follower LoadKEK: %v", err)
	}
	if got := mustOpen(t, follower, kekA, ct, aad); !bytes.Equal(got, material) {
		t.Fatal("follower opened different material")
	}
	back := mustSeal(t, follower, kekA, material, aad)
	if got := mustOpen(t, leader, kekA, back, aad); !bytes.Equal(got, material) {
		t.Fatal("leader opened different material")
	}

	// The same works with a key-file-sealed master key.
	sealed, key := mustKeyFileSealed(t)
	kcfg := SoftwareConfig{MasterKeyFile: sealed, KeyFile: key}
	x := mustOpenSoftware(t, kcfg)
	y := mustOpenSoftware(t, kcfg)
	w := mustGenerateKEK(t, x, kekC)
	if err := y.LoadKEK(kekC, w); err != nil {
		t.Fatalf("LoadKEK: %v", err)
	}
	mustOpen(t, y, kekC, mustSeal(t, x, kekC, material, nil), nil)
	// A keystore under another master key cannot.
	wantErr(t, leader.LoadKEK(kekC, w), ErrIntegrity, "kek from another master key")
}

func TestOpenSoftware_WrongSecret(t *testing.T) {
	cfg := mustPassphraseConfig(t)
	wrong := cfg
	wrong.PassphraseFile = filepath.Join(t.TempDir(), "wrong")
	mustWriteFile(t, wrong.PassphraseFile, []byte("not the passphrase\n"))
	_, err := OpenSoftware(wrong)
	wantErr(t, err, ErrSealed, "wrong passphrase")
	if strings.Contains(err.Error(), "not the passphrase") {
		t.Fatalf("error %q contains the passphrase", err)
	}

	sealed, _ := mustKeyFileSealed(t)
	other := mustKeyFile(t, t.TempDir(), "other.key")
	_, err = OpenSoftware(SoftwareConfig{MasterKeyFile: sealed, KeyFile: other})
	wantErr(t, err, ErrSealed, "wrong key file")

	// A flipped byte in the sealed file.
	data := mustReadFile(t, cfg.MasterKeyFile)
	i := bytes.Index(data, []byte(`"ciphertext": "`)) + len(`"ciphertext": "`) + 3
	data[i] ^= 0x01
	damaged := cfg
	damaged.MasterKeyFile = filepath.Join(t.TempDir(), "damaged.json")
	mustWriteFile(t, damaged.MasterKeyFile, data)
	_, err = OpenSoftware(damaged)
	wantErr(t, err, ErrSealed, "damaged sealed file")

	_, err = OpenSoftware(SoftwareConfig{})
	wantErr(t, err, ErrInvalidArgument, "empty config")
}

func TestOpenSoftware_PassphraseEnv(t *testing.T) {
	cfg := mustPassphraseConfig(t)
	env := SoftwareConfig{MasterKeyFile: cfg.MasterKeyFile, PassphraseEnv: "COFFER_TEST_MASTER_PASSPHRASE"}

	_, err := OpenSoftware(env)
	wantErr(t, err, ErrSealed, "unset variable")

	t.Setenv(env.PassphraseEnv, "")
	_, err = OpenSoftware(env)
	wantErr(t, err, ErrSealed, "empty variable")

	// The variable's value is used exactly: no newline trimming.
	t.Setenv(env.PassphraseEnv, string(testPassphrase)+"\n")
	_, err = OpenSoftware(env)
	wantErr(t, err, ErrSealed, "variable with a trailing newline")

	t.Setenv(env.PassphraseEnv, string(testPassphrase))
	s := mustOpenSoftware(t, env)
	mustGenerateKEK(t, s, kekA)
}

func TestSoftwareConfig_SealOptionsPassphraseFile(t *testing.T) {
	cfg := mustPassphraseConfig(t)
	for _, tc := range []struct {
		name    string
		content string
		ok      bool
	}{
		{"exact", string(testPassphrase), true},
		{"newline", string(testPassphrase) + "\n", true},
		{"crlf", string(testPassphrase) + "\r\n", true},
		{"two newlines", string(testPassphrase) + "\n\n", false},
		{"trailing space", string(testPassphrase) + " \n", false},
		{"leading space", " " + string(testPassphrase), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg
			c.PassphraseFile = filepath.Join(t.TempDir(), "pass")
			mustWriteFile(t, c.PassphraseFile, []byte(tc.content))
			s, err := OpenSoftware(c)
			if tc.ok {
				if err != nil {
					t.Fatalf("OpenSoftware: %v", err)
				}
				s.Close()
			} else {
				wantErr(t, err, ErrSealed, "OpenSoftware")
			}
		})
	}
	for _, content := range []string{"", "\n", "\r\n"} {
		c := cfg
		c.PassphraseFile = filepath.Join(t.TempDir(), "pass")
		mustWriteFile(t, c.PassphraseFile, []byte(content))
		_, err := c.SealOptions()
		wantErr(t, err, ErrSealed, fmt.Sprintf("passphrase file %q", content))
	}
	c := cfg
	c.PassphraseFile = filepath.Join(t.TempDir(), "missing")
	_, err := c.SealOptions()
	wantErr(t, err, ErrSealed, "missing passphrase file")
}

func TestSoftwareConfig_Validate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  SoftwareConfig
		ok   bool
	}{
		{"default", DefaultSoftwareConfig(), true},
		{"passphrase file", SoftwareConfig{MasterKeyFile: "m", PassphraseFile: "p"}, true},
		{"passphrase env", SoftwareConfig{MasterKeyFile: "m", PassphraseEnv: "P"}, true},
		{"key file", SoftwareConfig{MasterKeyFile: "m", KeyFile: "k"}, true},
		{"empty", SoftwareConfig{}, false},
		{"no master key file", SoftwareConfig{PassphraseEnv: "P"}, false},
		{"no secret", SoftwareConfig{MasterKeyFile: "m"}, false},
		{"file and env", SoftwareConfig{MasterKeyFile: "m", PassphraseFile: "p", PassphraseEnv: "P"}, false},
		{"file and key", SoftwareConfig{MasterKeyFile: "m", PassphraseFile: "p", KeyFile: "k"}, false},
		{"env and key", SoftwareConfig{MasterKeyFile: "m", PassphraseEnv: "P", KeyFile: "k"}, false},
		{"all three", SoftwareConfig{MasterKeyFile: "m", PassphraseFile: "p", PassphraseEnv: "P", KeyFile: "k"}, false},
		{"default plus key file", func() SoftwareConfig { c := DefaultSoftwareConfig(); c.KeyFile = "k"; return c }(), false},
		{"env name with =", SoftwareConfig{MasterKeyFile: "m", PassphraseEnv: "A=B"}, false},
		{"key file is master file", SoftwareConfig{MasterKeyFile: "m", KeyFile: "m"}, false},
		{"passphrase file is master file", SoftwareConfig{MasterKeyFile: "m", PassphraseFile: "m"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.ok && err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("Validate: err = %v, want ErrInvalidArgument", err)
			}
		})
	}
}

func TestNewSoftwareFromKey(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		_, err := NewSoftwareFromKey(make([]byte, n))
		wantErr(t, err, ErrInvalidArgument, fmt.Sprintf("%d-byte master key", n))
	}
	// The key is not retained: zeroing the caller's copy changes nothing.
	master := mustRandom(t, 32)
	a := mustSoftwareFromKey(t, master)
	b := mustSoftwareFromKey(t, bytes.Clone(master))
	clear(master)
	w := mustGenerateKEK(t, a, kekA)
	if err := b.LoadKEK(kekA, w); err != nil {
		t.Fatalf("LoadKEK: %v", err)
	}
	mustOpen(t, b, kekA, mustSeal(t, a, kekA, []byte("m"), nil), nil)
	c := mustSoftwareFromKey(t, master) // the zeroed key is a different key
	wantErr(t, c.LoadKEK(kekA, w), ErrIntegrity, "load under the zeroed key")
}

func TestSoftware_SelfTest(t *testing.T) {
	s := mustSoftware(t)
	if err := s.SelfTest(); err != nil {
		t.Fatalf("SelfTest: %v", err)
	}
	if err := checkGCMVector(katGCM); err != nil {
		t.Fatalf("known-answer vector: %v", err)
	}
	// The known-answer test can fail: any change to the vector is caught.
	clone := func() gcmVector {
		return gcmVector{
			key: bytes.Clone(katGCM.key), nonce: bytes.Clone(katGCM.nonce),
			plaintext: bytes.Clone(katGCM.plaintext), aad: bytes.Clone(katGCM.aad),
			ciphertext: bytes.Clone(katGCM.ciphertext), tag: bytes.Clone(katGCM.tag),
		}
	}
	for _, tc := range []struct {
		name   string
		mutate func(v *gcmVector)
	}{
		{"key", func(v *gcmVector) { v.key[31] ^= 1 }},
		{"nonce", func(v *gcmVector) { v.nonce[0] ^= 1 }},
		{"plaintext", func(v *gcmVector) { v.plaintext[5] ^= 1 }},
		{"aad", func(v *gcmVector) { v.aad[0] ^= 1 }},
		{"ciphertext", func(v *gcmVector) { v.ciphertext[59] ^= 1 }},
		{"tag", func(v *gcmVector) { v.tag[0] ^= 1 }},
	} {
		v := clone()
		tc.mutate(&v)
		if err := checkGCMVector(v); err == nil {
			t.Errorf("known-answer test passed with an altered %s", tc.name)
		}
	}
	// The self-test does not leave its throwaway KEK loaded.
	_, err := s.Seal(selfTestKEKID, []byte("x"), nil)
	wantErr(t, err, ErrKEKNotLoaded, "seal under the self-test id")
}

func TestSoftware_Close(t *testing.T) {
	s, err := NewSoftwareFromKey(mustRandom(t, 32))
	if err != nil {
		t.Fatal(err)
	}
	wrapped := mustGenerateKEK(t, s, kekA)
	ct := mustSeal(t, s, kekA, []byte("m"), nil)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if s.Kind() != KindSoftware {
		t.Fatal("Kind changed after Close")
	}
	_, err = s.Random(8)
	wantErr(t, err, ErrClosed, "Random")
	_, err = s.GenerateKEK(kekB)
	wantErr(t, err, ErrClosed, "GenerateKEK")
	wantErr(t, s.LoadKEK(kekA, wrapped), ErrClosed, "LoadKEK of a previously loaded id")
	wantErr(t, s.LoadKEK(kekB, wrapped), ErrClosed, "LoadKEK")
	_, err = s.Seal(kekA, []byte("m"), nil)
	wantErr(t, err, ErrClosed, "Seal")
	_, err = s.Open(kekA, ct, nil)
	wantErr(t, err, ErrClosed, "Open")
	wantErr(t, s.SelfTest(), ErrClosed, "SelfTest")
	wantErr(t, s.Close(), ErrClosed, "second Close")
	if s.master != nil || s.keks != nil {
		t.Fatal("Close left key material referenced")
	}
}

// TestSoftware_Concurrent runs Seal and Open on several KEKs from many
// goroutines while other goroutines load and generate KEKs and run the
// self-test, then closes the keystore under load. Run with -race.
func TestSoftware_Concurrent(t *testing.T) {
	master := mustRandom(t, 32)
	s := mustSoftwareFromKey(t, master)
	peer := mustSoftwareFromKey(t, master)
	ids := []KEKID{kekA, kekB, kekC}
	for _, id := range ids {
		if err := s.LoadKEK(id, mustGenerateKEK(t, peer, id)); err != nil {
			t.Fatal(err)
		}
	}

	exerciseConcurrently(t, s, peer, ids, 200, 50, 20)
}

// TestSoftware_HotPathAllocations checks that Seal and Open allocate only
// their output.
func TestSoftware_HotPathAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector")
	}
	s := mustSoftware(t)
	mustGenerateKEK(t, s, kekA)
	pt := mustRandom(t, 32)
	aad := []byte("gkid=42")
	ct := mustSeal(t, s, kekA, pt, aad)
	if n := testing.AllocsPerRun(200, func() { s.Seal(kekA, pt, aad) }); n > 1 {
		t.Errorf("Seal allocates %.1f times per call, want 1", n)
	}
	if n := testing.AllocsPerRun(200, func() { s.Open(kekA, ct, aad) }); n > 1 {
		t.Errorf("Open allocates %.1f times per call, want 1", n)
	}
}

func BenchmarkSoftwareSealOpen(b *testing.B) {
	s := mustSoftware(b)
	mustGenerateKEK(b, s, kekA)
	material := mustRandom(b, 32)
	aad := []byte("gkid=0123456789abcdef;policy=payments;kek=1;rev=1")
	ct := mustSeal(b, s, kekA, material, aad)

	b.Run("SealOpen", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c, err := s.Seal(kekA, material, aad)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Open(kekA, c, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Seal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Seal(kekA, material, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Open", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Open(kekA, ct, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("SealOpenParallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c, err := s.Seal(kekA, material, aad)
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := s.Open(kekA, c, aad); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

func FuzzSoftwareOpen(f *testing.F) {
	s := mustSoftwareFromKey(f, bytes.Repeat([]byte{7}, 32))
	mustGenerateKEK(f, s, kekA)
	pt := []byte("fuzz material")
	aad := []byte("fuzz aad")
	ct := mustSeal(f, s, kekA, pt, aad)
	f.Add(ct, aad)
	f.Add([]byte{}, []byte{})
	f.Add(make([]byte, SealOverhead), aad)
	f.Fuzz(func(t *testing.T, c, a []byte) {
		got, err := s.Open(kekA, c, a)
		if err != nil {
			if !errors.Is(err, ErrIntegrity) {
				t.Fatalf("err = %v, want ErrIntegrity", err)
			}
			if got != nil {
				t.Fatal("plaintext returned with an error")
			}
			return
		}
		if !bytes.Equal(c, ct) || !bytes.Equal(a, aad) || !bytes.Equal(got, pt) {
			t.Fatal("Open accepted input that Seal did not produce")
		}
	})
}

func TestSoftware_SignerDerivation(t *testing.T) {
	key := bytes.Repeat([]byte{9}, 32)
	a, _ := NewSoftwareFromKey(key)
	b, _ := NewSoftwareFromKey(key)
	other, _ := NewSoftwareFromKey(bytes.Repeat([]byte{8}, 32))
	sa, err := a.Signer("audit/n1")
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := b.Signer("audit/n1")
	s2, _ := a.Signer("audit/n2")
	so, _ := other.Signer("audit/n1")
	pub := func(s crypto.Signer) []byte { return s.Public().(ed25519.PublicKey) }
	if !bytes.Equal(pub(sa), pub(sb)) {
		t.Fatal("same master key and label gave different keys")
	}
	if bytes.Equal(pub(sa), pub(s2)) || bytes.Equal(pub(sa), pub(so)) {
		t.Fatal("different labels or master keys gave the same key")
	}
	msg := []byte("digest")
	sig, err := sa.Sign(nil, msg, crypto.Hash(0))
	if err != nil || !ed25519.Verify(pub(sb), msg, sig) {
		t.Fatalf("signature does not verify: %v", err)
	}
	if _, err := a.Signer(""); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("empty label: %v", err)
	}
	_ = a.Close()
	if _, err := a.Signer("audit/n1"); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: %v", err)
	}
}
