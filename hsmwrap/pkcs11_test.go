package hsmwrap

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"
)

// The PKCS#11 tests run against a real SoftHSM2. SoftHSM reads
// SOFTHSM2_CONF once, at C_Initialize, and a module is initialised once per
// process, so TestMain creates one token directory for the whole test
// binary, with testTokenCount tokens in it (softhsm2-util), before anything
// loads the module; each test then takes tokens of its own with mustToken,
// which makes more in process (C_InitToken) once those are taken. Few are
// made up front because every fuzzing worker process runs TestMain too.

const (
	defaultSoftHSM2Module = "/usr/lib/softhsm/libsofthsm2.so"
	testTokenCount        = 4
)

// testToken is one SoftHSM2 token made for the tests.
type testToken struct {
	label     string
	pin       string
	pinFile   string
	soPINFile string
}

var softhsm struct {
	module string
	dir    string
	skip   string // why the PKCS#11 tests skip; empty when they run
	tokens []testToken
	next   atomic.Int32
}

func TestMain(m *testing.M) {
	dir, err := setupSoftHSM()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hsmwrap tests:", err)
		os.Exit(1)
	}
	code := m.Run()
	if dir != "" {
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// setupSoftHSM creates the token directory and its tokens, or records why
// the PKCS#11 tests skip. SoftHSM2 missing is a failure when CI is set
// (CI=true, as CI systems set it).
func setupSoftHSM() (dir string, err error) {
	softhsm.module = os.Getenv("SOFTHSM2_MODULE")
	if softhsm.module == "" {
		softhsm.module = defaultSoftHSM2Module
	}
	var missing []string
	if _, err := os.Stat(softhsm.module); err != nil {
		missing = append(missing, fmt.Sprintf("module %s (set SOFTHSM2_MODULE to another path)", softhsm.module))
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		missing = append(missing, "softhsm2-util")
	}
	if len(missing) > 0 {
		msg := "SoftHSM2 is not installed: no " + strings.Join(missing, ", no ") + "; `make softhsm` installs it"
		if ci := os.Getenv("CI"); ci != "" && ci != "false" {
			return "", fmt.Errorf("%s (CI=%s, so this is a failure)", msg, ci)
		}
		softhsm.skip = msg + "; skipping the PKCS#11 tests"
		return "", nil
	}

	dir, err = os.MkdirTemp("", "coffer-softhsm-")
	if err != nil {
		return "", err
	}
	softhsm.dir = dir
	tokens := filepath.Join(dir, "tokens")
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		return dir, err
	}
	confText := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(confText), 0o600); err != nil {
		return dir, err
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return dir, err
	}
	for i := range testTokenCount {
		tok := testToken{
			label:     fmt.Sprintf("coffer-test-%02d", i),
			pin:       fmt.Sprintf("user-pin-%02d", i),
			pinFile:   filepath.Join(dir, fmt.Sprintf("pin-%02d", i)),
			soPINFile: filepath.Join(dir, fmt.Sprintf("so-pin-%02d", i)),
		}
		soPIN := fmt.Sprintf("so-pin-%02d", i)
		out, err := exec.Command(util, "--init-token", "--free", "--label", tok.label, "--pin", tok.pin, "--so-pin", soPIN).CombinedOutput()
		if err != nil {
			return dir, fmt.Errorf("softhsm2-util --init-token %s: %v\n%s", tok.label, err, out)
		}
		if err := os.WriteFile(tok.pinFile, []byte(tok.pin+"\n"), 0o600); err != nil {
			return dir, err
		}
		if err := os.WriteFile(tok.soPINFile, []byte(soPIN+"\n"), 0o600); err != nil {
			return dir, err
		}
		softhsm.tokens = append(softhsm.tokens, tok)
	}
	return dir, nil
}

func needSoftHSM(t testing.TB) {
	t.Helper()
	if softhsm.skip != "" {
		t.Skip(softhsm.skip)
	}
}

// mustToken hands out a token no other test uses: one TestMain made, or,
// once those are taken, a new one made in process.
func mustToken(t testing.TB) testToken {
	t.Helper()
	needSoftHSM(t)
	i := int(softhsm.next.Add(1)) - 1
	if i < len(softhsm.tokens) {
		return softhsm.tokens[i]
	}
	tok, err := createToken(i)
	if err != nil {
		t.Fatalf("creating SoftHSM token %d: %v", i, err)
	}
	return tok
}

var createTokenMu sync.Mutex

// createToken initialises SoftHSM's free slot (SoftHSM adds a new free slot
// after each initialisation) as token i, with C_InitToken and C_InitPIN.
func createToken(i int) (testToken, error) {
	createTokenMu.Lock()
	defer createTokenMu.Unlock()
	dir := softhsm.dir
	tok := testToken{
		label:     fmt.Sprintf("coffer-test-%02d", i),
		pin:       fmt.Sprintf("user-pin-%02d", i),
		pinFile:   filepath.Join(dir, fmt.Sprintf("pin-%02d", i)),
		soPINFile: filepath.Join(dir, fmt.Sprintf("so-pin-%02d", i)),
	}
	soPIN := fmt.Sprintf("so-pin-%02d", i)
	mod, err := loadModule(softhsm.module)
	if err != nil {
		return tok, err
	}
	defer mod.release()
	ctx := mod.ctx
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return tok, err
	}
	free, found := uint(0), false
	for _, slot := range slots {
		if info, err := ctx.GetTokenInfo(slot); err == nil && info.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			free, found = slot, true
			break
		}
	}
	if !found {
		return tok, errors.New("SoftHSM has no free slot")
	}
	if err := ctx.InitToken(free, soPIN, tok.label); err != nil {
		return tok, fmt.Errorf("C_InitToken: %w", err)
	}
	s, err := ctx.OpenSession(free, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return tok, err
	}
	defer ctx.CloseSession(s)
	if err := ctx.Login(s, pkcs11.CKU_SO, soPIN); err != nil {
		return tok, fmt.Errorf("C_Login(SO): %w", err)
	}
	if err := ctx.InitPIN(s, tok.pin); err != nil {
		return tok, fmt.Errorf("C_InitPIN: %w", err)
	}
	if err := ctx.Logout(s); err != nil {
		return tok, err
	}
	if err := os.WriteFile(tok.pinFile, []byte(tok.pin+"\n"), 0o600); err != nil {
		return tok, err
	}
	return tok, os.WriteFile(tok.soPINFile, []byte(soPIN+"\n"), 0o600)
}

// config returns a keystore config for the token, PIN from its file.
func (tok testToken) config() PKCS11Config {
	cfg := DefaultPKCS11Config()
	cfg.Module = softhsm.module
	cfg.TokenLabel = tok.label
	cfg.PINEnv = ""
	cfg.PINFile = tok.pinFile
	cfg.SessionPoolSize = 4
	return cfg
}

// soConfig is config plus the SO PIN, for ExportMasterKey.
func (tok testToken) soConfig() PKCS11Config {
	cfg := tok.config()
	cfg.SOPINFile = tok.soPINFile
	return cfg
}

func mustInitMasterKey(t testing.TB, cfg PKCS11Config) {
	t.Helper()
	if err := InitMasterKey(cfg); err != nil {
		t.Fatalf("InitMasterKey: %v", err)
	}
}

func mustOpenPKCS11(t testing.TB, cfg PKCS11Config) *PKCS11 {
	t.Helper()
	p, err := OpenPKCS11(cfg)
	if err != nil {
		t.Fatalf("OpenPKCS11: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// mustPKCS11 returns a keystore on a fresh token with a fresh master key.
func mustPKCS11(t testing.TB) (*PKCS11, PKCS11Config) {
	t.Helper()
	cfg := mustToken(t).config()
	mustInitMasterKey(t, cfg)
	return mustOpenPKCS11(t, cfg), cfg
}

// mustNewKEK generates a KEK for id on ks and loads the blob, as a node
// loads the committed copy.
func mustNewKEK(t testing.TB, ks Keystore, id KEKID) []byte {
	t.Helper()
	w, err := ks.GenerateKEK(id)
	if err != nil {
		t.Fatalf("GenerateKEK(%s): %v", id, err)
	}
	if err := ks.LoadKEK(id, w); err != nil {
		t.Fatalf("LoadKEK(%s): %v", id, err)
	}
	return w
}

func mustSealWith(t testing.TB, ks Keystore, id KEKID, pt, aad []byte) []byte {
	t.Helper()
	ct, err := ks.Seal(id, pt, aad)
	if err != nil {
		t.Fatalf("%s Seal(%s): %v", ks.Kind(), id, err)
	}
	return ct
}

func mustOpenWith(t testing.TB, ks Keystore, id KEKID, ct, aad []byte) []byte {
	t.Helper()
	pt, err := ks.Open(id, ct, aad)
	if err != nil {
		t.Fatalf("%s Open(%s): %v", ks.Kind(), id, err)
	}
	return pt
}

// closeAllSessions closes every session of this process on the keystore's
// token behind the keystore's back: the session objects (loaded KEKs) die
// and the token is logged out.
func closeAllSessions(t testing.TB, p *PKCS11) {
	t.Helper()
	p.opMu.RLock()
	slot := p.ep.slot
	p.opMu.RUnlock()
	if err := p.ctx.CloseAllSessions(slot); err != nil {
		t.Fatalf("C_CloseAllSessions: %v", err)
	}
}

func TestPKCS11Config_Validate(t *testing.T) {
	slot := uint(3)
	ok := PKCS11Config{Module: "/m.so", TokenLabel: "t", PINFile: "/pin", MasterKeyLabel: "m"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	def := DefaultPKCS11Config()
	if def.MasterKeyLabel != DefaultMasterKeyLabel || def.PINEnv != DefaultPINEnv || def.SessionPoolSize < 2 {
		t.Fatalf("DefaultPKCS11Config = %+v", def)
	}
	for name, mod := range map[string]func(*PKCS11Config){
		"no module":           func(c *PKCS11Config) { c.Module = "" },
		"no token":            func(c *PKCS11Config) { c.TokenLabel = "" },
		"token and slot":      func(c *PKCS11Config) { c.Slot = &slot },
		"long token label":    func(c *PKCS11Config) { c.TokenLabel = strings.Repeat("t", 33) },
		"no pin":              func(c *PKCS11Config) { c.PINFile = "" },
		"pin file and env":    func(c *PKCS11Config) { c.PINEnv = "X" },
		"bad pin env":         func(c *PKCS11Config) { c.PINFile, c.PINEnv = "", "A=B" },
		"so pin file and env": func(c *PKCS11Config) { c.SOPINFile, c.SOPINEnv = "/so", "SO" },
		"no master label":     func(c *PKCS11Config) { c.MasterKeyLabel = "" },
		"long master label":   func(c *PKCS11Config) { c.MasterKeyLabel = strings.Repeat("m", 65) },
		"negative pool":       func(c *PKCS11Config) { c.SessionPoolSize = -1 },
		"huge pool":           func(c *PKCS11Config) { c.SessionPoolSize = MaxSessionPoolSize + 1 },
	} {
		c := ok
		mod(&c)
		wantErr(t, c.Validate(), ErrInvalidArgument, name)
	}
	bySlot := ok
	bySlot.TokenLabel, bySlot.Slot = "", &slot
	if err := bySlot.Validate(); err != nil {
		t.Fatalf("slot config: %v", err)
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		rv   uint
		kind callKind
		want errClass
	}{
		{pkcs11.CKR_SESSION_HANDLE_INVALID, callPlain, classLost},
		{pkcs11.CKR_USER_NOT_LOGGED_IN, callVerify, classLost},
		{pkcs11.CKR_DEVICE_REMOVED, callPlain, classLost},
		{pkcs11.CKR_TOKEN_NOT_PRESENT, callPlain, classLost},
		{pkcs11.CKR_KEY_HANDLE_INVALID, callPlain, classLost},
		{pkcs11.CKR_PIN_INCORRECT, callPlain, classPIN},
		{pkcs11.CKR_PIN_LOCKED, callPlain, classPIN},
		{pkcs11.CKR_ENCRYPTED_DATA_INVALID, callVerify, classIntegrity},
		{pkcs11.CKR_SIGNATURE_INVALID, callVerify, classIntegrity},
		{ckrAEADDecryptFailed, callVerify, classIntegrity},
		{pkcs11.CKR_GENERAL_ERROR, callVerify, classAmbiguous},
		{pkcs11.CKR_GENERAL_ERROR, callPlain, classDevice},
		{pkcs11.CKR_SIGNATURE_INVALID, callPlain, classDevice},
		{pkcs11.CKR_HOST_MEMORY, callVerify, classDevice},
	} {
		if got := classify(c.rv, c.kind); got != c.want {
			t.Errorf("classify(%s, %d) = %d, want %d", rvName(c.rv), c.kind, got, c.want)
		}
	}
	err := mapRV("C_Decrypt", callVerify, pkcs11.Error(pkcs11.CKR_ENCRYPTED_DATA_INVALID))
	wantErr(t, err, ErrIntegrity, "mapped decrypt failure")
	if !strings.Contains(err.Error(), "C_Decrypt") || !strings.Contains(err.Error(), "CKR_ENCRYPTED_DATA_INVALID") {
		t.Errorf("error %q does not name the call and the return value", err)
	}
	wantErr(t, mapRV("C_Login", callPlain, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)), ErrSealed, "mapped PIN failure")
	wantErr(t, mapRV("C_Encrypt", callPlain, pkcs11.Error(pkcs11.CKR_DEVICE_REMOVED)), ErrUnavailable, "mapped device loss")
	wantErr(t, mapRV("C_Encrypt", callPlain, errors.New("odd")), ErrUnavailable, "mapped non-PKCS#11 failure")
	if mapRV("C_Encrypt", callPlain, nil) != nil {
		t.Error("mapRV(nil) is not nil")
	}
}

func TestOpenPKCS11(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	var ks Keystore = p
	if ks.Kind() != KindPKCS11 {
		t.Fatalf("Kind = %q", ks.Kind())
	}
	if err := p.Healthy(); err != nil {
		t.Fatalf("Healthy = %v", err)
	}
	if err := p.SelfTest(); err != nil {
		t.Fatalf("SelfTest: %v", err)
	}
}

func TestOpenPKCS11_BySlotAndPINEnv(t *testing.T) {
	t.Parallel()
	tok := mustToken(t)
	cfg := tok.config()
	mustInitMasterKey(t, cfg)
	p := mustOpenPKCS11(t, cfg)
	p.opMu.RLock()
	slot := p.ep.slot
	p.opMu.RUnlock()

	env := "COFFER_TEST_PIN_" + strings.ReplaceAll(tok.label, "-", "_")
	os.Setenv(env, tok.pin) // not t.Setenv: the test is parallel
	t.Cleanup(func() { os.Unsetenv(env) })
	cfg2 := cfg
	cfg2.TokenLabel, cfg2.Slot = "", &slot
	cfg2.PINFile, cfg2.PINEnv = "", env
	q := mustOpenPKCS11(t, cfg2)
	// Two keystores on one token share its login; both work, and closing
	// one leaves the other working.
	w := mustNewKEK(t, p, kekA)
	if err := q.LoadKEK(kekA, w); err != nil {
		t.Fatal(err)
	}
	ct := mustSealWith(t, q, kekA, []byte("m"), nil)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if got := mustOpenWith(t, p, kekA, ct, nil); string(got) != "m" {
		t.Fatal("round trip mismatch")
	}
}

func TestOpenPKCS11_WrongPIN(t *testing.T) {
	t.Parallel()
	tok := mustToken(t)
	cfg := tok.config()
	mustInitMasterKey(t, cfg)
	wrong := "wrong-pin-" + tok.pin
	cfg.PINFile = filepath.Join(t.TempDir(), "pin")
	mustWriteFile(t, cfg.PINFile, []byte(wrong))
	_, err := OpenPKCS11(cfg)
	wantErr(t, err, ErrSealed, "OpenPKCS11 with a wrong PIN")
	if !strings.Contains(err.Error(), "refused the PIN") || !strings.Contains(err.Error(), "CKR_PIN_INCORRECT") {
		t.Fatalf("error %q does not say the PIN was refused", err)
	}
	if strings.Contains(err.Error(), wrong) || strings.Contains(err.Error(), tok.pin) {
		t.Fatalf("error %q contains a PIN", err)
	}
	_, err = MasterKeyKCV(cfg)
	wantErr(t, err, ErrSealed, "MasterKeyKCV with a wrong PIN")
}

func TestOpenPKCS11_Refusals(t *testing.T) {
	t.Parallel()
	tok := mustToken(t)
	cfg := tok.config()

	_, err := OpenPKCS11(cfg)
	wantErr(t, err, ErrUnavailable, "OpenPKCS11 without a master key")
	if !strings.Contains(err.Error(), "no master key") {
		t.Fatalf("error %q does not say the master key is missing", err)
	}

	c := cfg
	c.Module = filepath.Join(t.TempDir(), "missing.so")
	_, err = OpenPKCS11(c)
	wantErr(t, err, ErrUnavailable, "OpenPKCS11 with a missing module")

	c = cfg
	c.Module = tok.pinFile // exists, not a library
	_, err = OpenPKCS11(c)
	wantErr(t, err, ErrUnavailable, "OpenPKCS11 with a module that is not a library")

	c = cfg
	c.TokenLabel = "no-such-token"
	_, err = OpenPKCS11(c)
	wantErr(t, err, ErrUnavailable, "OpenPKCS11 with an unknown token")

	c = cfg
	c.PINFile, c.PINEnv = "", "COFFER_TEST_PIN_UNSET"
	_, err = OpenPKCS11(c)
	wantErr(t, err, ErrSealed, "OpenPKCS11 with an unset PIN variable")

	_, err = OpenPKCS11(PKCS11Config{})
	wantErr(t, err, ErrInvalidArgument, "OpenPKCS11 with an empty config")
}

func TestPKCS11_SealOpenRoundTrip(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	mustNewKEK(t, p, kekA)
	for _, n := range []int{0, 1, 15, 16, 32, 33, 1000, MaxPlaintext} {
		for _, aad := range [][]byte{nil, []byte("gkid=42;policy=payments;kek=1;rev=7"), mustRandom(t, MaxAAD)} {
			pt := mustRandom(t, n)
			ct := mustSealWith(t, p, kekA, pt, aad)
			if len(ct) != n+SealOverhead {
				t.Fatalf("n=%d: sealed length %d, want %d", n, len(ct), n+SealOverhead)
			}
			if n >= 16 && bytes.Contains(ct, pt[:16]) {
				t.Fatalf("n=%d: sealed output contains plaintext", n)
			}
			if got := mustOpenWith(t, p, kekA, ct, aad); !bytes.Equal(got, pt) {
				t.Fatalf("n=%d: round trip mismatch", n)
			}
		}
	}
}

func TestPKCS11_SealFreshNonce(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	mustNewKEK(t, p, kekA)
	seen := make(map[string]bool)
	// More than one batch of nonces.
	for range nonceBatch + 10 {
		ct := mustSealWith(t, p, kekA, []byte("same"), nil)
		n := string(ct[:gcmNonceLen])
		if seen[n] {
			t.Fatal("nonce repeated")
		}
		seen[n] = true
	}
}

// TestPKCS11_SealFormatMatchesSoftware checks, with a KEK of known value
// (created for the test as a session object), that Seal's output is
// standard AES-256-GCM laid out as nonce || ciphertext || tag, exactly what
// the software keystore produces and opens, in both directions.
func TestPKCS11_SealFormatMatchesSoftware(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	key := mustRandom(t, 32)
	p.opMu.RLock()
	ep := p.ep
	h, err := p.ctx.CreateObject(ep.obj, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, key),
	})
	if err == nil {
		p.mu.Lock()
		p.keks[kekA] = h
		p.mu.Unlock()
	}
	p.opMu.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	soft, err := newRandomNonceGCM(key)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(key)
	plain, _ := cipher.NewGCM(block)

	pt, aad := mustRandom(t, 32), []byte("aad")
	ct := mustSealWith(t, p, kekA, pt, aad)
	got, err := soft.Open(nil, nil, ct, aad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("software AEAD cannot open the PKCS#11 seal: %v", err)
	}
	got, err = plain.Open(nil, ct[:12], ct[12:], aad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("crypto/cipher GCM cannot open the PKCS#11 seal: %v", err)
	}
	ct2 := soft.Seal(nil, nil, pt, aad)
	if got := mustOpenWith(t, p, kekA, ct2, aad); !bytes.Equal(got, pt) {
		t.Fatal("PKCS#11 Open of a software seal: mismatch")
	}
}

func TestPKCS11_Tamper(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	mustNewKEK(t, p, kekA)
	pt, aad := mustRandom(t, 32), []byte("gkid=1;rev=1")
	ct := mustSealWith(t, p, kekA, pt, aad)
	for i := range ct {
		bad := bytes.Clone(ct)
		bad[i] ^= 0x01
		got, err := p.Open(kekA, bad, aad)
		wantErr(t, err, ErrIntegrity, fmt.Sprintf("byte %d flipped", i))
		if got != nil {
			t.Fatal("Open returned data with an error")
		}
	}
	for _, c := range []struct {
		name    string
		ct, aad []byte
	}{
		{"truncated", ct[:len(ct)-1], aad},
		{"extended", append(bytes.Clone(ct), 0), aad},
		{"too short", ct[:SealOverhead-1], aad},
		{"empty", nil, aad},
		{"too long", make([]byte, MaxPlaintext+SealOverhead+1), aad},
		{"other aad", ct, []byte("gkid=1;rev=2")},
		{"no aad", ct, nil},
		{"oversized aad", ct, make([]byte, MaxAAD+1)},
	} {
		_, err := p.Open(kekA, c.ct, c.aad)
		wantErr(t, err, ErrIntegrity, c.name)
	}
	// Refused input is not a device failure.
	if err := p.Healthy(); err != nil {
		t.Fatalf("Healthy after refused input = %v", err)
	}
	if got := mustOpenWith(t, p, kekA, ct, aad); !bytes.Equal(got, pt) {
		t.Fatal("round trip mismatch after refusals")
	}
}

func TestPKCS11_WrongKEK(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	mustNewKEK(t, p, kekA)
	mustNewKEK(t, p, kekB)
	ct := mustSealWith(t, p, kekA, []byte("material"), nil)
	_, err := p.Open(kekB, ct, nil)
	wantErr(t, err, ErrIntegrity, "Open under another KEK")
}

func TestPKCS11_OpenBeforeLoadKEK(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	w, err := p.GenerateKEK(kekA)
	if err != nil {
		t.Fatal(err)
	}
	// GenerateKEK does not load.
	_, err = p.Seal(kekA, []byte("m"), nil)
	wantErr(t, err, ErrKEKNotLoaded, "Seal before LoadKEK")
	_, err = p.Open(kekA, make([]byte, 40), nil)
	wantErr(t, err, ErrKEKNotLoaded, "Open before LoadKEK")
	if err := p.LoadKEK(kekA, w); err != nil {
		t.Fatal(err)
	}
	ct := mustSealWith(t, p, kekA, []byte("m"), nil)
	mustOpenWith(t, p, kekA, ct, nil)
	if err := p.Healthy(); err != nil {
		t.Fatalf("Healthy = %v", err)
	}
}

func TestPKCS11_LoadKEKUnderOtherID(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	w, err := p.GenerateKEK(kekA)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []KEKID{kekB, kekC, {Policy: "payments", Version: 0}, {Policy: "payments2", Version: 1}, {Policy: "Payments", Version: 1}} {
		wantErr(t, p.LoadKEK(id, w), ErrIntegrity, fmt.Sprintf("LoadKEK(%s) of %s's blob", id, kekA))
		_, err := p.Seal(id, []byte("m"), nil)
		wantErr(t, err, ErrKEKNotLoaded, fmt.Sprintf("Seal(%s) after a refused load", id))
	}
	if err := p.LoadKEK(kekA, w); err != nil {
		t.Fatalf("LoadKEK under its own id: %v", err)
	}
}

func TestPKCS11_LoadKEKTampered(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	w, err := p.GenerateKEK(kekA)
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != pkcs11WrappedKEKLen {
		t.Fatalf("wrapped kek is %d bytes, want %d", len(w), pkcs11WrappedKEKLen)
	}
	for i := range w {
		bad := bytes.Clone(w)
		bad[i] ^= 0x80
		wantErr(t, p.LoadKEK(kekA, bad), ErrIntegrity, fmt.Sprintf("byte %d flipped", i))
	}
	for _, n := range []int{0, 1, kwpLen, len(w) - 1, len(w) + 1, wrappedKEKLen} {
		bad := make([]byte, n)
		copy(bad, w)
		wantErr(t, p.LoadKEK(kekA, bad), ErrIntegrity, fmt.Sprintf("%d-byte blob", n))
	}
	if err := p.Healthy(); err != nil {
		t.Fatalf("Healthy after refused blobs = %v", err)
	}
	if err := p.LoadKEK(kekA, w); err != nil {
		t.Fatalf("LoadKEK of the intact blob: %v", err)
	}
}

func TestPKCS11_GenerateAndLoadIdempotence(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	w1, err := p.GenerateKEK(kekA)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := p.GenerateKEK(kekA) // a retried proposal
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(w1, w2) {
		t.Fatal("two GenerateKEK calls returned the same blob")
	}
	if err := p.LoadKEK(kekA, w1); err != nil {
		t.Fatal(err)
	}
	ct := mustSealWith(t, p, kekA, []byte("m"), nil)
	// Loading again, with any blob, is a no-op: the first KEK stays.
	for _, w := range [][]byte{w1, w2, []byte("garbage")} {
		if err := p.LoadKEK(kekA, w); err != nil {
			t.Fatalf("second LoadKEK: %v", err)
		}
	}
	mustOpenWith(t, p, kekA, ct, nil)
}

func TestPKCS11_InvalidArguments(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	for _, id := range []KEKID{
		{Policy: "", Version: 1},
		{Policy: "a\x00b", Version: 1},
		{Policy: strings.Repeat("p", 257), Version: 1},
		selfTestKEKID,
	} {
		_, err := p.GenerateKEK(id)
		wantErr(t, err, ErrInvalidArgument, fmt.Sprintf("GenerateKEK(%q)", id.Policy))
		wantErr(t, p.LoadKEK(id, make([]byte, pkcs11WrappedKEKLen)), ErrInvalidArgument, fmt.Sprintf("LoadKEK(%q)", id.Policy))
	}
	mustNewKEK(t, p, KEKID{Policy: strings.Repeat("p", 256), Version: 0})
	mustNewKEK(t, p, kekA)
	_, err := p.Seal(kekA, make([]byte, MaxPlaintext+1), nil)
	wantErr(t, err, ErrInvalidArgument, "oversized plaintext")
	_, err = p.Seal(kekA, nil, make([]byte, MaxAAD+1))
	wantErr(t, err, ErrInvalidArgument, "oversized aad")
	for _, n := range []int{0, -1, MaxRandom + 1} {
		_, err := p.Random(n)
		wantErr(t, err, ErrInvalidArgument, fmt.Sprintf("Random(%d)", n))
	}
}

func TestPKCS11_Random(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	for _, n := range []int{1, 32, MaxRandom} {
		b, err := p.Random(n)
		if err != nil || len(b) != n {
			t.Fatalf("Random(%d) = %d bytes, %v", n, len(b), err)
		}
	}
	a, _ := p.Random(32)
	b, _ := p.Random(32)
	if bytes.Equal(a, b) {
		t.Fatal("two Random(32) calls returned the same bytes")
	}
}

// TestPKCS11_KeyCeremony is how HSM-backed nodes share a master key: made
// on one token, carried to two more through transport keys, after which
// every keystore loads the others' KEKs and opens the others' seals. A
// token with a master key of its own shares nothing with them.
func TestPKCS11_KeyCeremony(t *testing.T) {
	t.Parallel()
	src, dst1, dst2, other := mustToken(t), mustToken(t), mustToken(t), mustToken(t)
	mustInitMasterKey(t, src.config())
	mustInitMasterKey(t, other.config())
	for _, dst := range []testToken{dst1, dst2} {
		pub, err := NewTransportKey(dst.config())
		if err != nil {
			t.Fatalf("NewTransportKey: %v", err)
		}
		exp, err := ExportMasterKey(src.soConfig(), pub)
		if err != nil {
			t.Fatalf("ExportMasterKey: %v", err)
		}
		if err := ImportMasterKey(dst.config(), exp); err != nil {
			t.Fatalf("ImportMasterKey: %v", err)
		}
		// The transport key is consumed: a second import has nothing to
		// unwrap with, and would not replace the master key anyway.
		wantErr(t, ImportMasterKey(dst.config(), exp), ErrMasterKeyExists, "second import")
	}

	kcv, err := MasterKeyKCV(src.config())
	if err != nil {
		t.Fatal(err)
	}
	if len(kcv) != 2*kcvLen {
		t.Fatalf("KCV %q", kcv)
	}
	for _, tok := range []testToken{dst1, dst2} {
		got, err := MasterKeyKCV(tok.config())
		if err != nil || got != kcv {
			t.Fatalf("KCV of an importing token = %q, %v; want %q", got, err, kcv)
		}
		same, err := SameMasterKey(src.config(), tok.config())
		if err != nil || !same {
			t.Fatalf("SameMasterKey(source, importer) = %v, %v", same, err)
		}
	}
	otherKCV, err := MasterKeyKCV(other.config())
	if err != nil || otherKCV == kcv {
		t.Fatalf("KCV of an unrelated token = %q, %v", otherKCV, err)
	}
	if same, err := SameMasterKey(src.config(), other.config()); err != nil || same {
		t.Fatalf("SameMasterKey(source, unrelated) = %v, %v", same, err)
	}

	ks := []*PKCS11{mustOpenPKCS11(t, src.config()), mustOpenPKCS11(t, dst1.config()), mustOpenPKCS11(t, dst2.config())}
	for i, gen := range ks {
		id := KEKID{Policy: fmt.Sprintf("policy-%d", i), Version: 1}
		w, err := gen.GenerateKEK(id)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			if err := k.LoadKEK(id, w); err != nil {
				t.Fatalf("keystore %d cannot load keystore %d's KEK: %v", i, i, err)
			}
		}
		aad := []byte(id.String())
		for j, sealer := range ks {
			pt := []byte(fmt.Sprintf("sealed by %d", j))
			ct := mustSealWith(t, sealer, id, pt, aad)
			for _, opener := range ks {
				if got := mustOpenWith(t, opener, id, ct, aad); !bytes.Equal(got, pt) {
					t.Fatal("round trip mismatch across HSMs")
				}
			}
		}
		o := mustOpenPKCS11(t, other.config())
		wantErr(t, o.LoadKEK(id, w), ErrIntegrity, "LoadKEK on a token with another master key")
	}
}

func TestPKCS11_KeyCeremonyRefusals(t *testing.T) {
	t.Parallel()
	src, dst := mustToken(t), mustToken(t)
	mustInitMasterKey(t, src.config())
	wantErr(t, InitMasterKey(src.config()), ErrMasterKeyExists, "second InitMasterKey")
	_, err := NewTransportKey(src.config())
	wantErr(t, err, ErrMasterKeyExists, "NewTransportKey on a token with a master key")

	// A transport key replaced by a newer one: exports to the old one no
	// longer import.
	oldPub, err := NewTransportKey(dst.config())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := NewTransportKey(dst.config())
	if err != nil {
		t.Fatal(err)
	}
	oldFP, _ := TransportKeyFingerprint(oldPub)
	fp, err := TransportKeyFingerprint(pub)
	if err != nil || fp == oldFP || len(fp) != 64 {
		t.Fatalf("fingerprints %q, %q, %v", oldFP, fp, err)
	}

	// Exporting needs the SO PIN, the right one.
	_, err = ExportMasterKey(src.config(), pub)
	wantErr(t, err, ErrInvalidArgument, "ExportMasterKey without the SO PIN")
	wrongSO := src.config()
	wrongSO.SOPINFile = filepath.Join(t.TempDir(), "so")
	mustWriteFile(t, wrongSO.SOPINFile, []byte("not-the-so-pin"))
	_, err = ExportMasterKey(wrongSO, pub)
	wantErr(t, err, ErrSealed, "ExportMasterKey with a wrong SO PIN")

	// Transport keys too small, or not RSA, are refused.
	small, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	_, err = ExportMasterKey(src.soConfig(), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	wantErr(t, err, ErrInvalidArgument, "ExportMasterKey to a 2048-bit key")
	_, err = ExportMasterKey(src.soConfig(), []byte("not pem"))
	wantErr(t, err, ErrInvalidArgument, "ExportMasterKey to garbage")

	oldExp, err := ExportMasterKey(src.soConfig(), oldPub)
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, ImportMasterKey(dst.config(), oldExp), ErrInvalidArgument, "import of an export to a replaced transport key")

	exp, err := ExportMasterKey(src.soConfig(), pub)
	if err != nil {
		t.Fatal(err)
	}
	var e map[string]any
	if err := json.Unmarshal(exp, &e); err != nil {
		t.Fatal(err)
	}
	if e["oaep_hash"] != oaepSHA256 && e["oaep_hash"] != oaepSHA1 {
		t.Fatalf("oaep_hash = %v", e["oaep_hash"])
	}
	edit := func(member string, value any) []byte {
		c := make(map[string]any, len(e))
		for k, v := range e {
			c[k] = v
		}
		c[member] = value
		b, _ := json.Marshal(c)
		return b
	}
	// A damaged wrapped key, or a check value that does not match, leaves
	// no master key behind, and the transport key for another try.
	// Damage the wrapped bytes themselves (not the base64 text, whose
	// flipped character might simply stop being base64).
	w, err := base64.StdEncoding.DecodeString(e["wrapped"].(string))
	if err != nil {
		t.Fatal(err)
	}
	w[len(w)/2] ^= 1
	wantErr(t, ImportMasterKey(dst.config(), edit("wrapped", base64.StdEncoding.EncodeToString(w))), ErrIntegrity, "import of a damaged wrapped key")
	wantErr(t, ImportMasterKey(dst.config(), edit("kcv", "000000")), ErrIntegrity, "import with a wrong check value")
	_, err = MasterKeyKCV(dst.config())
	wantErr(t, err, ErrUnavailable, "MasterKeyKCV after failed imports")
	for _, bad := range [][]byte{
		edit("format", "other"),
		edit("version", 2),
		edit("oaep_hash", "md5"),
		edit("kcv", "abc"),
		edit("extra", 1),
		[]byte("{}"),
		[]byte("[]"),
	} {
		wantErr(t, ImportMasterKey(dst.config(), bad), ErrInvalidArgument, "import of a malformed export "+string(bad))
	}
	if err := ImportMasterKey(dst.config(), exp); err != nil {
		t.Fatalf("import after refusals: %v", err)
	}
	if same, err := SameMasterKey(src.config(), dst.config()); err != nil || !same {
		t.Fatalf("SameMasterKey = %v, %v", same, err)
	}
}

// TestPKCS11_NotInterchangeableWithSoftware: a software keystore and a
// PKCS#11 keystore have different master keys (and blob formats); neither
// loads the other's KEKs.
func TestPKCS11_NotInterchangeableWithSoftware(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	s := mustSoftware(t)
	pw, err := p.GenerateKEK(kekA)
	if err != nil {
		t.Fatal(err)
	}
	sw, err := s.GenerateKEK(kekA)
	if err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.LoadKEK(kekA, pw), ErrIntegrity, "software LoadKEK of a PKCS#11 blob")
	wantErr(t, p.LoadKEK(kekA, sw), ErrIntegrity, "PKCS#11 LoadKEK of a software blob")
	// Same length as a PKCS#11 blob, made by the software keystore's
	// master key: still refused.
	wantErr(t, p.LoadKEK(kekA, sw[:pkcs11WrappedKEKLen]), ErrIntegrity, "PKCS#11 LoadKEK of a truncated software blob")
}

// TestPKCS11_SessionLossRecovery closes every session behind the keystore's
// back (which destroys the loaded KEK objects and logs the token out); the
// keystore re-establishes and every operation still succeeds.
func TestPKCS11_SessionLossRecovery(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	mustNewKEK(t, p, kekA)
	mustNewKEK(t, p, kekB)
	pt := []byte("material")
	ctA := mustSealWith(t, p, kekA, pt, nil)
	ctB := mustSealWith(t, p, kekB, pt, nil)
	wC, err := p.GenerateKEK(kekC)
	if err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name string
		op   func() error
	}{
		{"Seal", func() error { _, err := p.Seal(kekA, pt, nil); return err }},
		{"Open", func() error {
			got, err := p.Open(kekB, ctB, nil)
			if err == nil && !bytes.Equal(got, pt) {
				err = errors.New("mismatch")
			}
			return err
		}},
		{"LoadKEK", func() error { return p.LoadKEK(kekC, wC) }},
		{"GenerateKEK", func() error { _, err := p.GenerateKEK(kekC); return err }},
		{"Random", func() error { _, err := p.Random(16); return err }},
		{"SelfTest", p.SelfTest},
	}
	for _, step := range steps {
		closeAllSessions(t, p)
		if err := step.op(); err != nil {
			t.Fatalf("%s after losing every session: %v", step.name, err)
		}
		if err := p.Healthy(); err != nil {
			t.Fatalf("Healthy after %s = %v", step.name, err)
		}
	}
	closeAllSessions(t, p)
	if got := mustOpenWith(t, p, kekA, ctA, nil); !bytes.Equal(got, pt) {
		t.Fatal("mismatch after recovery")
	}
}

// TestPKCS11_LogoutRecovery logs the token out behind the keystore's back.
func TestPKCS11_LogoutRecovery(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	mustNewKEK(t, p, kekA)
	ct := mustSealWith(t, p, kekA, []byte("m"), nil)
	p.opMu.RLock()
	err := p.ctx.Logout(p.ep.obj)
	p.opMu.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	mustOpenWith(t, p, kekA, ct, nil)
	mustSealWith(t, p, kekA, []byte("m"), nil)
}

// TestPKCS11_RecoveryFailure: when the token cannot be re-established
// (here: the PIN changed under the node), operations fail with
// ErrUnavailable, never a partial result, Healthy says why, and once the
// cause is fixed the keystore recovers by itself.
func TestPKCS11_RecoveryFailure(t *testing.T) {
	t.Parallel()
	tok := mustToken(t)
	cfg := tok.config()
	cfg.PINFile = filepath.Join(t.TempDir(), "pin")
	mustWriteFile(t, cfg.PINFile, []byte(tok.pin))
	mustInitMasterKey(t, cfg)
	p := mustOpenPKCS11(t, cfg)
	p.recoverBackoff = 50 * time.Millisecond
	mustNewKEK(t, p, kekA)
	ct := mustSealWith(t, p, kekA, []byte("m"), nil)

	mustWriteFile(t, cfg.PINFile, []byte("wrong-pin"))
	closeAllSessions(t, p)
	got, err := p.Open(kekA, ct, nil)
	wantErr(t, err, ErrUnavailable, "Open while the token cannot be logged in")
	if got != nil {
		t.Fatal("Open returned data with an error")
	}
	if errors.Is(err, ErrIntegrity) {
		t.Fatalf("a device failure reported as an integrity failure: %v", err)
	}
	wantErr(t, p.Healthy(), ErrUnavailable, "Healthy while the token cannot be logged in")
	// Within the backoff, calls fail fast with the same error.
	_, err = p.Seal(kekA, []byte("m"), nil)
	wantErr(t, err, ErrUnavailable, "Seal within the backoff")

	mustWriteFile(t, cfg.PINFile, []byte(tok.pin))
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err = p.Open(kekA, ct, nil)
		if err == nil {
			break
		}
		wantErr(t, err, ErrUnavailable, "Open while recovering")
		if time.Now().After(deadline) {
			t.Fatalf("no recovery: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if string(got) != "m" {
		t.Fatal("mismatch after recovery")
	}
	if err := p.Healthy(); err != nil {
		t.Fatalf("Healthy after recovery = %v", err)
	}
}

// TestPKCS11_Concurrent runs Seal and Open on several KEKs from more
// goroutines than there are sessions, with a peer keystore (same master
// key, through the ceremony) opening every seal, while KEKs are loaded and
// the self-test runs; then closes the keystore under load. Run with -race.
func TestPKCS11_Concurrent(t *testing.T) {
	t.Parallel()
	src, dst := mustToken(t), mustToken(t)
	mustInitMasterKey(t, src.config())
	pub, err := NewTransportKey(dst.config())
	if err != nil {
		t.Fatal(err)
	}
	exp, err := ExportMasterKey(src.soConfig(), pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := ImportMasterKey(dst.config(), exp); err != nil {
		t.Fatal(err)
	}
	cfg := src.config()
	cfg.SessionPoolSize = 2
	p := mustOpenPKCS11(t, cfg)
	peer := mustOpenPKCS11(t, dst.config())
	ids := []KEKID{kekA, kekB, kekC}
	for _, id := range ids {
		if err := p.LoadKEK(id, mustNewKEK(t, peer, id)); err != nil {
			t.Fatal(err)
		}
	}

	exerciseConcurrently(t, p, peer, ids, 50, 20, 5)
}

// TestPKCS11_ConcurrentSessionLoss loses every session again and again
// while goroutines seal and open, so that many callers notice the same loss
// at once and race to re-establish. A call may fail with ErrUnavailable (its
// retry hit a second loss) but never with anything else, and an Open that
// succeeds returns the right plaintext.
func TestPKCS11_ConcurrentSessionLoss(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	p.recoverBackoff = 0
	mustNewKEK(t, p, kekA)
	mustNewKEK(t, p, kekB)

	const workers, rounds = 6, 60
	var wg sync.WaitGroup
	var ok, unavailable atomic.Int64
	stop := make(chan struct{})
	closer := make(chan struct{})
	go func() {
		defer close(closer)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			// Between operations: SoftHSM2 frees a session closed while
			// another thread is inside a call on it (a crash, not an
			// error), so the loss is injected with no call in flight.
			p.opMu.Lock()
			if p.ep != nil {
				p.ctx.CloseAllSessions(p.ep.slot)
			}
			p.opMu.Unlock()
		}
	}()
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				id := []KEKID{kekA, kekB}[(w+i)%2]
				pt := []byte(fmt.Sprintf("worker %d round %d", w, i))
				ct, err := p.Seal(id, pt, nil)
				if err == nil {
					var got []byte
					got, err = p.Open(id, ct, nil)
					if err == nil && !bytes.Equal(got, pt) {
						t.Errorf("Open returned the wrong plaintext")
						return
					}
				}
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrIntegrity):
					unavailable.Add(1)
				default:
					t.Errorf("unexpected error under session loss: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-closer
	t.Logf("%d round trips succeeded, %d failed as unavailable", ok.Load(), unavailable.Load())
	if ok.Load() == 0 {
		t.Fatal("no round trip succeeded")
	}
	// Quiet again: everything works.
	ct := mustSealWith(t, p, kekA, []byte("m"), nil)
	mustOpenWith(t, p, kekA, ct, nil)
	if err := p.Healthy(); err != nil {
		t.Fatalf("Healthy = %v", err)
	}
}

func TestPKCS11_SelfTest(t *testing.T) {
	t.Parallel()
	p, _ := mustPKCS11(t)
	mustNewKEK(t, p, kekA)
	for range 3 {
		if err := p.SelfTest(); err != nil {
			t.Fatalf("SelfTest: %v", err)
		}
	}
	// The self-test leaves no objects behind and does not touch loaded
	// KEKs.
	p.mu.RLock()
	n := len(p.keks)
	p.mu.RUnlock()
	if n != 1 {
		t.Fatalf("%d KEKs loaded after SelfTest, want 1", n)
	}
	p.opMu.RLock()
	hs, err := findObjects(p.ctx, p.ep.obj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}, 16)
	p.opMu.RUnlock()
	if err != nil || len(hs) != 1 {
		t.Fatalf("session objects after SelfTest: %v, %v (want only the loaded KEK)", hs, err)
	}
	// A different master key under the same label is noticed.
	p.check = bytes.Repeat([]byte{1}, cmacLen)
	wantErr(t, p.SelfTest(), ErrUnavailable, "SelfTest with another master key")
	wantErr(t, p.Healthy(), ErrUnavailable, "Healthy after a failed SelfTest")
}

// TestPKCS11_MasterKeyAttributes checks the master key object on the token:
// a sensitive token object whose value cannot be read, that cannot be
// wrapped under a key the user makes, and whose attributes cannot be
// changed; and the loaded KEKs: sensitive session objects that cannot be
// read or wrapped at all.
func TestPKCS11_MasterKeyAttributes(t *testing.T) {
	t.Parallel()
	p, cfg := mustPKCS11(t)
	mustNewKEK(t, p, kekA)
	p.opMu.RLock()
	defer p.opMu.RUnlock()
	ctx, s := p.ctx, p.ep.obj
	master, err := findMasterKey(ctx, s, cfg.MasterKeyLabel)
	if err != nil {
		t.Fatal(err)
	}
	bools := func(h pkcs11.ObjectHandle, types ...uint) map[uint]bool {
		t.Helper()
		q := make([]*pkcs11.Attribute, len(types))
		for i, typ := range types {
			q[i] = pkcs11.NewAttribute(typ, nil)
		}
		attrs, err := ctx.GetAttributeValue(s, h, q)
		if err != nil {
			t.Fatal(err)
		}
		m := make(map[uint]bool)
		for _, a := range attrs {
			m[a.Type] = len(a.Value) == 1 && a.Value[0] != 0
		}
		return m
	}
	m := bools(master, pkcs11.CKA_TOKEN, pkcs11.CKA_SENSITIVE, pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_WRAP_WITH_TRUSTED,
		pkcs11.CKA_MODIFIABLE, pkcs11.CKA_COPYABLE, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_DERIVE)
	for typ, want := range map[uint]bool{
		pkcs11.CKA_TOKEN: true, pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_ALWAYS_SENSITIVE: true, pkcs11.CKA_WRAP_WITH_TRUSTED: true,
		pkcs11.CKA_MODIFIABLE: false, pkcs11.CKA_COPYABLE: false, pkcs11.CKA_ENCRYPT: false, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_DERIVE: false,
	} {
		if m[typ] != want {
			t.Errorf("master key attribute %#x = %v, want %v", typ, m[typ], want)
		}
	}
	_, err = ctx.GetAttributeValue(s, master, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if rvOf(err) != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
		t.Fatalf("reading the master key's CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
	}
	if err := ctx.SetAttributeValue(s, master, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)}); err == nil {
		t.Fatal("the master key could be given CKA_DECRYPT")
	}
	if _, err := ctx.CopyObject(s, master, nil); err == nil {
		t.Fatal("the master key could be copied")
	}
	// A wrapping key the user makes (so knows) is not trusted.
	userKey, err := ctx.CreateObject(s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, make([]byte, 32)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.DestroyObject(s, userKey)
	if _, err := ctx.WrapKey(s, kwpMechanism, userKey, master); err == nil {
		t.Fatal("the master key could be wrapped under a key the user knows")
	}
	// Only the two mechanisms it is for.
	if err := ctx.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, master); err == nil {
		t.Fatal("the master key can encrypt with CKM_AES_ECB")
	}

	p.mu.RLock()
	kek := p.keks[kekA]
	p.mu.RUnlock()
	m = bools(kek, pkcs11.CKA_TOKEN, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP)
	for typ, want := range map[uint]bool{pkcs11.CKA_TOKEN: false, pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_WRAP: false, pkcs11.CKA_UNWRAP: false} {
		if m[typ] != want {
			t.Errorf("KEK attribute %#x = %v, want %v", typ, m[typ], want)
		}
	}
	_, err = ctx.GetAttributeValue(s, kek, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if rvOf(err) != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
		t.Fatalf("reading a KEK's CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
	}
	if _, err := ctx.WrapKey(s, kwpMechanism, userKey, kek); err == nil {
		t.Fatal("a KEK could be wrapped")
	}
}

func TestPKCS11_Close(t *testing.T) {
	t.Parallel()
	cfg := mustToken(t).config()
	mustInitMasterKey(t, cfg)
	p, err := OpenPKCS11(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wrapped := mustNewKEK(t, p, kekA)
	ct := mustSealWith(t, p, kekA, []byte("m"), nil)
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if p.Kind() != KindPKCS11 {
		t.Fatal("Kind changed after Close")
	}
	_, err = p.Random(8)
	wantErr(t, err, ErrClosed, "Random")
	_, err = p.GenerateKEK(kekB)
	wantErr(t, err, ErrClosed, "GenerateKEK")
	wantErr(t, p.LoadKEK(kekA, wrapped), ErrClosed, "LoadKEK of a previously loaded id")
	_, err = p.Seal(kekA, []byte("m"), nil)
	wantErr(t, err, ErrClosed, "Seal")
	_, err = p.Open(kekA, ct, nil)
	wantErr(t, err, ErrClosed, "Open")
	wantErr(t, p.SelfTest(), ErrClosed, "SelfTest")
	wantErr(t, p.Healthy(), ErrClosed, "Healthy")
	wantErr(t, p.Close(), ErrClosed, "second Close")

	// The token is usable again by a new keystore, which loads the KEK.
	q := mustOpenPKCS11(t, cfg)
	if err := q.LoadKEK(kekA, wrapped); err != nil {
		t.Fatal(err)
	}
	mustOpenWith(t, q, kekA, ct, nil)
}

func FuzzParseMasterExport(f *testing.F) {
	f.Add([]byte(`{"format":"coffer-pkcs11-master-key-export","version":1,"oaep_hash":"sha1","kcv":"ABCDEF",` +
		`"transport_key_sha256":"` + strings.Repeat("ab", 32) + `","wrapped":"` + strings.Repeat("AAAA", 128) + `"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, blob, err := parseMasterExport(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("error %v does not wrap ErrInvalidArgument", err)
			}
			return
		}
		if e.Format != exportFormat || e.Version != exportVersion || len(blob) < TransportKeyBits/8 {
			t.Fatalf("accepted %+v", e)
		}
	})
}

// BenchmarkPKCS11SealOpen is BenchmarkSoftwareSealOpen on SoftHSM2: seal and
// open 32 bytes of key material.
func BenchmarkPKCS11SealOpen(b *testing.B) {
	p, _ := mustPKCS11(b)
	mustNewKEK(b, p, kekA)
	material := mustRandom(b, 32)
	aad := []byte("gkid=0123456789abcdef;policy=payments;kek=1;rev=1")
	ct := mustSealWith(b, p, kekA, material, aad)

	b.Run("SealOpen", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c, err := p.Seal(kekA, material, aad)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := p.Open(kekA, c, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Seal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := p.Seal(kekA, material, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Open", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := p.Open(kekA, ct, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("SealOpenParallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c, err := p.Seal(kekA, material, aad)
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := p.Open(kekA, c, aad); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
