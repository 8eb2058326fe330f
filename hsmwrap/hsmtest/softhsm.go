package hsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// SoftHSM is a throwaway SoftHSM2 token directory for the tests of one
// package, for packages other than hsmwrap (whose own tests keep their
// setup, as they cannot import this package). SoftHSM2 reads SOFTHSM2_CONF
// once, when the library is initialised, and a library is initialised once
// per process, so StartSoftHSM must run in TestMain before anything loads
// the module; it makes every token up front with softhsm2-util (none in a
// fuzzing worker process, which runs TestMain too), and each test takes
// tokens of its own with Token.
type SoftHSM struct {
	// Module is the SoftHSM2 library: SOFTHSM2_MODULE, or the Debian path.
	Module string
	// Dir holds the configuration, the tokens and the PIN files.
	Dir string
	// Skip, when not empty, says why tests needing SoftHSM2 skip.
	Skip string

	tokens []Token
	next   atomic.Int32
}

// Token is one initialised SoftHSM2 token.
type Token struct {
	Label   string
	PIN     string
	PINFile string // the PIN and a newline, mode 0600
}

// DefaultSoftHSM2Module is where Debian's softhsm2 package puts the library.
const DefaultSoftHSM2Module = "/usr/lib/softhsm/libsofthsm2.so"

// StartSoftHSM creates a token directory with n tokens labelled
// prefix-00, prefix-01, … and points SOFTHSM2_CONF at it. When SoftHSM2 is
// not installed it returns a SoftHSM whose Skip says so, unless CI is set
// (CI=true, as CI systems set it), where that is an error. Call Close when
// the tests are done.
func StartSoftHSM(prefix string, n int) (*SoftHSM, error) {
	h := &SoftHSM{Module: os.Getenv("SOFTHSM2_MODULE")}
	if h.Module == "" {
		h.Module = DefaultSoftHSM2Module
	}
	var missing []string
	if _, err := os.Stat(h.Module); err != nil {
		missing = append(missing, fmt.Sprintf("module %s (set SOFTHSM2_MODULE to another path)", h.Module))
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		missing = append(missing, "softhsm2-util")
	}
	if len(missing) > 0 {
		msg := "SoftHSM2 is not installed: no " + strings.Join(missing, ", no ") + "; `make softhsm` installs it"
		if ci := os.Getenv("CI"); ci != "" && ci != "false" {
			return nil, fmt.Errorf("%s (CI=%s, so this is a failure)", msg, ci)
		}
		h.Skip = msg + "; skipping the PKCS#11 tests"
		return h, nil
	}
	if h.Dir, err = os.MkdirTemp("", "coffer-softhsm-"); err != nil {
		return nil, err
	}
	tokens := filepath.Join(h.Dir, "tokens")
	conf := filepath.Join(h.Dir, "softhsm2.conf")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		h.Close()
		return nil, err
	}
	confText := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(conf, []byte(confText), 0o600); err != nil {
		h.Close()
		return nil, err
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		h.Close()
		return nil, err
	}
	if fuzzWorker() {
		n = 0 // fuzzing workers run TestMain too, and need no token
	}
	for i := range n {
		tok := Token{
			Label:   fmt.Sprintf("%s-%02d", prefix, i),
			PIN:     fmt.Sprintf("user-pin-%02d", i),
			PINFile: filepath.Join(h.Dir, fmt.Sprintf("pin-%02d", i)),
		}
		out, err := exec.Command(util, "--init-token", "--free", "--label", tok.Label, "--pin", tok.PIN, "--so-pin", "so-"+tok.PIN).CombinedOutput()
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("softhsm2-util --init-token %s: %v\n%s", tok.Label, err, out)
		}
		if err := os.WriteFile(tok.PINFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
			h.Close()
			return nil, err
		}
		h.tokens = append(h.tokens, tok)
	}
	return h, nil
}

// fuzzWorker reports whether this process is a worker of `go test -fuzz`.
func fuzzWorker() bool {
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.fuzzworker") {
			return true
		}
	}
	return false
}

// Token skips t when SoftHSM2 is missing, and otherwise hands out a token
// no other test has taken; it fails t when all are taken.
func (h *SoftHSM) Token(t testing.TB) Token {
	t.Helper()
	if h.Skip != "" {
		t.Skip(h.Skip)
	}
	i := int(h.next.Add(1)) - 1
	if i >= len(h.tokens) {
		t.Fatalf("all %d SoftHSM2 test tokens are taken; make more in TestMain", len(h.tokens))
	}
	return h.tokens[i]
}

// Close removes the token directory.
func (h *SoftHSM) Close() {
	if h.Dir != "" {
		os.RemoveAll(h.Dir)
	}
}
