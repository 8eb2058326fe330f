package main

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/internal/testenv"
)

// The in-memory nodes' CryptoService (see memHandler). A ciphertext is
// fakeMagic, the GKID's length (one byte), the GKID, a 12-byte nonce and
// AES-GCM's output under the key's material, with the GKID, the key's
// resource and the context as associated data.
const fakeMagic = "fake"

func (h *memHandler) countCrypto() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cryptoCalls++
}

func (h *memStore) cryptoCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cryptoCalls
}

// aead returns the AES-GCM of an AES key and the key's metadata.
func (h *memHandler) aead(gkid string) (cipher.AEAD, *cofferv1.KeyMetadata, error) {
	k, err := h.lookup(gkid)
	if err != nil {
		return nil, nil, err
	}
	switch k.GetKey().GetAlgorithm() {
	case cofferv1.Algorithm_ALGORITHM_AES_128, cofferv1.Algorithm_ALGORITHM_AES_192, cofferv1.Algorithm_ALGORITHM_AES_256:
	default:
		return nil, nil, status.Errorf(codes.FailedPrecondition, "key %s is not an AES key", gkid)
	}
	block, err := aes.NewCipher(k.GetMaterial())
	if err != nil {
		return nil, nil, status.Error(codes.Internal, err.Error())
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, nil, status.Error(codes.Internal, err.Error())
	}
	return gcm, k.GetKey(), nil
}

// fakeAAD is the associated data: GKID, resource and the context's pairs in
// key order, each length-prefixed. It refuses a context the service would.
func fakeAAD(gkid, resource string, encCtx map[string]string) ([]byte, error) {
	if len(encCtx) > client.MaxContextPairs {
		return nil, status.Error(codes.InvalidArgument, "context: too many pairs")
	}
	var aad []byte
	size := 0
	for _, s := range []string{gkid, resource} {
		aad = binary.BigEndian.AppendUint16(aad, uint16(len(s)))
		aad = append(aad, s...)
	}
	for _, k := range slices.Sorted(maps.Keys(encCtx)) {
		if k == "" {
			return nil, status.Error(codes.InvalidArgument, "context: empty key")
		}
		size += len(k) + len(encCtx[k])
		for _, s := range []string{k, encCtx[k]} {
			aad = binary.BigEndian.AppendUint16(aad, uint16(len(s)))
			aad = append(aad, s...)
		}
	}
	if size > client.MaxContextBytes {
		return nil, status.Error(codes.InvalidArgument, "context: too long")
	}
	return aad, nil
}

func (h *memHandler) seal(gkid string, plaintext []byte, encCtx map[string]string) ([]byte, error) {
	gcm, md, err := h.aead(gkid)
	if err != nil {
		return nil, err
	}
	aad, err := fakeAAD(gkid, md.GetResource(), encCtx)
	if err != nil {
		return nil, err
	}
	ct := append([]byte(fakeMagic), byte(len(gkid)))
	ct = append(ct, gkid...)
	nonce := make([]byte, gcm.NonceSize())
	_, _ = rand.Read(nonce)
	ct = append(ct, nonce...)
	return gcm.Seal(ct, nonce, plaintext, aad), nil
}

func (h *memHandler) Encrypt(_ context.Context, req *cofferv1.EncryptRequest) (*cofferv1.EncryptResponse, error) {
	h.countCrypto()
	if len(req.GetPlaintext()) > client.MaxEncryptPlaintext {
		return nil, status.Error(codes.InvalidArgument, "plaintext over 64 KiB")
	}
	ct, err := h.seal(req.GetGkid(), req.GetPlaintext(), req.GetContext())
	if err != nil {
		return nil, err
	}
	return &cofferv1.EncryptResponse{Ciphertext: ct, Gkid: req.GetGkid(), KeyVersion: 1}, nil
}

func (h *memHandler) Decrypt(_ context.Context, req *cofferv1.DecryptRequest) (*cofferv1.DecryptResponse, error) {
	h.countCrypto()
	ct := req.GetCiphertext()
	bad := status.Error(codes.InvalidArgument, "ciphertext does not decrypt with this context")
	if !bytes.HasPrefix(ct, []byte(fakeMagic)) || len(ct) < len(fakeMagic)+1 {
		return nil, status.Error(codes.InvalidArgument, "not a ciphertext")
	}
	ct = ct[len(fakeMagic):]
	n := int(ct[0])
	if len(ct) < 1+n {
		return nil, status.Error(codes.InvalidArgument, "not a ciphertext")
	}
	gkid, ct := string(ct[1:1+n]), ct[1+n:]
	gcm, md, err := h.aead(gkid)
	if err != nil {
		return nil, err
	}
	aad, err := fakeAAD(gkid, md.GetResource(), req.GetContext())
	if err != nil {
		return nil, err
	}
	if len(ct) < gcm.NonceSize() {
		return nil, bad
	}
	pt, err := gcm.Open(nil, ct[:gcm.NonceSize()], ct[gcm.NonceSize():], aad)
	if err != nil {
		return nil, bad
	}
	return &cofferv1.DecryptResponse{Plaintext: pt, Gkid: gkid, KeyVersion: 1}, nil
}

func (h *memHandler) GenerateDataKey(ctx context.Context, req *cofferv1.GenerateDataKeyRequest) (*cofferv1.GenerateDataKeyResponse, error) {
	h.countCrypto()
	alg, n := req.GetAlgorithm(), 32
	switch alg {
	case cofferv1.Algorithm_ALGORITHM_UNSPECIFIED:
		alg = cofferv1.Algorithm_ALGORITHM_AES_256
	case cofferv1.Algorithm_ALGORITHM_AES_128:
		n = 16
	case cofferv1.Algorithm_ALGORITHM_AES_256:
	default:
		return nil, status.Error(codes.InvalidArgument, "a data key is AES-128 or AES-256")
	}
	key := make([]byte, n)
	_, _ = rand.Read(key)
	ct, err := h.seal(req.GetGkid(), key, req.GetContext())
	if err != nil {
		return nil, err
	}
	resp := &cofferv1.GenerateDataKeyResponse{Ciphertext: ct, Gkid: req.GetGkid(), KeyVersion: 1, Algorithm: alg}
	if st := req.GetSealTo(); st != nil {
		if resp.SealedPlaintext, err = testenv.SealReply(ctx, st, "datakey", req.GetGkid(), 1, key); err != nil {
			return nil, err
		}
	} else if !req.GetWithoutPlaintext() {
		resp.Plaintext = key
	}
	return resp, nil
}

// runCLIWith runs one command line with stdin and returns its exit status,
// its raw stdout and its stderr.
func runCLIWith(t *testing.T, env envMap, stdin []byte, args ...string) (int, []byte, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := run(ctx, args, streams{in: bytes.NewReader(stdin), out: &out, err: &errOut}, env.get)
	return code, out.Bytes(), errOut.String()
}

func TestParseContext(t *testing.T) {
	if got, err := parseContext(nil); got != nil || err != nil {
		t.Fatalf("parseContext(nil) = %v, %v", got, err)
	}
	got, err := parseContext([]string{"tenant=acme", "expr=a=b", "list=x,y,z", "empty=", "sp ace= v "})
	want := map[string]string{"tenant": "acme", "expr": "a=b", "list": "x,y,z", "empty": "", "sp ace": " v "}
	if err != nil || !maps.Equal(got, want) {
		t.Fatalf("parseContext = %v, %v; want %v", got, err, want)
	}
	full := []string{"k=" + strings.Repeat("v", client.MaxContextBytes-1)}
	if _, err := parseContext(full); err != nil {
		t.Fatalf("a context of exactly %d bytes refused: %v", client.MaxContextBytes, err)
	}
	var many []string
	for i := range client.MaxContextPairs {
		many = append(many, fmt.Sprintf("k%d=v", i))
	}
	if got, err := parseContext(many); err != nil || len(got) != client.MaxContextPairs {
		t.Fatalf("%d pairs: %v, %v", client.MaxContextPairs, got, err)
	}

	for _, tc := range []struct {
		name string
		vals []string
		want string
	}{
		{"no equals", []string{"a=1", "tenant"}, `--context "tenant": want KEY=VALUE`},
		{"empty key", []string{"=acme"}, `--context "=acme": the key is empty`},
		{"empty pair", []string{"="}, `--context "=": the key is empty`},
		{"repeated key", []string{"a=1", "b=2", "a=1"}, `--context "a=1": key "a" given twice`},
		{"bad utf-8", []string{"a=\xff"}, "not valid UTF-8"},
		{"too many pairs", append(slices.Clone(many), "one=more"), "17 pairs, at most 16"},
		{"too long", []string{"k=" + strings.Repeat("v", client.MaxContextBytes)}, "4097 bytes of keys and values, at most 4096"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseContext(tc.vals)
			var ue usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseContext(%q) = %v, %v; want a usage error containing %q", tc.vals, got, err, tc.want)
			}
		})
	}
}

// endless is a reader of zeros that never ends and counts what was read.
type endless struct{ n int }

func (e *endless) Read(p []byte) (int, error) {
	clear(p)
	e.n += len(p)
	return len(p), nil
}

func TestReadInput(t *testing.T) {
	const limit = 1000
	dir := t.TempDir()
	for size, wantErr := range map[int]error{0: nil, limit: nil, limit + 1: errInputTooLarge, 10 * limit: errInputTooLarge} {
		path := filepath.Join(dir, fmt.Sprintf("in-%d", size))
		data := bytes.Repeat([]byte{'x'}, size)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readInput(path, nil, limit)
		if !errors.Is(err, wantErr) || (err == nil && !bytes.Equal(got, data)) {
			t.Errorf("file of %d bytes: %d bytes, %v; want %v", size, len(got), err, wantErr)
		}
		for _, name := range []string{"-", ""} {
			got, err = readInput(name, bytes.NewReader(data), limit)
			if !errors.Is(err, wantErr) || (err == nil && !bytes.Equal(got, data)) {
				t.Errorf("stdin (%q) of %d bytes: %d bytes, %v; want %v", name, size, len(got), err, wantErr)
			}
		}
	}
	// An endless stream is refused after limit+1 bytes, not read whole.
	src := &endless{}
	if _, err := readInput("-", src, limit); !errors.Is(err, errInputTooLarge) || src.n > limit+1 {
		t.Fatalf("endless stdin: %v after reading %d bytes; want errInputTooLarge after at most %d", err, src.n, limit+1)
	}
	if _, err := readInput(filepath.Join(dir, "missing"), nil, limit); err == nil || errors.Is(err, errInputTooLarge) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestAtomicFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.bin")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	check := func(wantData string, wantMode os.FileMode) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil || string(got) != wantData {
			t.Fatalf("%s holds %q (%v), want %q", path, got, err, wantData)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != wantMode {
			t.Fatalf("%s mode %v (%v), want %v", path, fi.Mode().Perm(), err, wantMode)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Fatalf("directory holds %d entries, want only %s: a temporary file was left", len(entries), path)
		}
	}

	// A discarded write leaves the file as it was, and no temporary file.
	f, err := createAtomic(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(f.tmp.Name()); err != nil || fi.Mode().Perm() != 0o600 || filepath.Dir(f.tmp.Name()) != dir {
		t.Fatalf("temporary file %s: %v, %v", f.tmp.Name(), fi, err)
	}
	if _, err := io.WriteString(f, "half-writ"); err != nil {
		t.Fatal(err)
	}
	f.discard()
	check("old", 0o644)

	// A committed write replaces the file whole, with mode 0600; the
	// target is untouched until the commit.
	f, err = createAtomic(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(f, "new content"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Fatalf("target changed before commit: %q", got)
	}
	if err := f.commit(); err != nil {
		t.Fatal(err)
	}
	f.discard() // a no-op after commit
	check("new content", 0o600)

	// A new file is created 0600.
	fresh := filepath.Join(t.TempDir(), "fresh")
	f, err = createAtomic(fresh)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.commit(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 0 {
		t.Fatalf("new file: %v, %v", fi, err)
	}

	if _, err := createAtomic(filepath.Join(dir, "no", "such", "dir")); err == nil {
		t.Fatal("created a file in a missing directory")
	}
}

func TestCrypto_UsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"encrypt without gkid", []string{"encrypt"}, "give --gkid (an existing key) or --resource (a new key)"},
		{"datakey without gkid", []string{"datakey"}, "--gkid is required"},
		{"datakey aes-192", []string{"datakey", "--gkid", "g", "--algorithm", "aes-192"}, "a data key is aes-128 or aes-256"},
		{"datakey hmac", []string{"datakey", "--gkid", "g", "--algorithm", "hmac-sha256"}, "a data key is aes-128 or aes-256"},
		{"bad context", []string{"encrypt", "--gkid", "g", "--context", "tenant"}, `--context "tenant": want KEY=VALUE`},
		{"empty context key", []string{"decrypt", "--context", "=x"}, `--context "=x": the key is empty`},
		{"repeated context key", []string{"datakey", "--gkid", "g", "--context", "a=1", "--context", "a=2"}, `key "a" given twice`},
		{"empty ciphertext", []string{"decrypt"}, "standard input is empty: no ciphertext to decrypt"},
		{"arguments", []string{"encrypt", "--gkid", "g", "file"}, "takes 0 argument(s)"},
		{"bad consistency", []string{"decrypt", "--consistency", "eventual"}, "unknown consistency"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, envMap{}, tc.args...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, exitUsage, tc.want)
			}
		})
	}
}

// TestCrypto_LimitsBeforeRPC: input over the limits, a bad context or an
// --out that cannot be created is refused before any request.
func TestCrypto_LimitsBeforeRPC(t *testing.T) {
	shared, env := mustMemCluster(t, 1)
	gkid := strings.TrimSpace(mustRun(t, env, "key", "generate", "--resource", "app"))
	big := make([]byte, maxPlaintextInput+1)
	bigFile := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(bigFile, big, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		stdin []byte
		args  []string
		code  int
		want  string
	}{
		{"encrypt stdin over 64 KiB", big, []string{"encrypt", "--gkid", gkid},
			exitUsage, "standard input holds more than 65536 bytes (64 KiB), the most one encrypt takes: for larger data, use `coffer datakey`"},
		{"encrypt file over 64 KiB", nil, []string{"encrypt", "--gkid", gkid, "--in", bigFile},
			exitUsage, bigFile + " holds more than 65536 bytes"},
		{"decrypt over the longest ciphertext", make([]byte, maxCiphertextInput+1), []string{"decrypt"},
			exitUsage, fmt.Sprintf("standard input holds more than %d bytes: no ciphertext of encrypt or datakey is that long", maxCiphertextInput)},
		{"context over 4096 bytes", []byte("x"), []string{"encrypt", "--gkid", gkid, "--context", "k=" + strings.Repeat("v", 4096)},
			exitUsage, "4097 bytes of keys and values"},
		{"missing input file", nil, []string{"encrypt", "--gkid", gkid, "--in", filepath.Join(t.TempDir(), "missing")},
			exitFailure, "no such file"},
		{"out in a missing directory", []byte("x"), []string{"encrypt", "--gkid", gkid, "--out", filepath.Join(t.TempDir(), "no", "ct")},
			exitFailure, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLIWith(t, env, tc.stdin, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) || len(out) != 0 {
				t.Fatalf("exit %d, stdout %d bytes, stderr %q; want %d and %q", code, len(out), stderr, tc.code, tc.want)
			}
			if n := shared.cryptoCount(); n != 0 {
				t.Fatalf("%d CryptoService calls were made", n)
			}
		})
	}

	// Exactly 64 KiB is sent.
	code, ct, stderr := runCLIWith(t, env, big[:maxPlaintextInput], "encrypt", "--gkid", gkid)
	if code != exitOK || len(ct) <= maxPlaintextInput || len(ct) > maxCiphertextInput || shared.cryptoCount() != 1 {
		t.Fatalf("encrypt of 64 KiB: exit %d, %d bytes, stderr %q, %d calls", code, len(ct), stderr, shared.cryptoCount())
	}
}

// TestCLI_EncryptDecrypt drives encrypt, decrypt and datakey against the
// in-memory nodes.
func TestCLI_EncryptDecrypt(t *testing.T) {
	_, env := mustCluster(t, 3)
	gkid := strings.TrimSpace(mustRun(t, env, "key", "generate", "--resource", "app/orders"))
	dir := t.TempDir()
	plaintext := make([]byte, 5000)
	_, _ = rand.Read(plaintext)
	ptFile, ctFile, backFile := filepath.Join(dir, "pt"), filepath.Join(dir, "ct"), filepath.Join(dir, "back")
	if err := os.WriteFile(ptFile, plaintext, 0o600); err != nil {
		t.Fatal(err)
	}
	encCtx := []string{"--context", "tenant=acme", "--context", "note=a,b=c"}

	// A file encrypted with a context decrypts with the same pairs, in
	// any order; both files are 0600.
	if out := mustRun(t, env, append([]string{"encrypt", "--gkid", gkid, "--in", ptFile, "--out", ctFile}, encCtx...)...); out != "" {
		t.Fatalf("encrypt --out printed %q", out)
	}
	ct, err := os.ReadFile(ctFile)
	if err != nil || len(ct) <= len(plaintext) || bytes.Contains(ct, plaintext[:64]) {
		t.Fatalf("ciphertext: %d bytes, %v", len(ct), err)
	}
	mustRun(t, env, "decrypt", "--context", "note=a,b=c", "--context", "tenant=acme", "--in", ctFile, "--out", backFile)
	if back, err := os.ReadFile(backFile); err != nil || !bytes.Equal(back, plaintext) {
		t.Fatalf("decrypted %d bytes (%v), want the %d of the plaintext", len(back), err, len(plaintext))
	}
	for _, f := range []string{ctFile, backFile} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, %v; want mode 0600", f, fi, err)
		}
	}

	// Standard input to standard output.
	code, ct2, stderr := runCLIWith(t, env, []byte("short secret"), append([]string{"encrypt", "--gkid", gkid}, encCtx...)...)
	if code != exitOK {
		t.Fatalf("encrypt from stdin: exit %d, %s", code, stderr)
	}
	code, back, stderr := runCLIWith(t, env, ct2, append([]string{"decrypt"}, encCtx...)...)
	if code != exitOK || string(back) != "short secret" {
		t.Fatalf("decrypt to stdout: exit %d, %q, %s", code, back, stderr)
	}

	// Another context, or none, does not decrypt: exit 1, a message, no
	// plaintext, and no --out file.
	refused := filepath.Join(dir, "refused")
	for _, ctxArgs := range [][]string{{"--context", "tenant=other", "--context", "note=a,b=c"}, nil} {
		args := append([]string{"decrypt", "--in", ctFile, "--out", refused}, ctxArgs...)
		code, out, stderr := runCLIWith(t, env, nil, args...)
		if code != exitFailure || !strings.HasPrefix(stderr, "coffer: InvalidArgument: ") || len(out) != 0 {
			t.Fatalf("decrypt %v: exit %d, stdout %q, stderr %q", ctxArgs, code, out, stderr)
		}
		if _, err := os.Stat(refused); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a refused decrypt left %s: %v", refused, err)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 3 {
		t.Fatalf("%s holds %d entries, want 3 (a temporary file left?)", dir, len(entries))
	}

	// -o json: the response, ciphertext in base64.
	var enc struct {
		Ciphertext []byte `json:"ciphertext"`
		Gkid       string `json:"gkid"`
		KeyVersion int    `json:"key_version"`
	}
	code, js, stderr := runCLIWith(t, env, []byte("json secret"), "-o", "json", "encrypt", "--gkid", gkid)
	if err := json.Unmarshal(js, &enc); code != exitOK || err != nil || enc.Gkid != gkid || enc.KeyVersion != 1 {
		t.Fatalf("encrypt -o json: exit %d, %s (%v), stderr %s", code, js, err, stderr)
	}
	var dec struct {
		Plaintext []byte `json:"plaintext"`
		Gkid      string `json:"gkid"`
	}
	code, js, stderr = runCLIWith(t, env, enc.Ciphertext, "-o", "json", "decrypt")
	if err := json.Unmarshal(js, &dec); code != exitOK || err != nil || string(dec.Plaintext) != "json secret" || dec.Gkid != gkid {
		t.Fatalf("decrypt -o json: exit %d, %s (%v), stderr %s", code, js, err, stderr)
	}

	// datakey: the plaintext data key, and its ciphertext, which decrypts
	// to it with the same context.
	out := mustRun(t, env, append([]string{"datakey", "--gkid", gkid}, encCtx...)...)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "plaintext: ") || !strings.HasPrefix(lines[1], "ciphertext: ") {
		t.Fatalf("datakey printed:\n%s", out)
	}
	dataKey, err1 := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[0], "plaintext: "))
	wrapped, err2 := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[1], "ciphertext: "))
	if err1 != nil || err2 != nil || len(dataKey) != 32 {
		t.Fatalf("datakey lines: %d-byte key, %v, %v", len(dataKey), err1, err2)
	}
	code, unwrapped, stderr := runCLIWith(t, env, wrapped, append([]string{"decrypt"}, encCtx...)...)
	if code != exitOK || !bytes.Equal(unwrapped, dataKey) {
		t.Fatalf("decrypt of the data key: exit %d, %x, stderr %s; want %x", code, unwrapped, stderr, dataKey)
	}

	// --algorithm aes-128, --no-plaintext, --out.
	keyFile := filepath.Join(t.TempDir(), "dk")
	mustRun(t, env, "datakey", "--gkid", gkid, "--algorithm", "aes-128", "--no-plaintext", "--out", keyFile)
	got, err := os.ReadFile(keyFile)
	if err != nil || !strings.HasPrefix(string(got), "ciphertext: ") || strings.Count(string(got), "\n") != 1 {
		t.Fatalf("datakey --no-plaintext --out wrote %q (%v)", got, err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("datakey --out file: %v, %v", fi, err)
	}
	wrapped, _ = base64.StdEncoding.DecodeString(strings.TrimSpace(strings.TrimPrefix(string(got), "ciphertext: ")))
	if code, k, stderr := runCLIWith(t, env, wrapped, "decrypt"); code != exitOK || len(k) != 16 {
		t.Fatalf("decrypt of an aes-128 data key: exit %d, %d bytes, %s", code, len(k), stderr)
	}
	var dk struct {
		Plaintext  []byte `json:"plaintext"`
		Ciphertext []byte `json:"ciphertext"`
		Algorithm  string `json:"algorithm"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, env, "-o", "json", "datakey", "--gkid", gkid)), &dk); err != nil ||
		len(dk.Plaintext) != 32 || len(dk.Ciphertext) == 0 || dk.Algorithm != "ALGORITHM_AES_256" {
		t.Fatalf("datakey -o json: %+v, %v", dk, err)
	}

	// A key that is not an AES key is refused by the service.
	hmac := strings.TrimSpace(mustRun(t, env, "key", "generate", "--resource", "app/orders", "--algorithm", "hmac-sha256"))
	code, _, stderr = runCLIWith(t, env, []byte("x"), "encrypt", "--gkid", hmac)
	if code != exitFailure || !strings.HasPrefix(stderr, "coffer: FailedPrecondition: ") {
		t.Fatalf("encrypt under an HMAC key: exit %d, stderr %q", code, stderr)
	}
}

// TestCLI_BenchCrypto runs the crypto bench operations through the client
// against the in-memory nodes.
func TestCLI_BenchCrypto(t *testing.T) {
	shared, env := mustMemCluster(t, 2)
	for _, op := range []string{benchEncrypt, benchDecrypt, benchDataKey} {
		before := shared.cryptoCount()
		var rep benchReport
		out := mustRun(t, env, "-o", "json", "bench", "--op", op, "--keys", "4", "--size", "2048", "--concurrency", "2",
			"--duration", "200ms", "--warmup", "0s")
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("bench --op %s: %q: %v", op, out, err)
		}
		if rep.Op != op || len(rep.Ops) != 1 || rep.Ops[0].Op != op || rep.Ops[0].Count == 0 || rep.Total.Errors != 0 || rep.Keys != 4 {
			t.Fatalf("bench --op %s report %+v", op, rep)
		}
		if wantSize := op != benchDataKey; (rep.Size == 2048) != wantSize {
			t.Fatalf("bench --op %s size %d", op, rep.Size)
		}
		if n := uint64(shared.cryptoCount() - before); n < rep.Ops[0].Count {
			t.Fatalf("bench --op %s counted %d operations, the nodes saw %d calls", op, rep.Ops[0].Count, n)
		}
	}
	if code, _, stderr := runCLI(t, env, "bench", "--op", "encrypt", "--size", "70000"); code != exitUsage || !strings.Contains(stderr, "--size 70000") {
		t.Fatalf("bench --size 70000: exit %d, %q", code, stderr)
	}
}
