package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/node"
)

// The pkcs11 dev keystore: SoftHSM2 tokens and the key ceremony.

// softhsmDir is where the pkcs11 dev keystore keeps SoftHSM2's config and
// token directory, under DIR.
const softhsmDir = "softhsm"

// devTokenLabel is node id's SoftHSM2 token label.
func devTokenLabel(id string) string { return "coffer-" + id }

// devPINFiles are node id's user and SO PIN files.
func devPINFiles(dir, id string) (pin, soPIN string) {
	return filepath.Join(dir, id, "hsm", "pin"), filepath.Join(dir, id, "hsm", "so-pin")
}

// checkSoftHSM checks that SoftHSM2 is installed: the module, and
// softhsm2-util when tokens are to be created.
func checkSoftHSM(module string, util bool) error {
	var missing []string
	if util {
		if _, err := exec.LookPath("softhsm2-util"); err != nil {
			missing = append(missing, "no softhsm2-util in PATH")
		}
	}
	if _, err := os.Stat(module); err != nil {
		missing = append(missing, fmt.Sprintf("no PKCS#11 module at %s", module))
	}
	if len(missing) > 0 {
		return fmt.Errorf("the pkcs11 dev keystore needs SoftHSM2: %s; run make softhsm (or point --pkcs11-module at the library)", strings.Join(missing, ", "))
	}
	return nil
}

// reuseKeystore finds which keystore an existing DIR was created with and
// checks that it can run: a DIR keeps its keystore, so asking for another
// one is an error rather than a silent switch.
func reuseKeystore(lay *devLayout, o devOptions) error {
	cfg, err := loadConfig(lay.configs[0])
	if err != nil {
		return err
	}
	ks := cfg.Keystore
	lay.keystore = ks.Kind
	if lay.keystore == "" {
		lay.keystore = keystoreSoftware
	}
	if o.keystoreSet && o.keystore != lay.keystore {
		return usageError{fmt.Errorf("%s was created with the %s keystore, not %s: omit --keystore to reuse it, or choose another --dir", o.dir, lay.keystore, o.keystore)}
	}
	if lay.keystore != keystorePKCS11 {
		return nil
	}
	if o.pkcs11ModuleSet && o.pkcs11Module != ks.Module {
		return usageError{fmt.Errorf("%s uses the PKCS#11 module %s (set in its node configs), not %s", o.dir, ks.Module, o.pkcs11Module)}
	}
	lay.module = ks.Module
	lay.softhsmConf = filepath.Join(o.dir, softhsmDir, "softhsm2.conf")
	if _, err := os.Stat(lay.softhsmConf); err != nil {
		return fmt.Errorf("%s uses the pkcs11 keystore but its SoftHSM2 config is missing: %w", o.dir, err)
	}
	return checkSoftHSM(ks.Module, false)
}

// createSoftHSMKeystores sets up the pkcs11 dev keystore of a new DIR: a
// SoftHSM2 token directory of its own, a token per node with random PINs,
// and one master key on every token by way of the key ceremony. It returns
// each node's keystore config.
func createSoftHSMKeystores(lay *devLayout, o devOptions, peers []node.Peer) ([]keystoreConfig, error) {
	hsmDir := filepath.Join(o.dir, softhsmDir)
	tokens := filepath.Join(hsmDir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return nil, err
	}
	lay.module = o.pkcs11Module
	lay.softhsmConf = filepath.Join(hsmDir, "softhsm2.conf")
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(lay.softhsmConf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	// SoftHSM2 reads SOFTHSM2_CONF when the library is initialised, which
	// for this process happens in the ceremony below.
	if err := os.Setenv("SOFTHSM2_CONF", lay.softhsmConf); err != nil {
		return nil, err
	}

	cfgs := make([]hsmwrap.PKCS11Config, len(peers))
	var out []keystoreConfig
	for i, p := range peers {
		pinFile, soPINFile := devPINFiles(o.dir, p.ID)
		if err := os.MkdirAll(filepath.Dir(pinFile), 0o700); err != nil {
			return nil, err
		}
		pin, err := randomPIN()
		if err != nil {
			return nil, err
		}
		soPIN, err := randomPIN()
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(pinFile, []byte(pin+"\n"), 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(soPINFile, []byte(soPIN+"\n"), 0o600); err != nil {
			return nil, err
		}
		label := devTokenLabel(p.ID)
		// The PINs are on softhsm2-util's command line for the moment it
		// runs (visible to local users in the process list): acceptable
		// for throwaway dev tokens only.
		cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", soPIN)
		cmd.Env = setEnv(os.Environ(), "SOFTHSM2_CONF", lay.softhsmConf)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("creating SoftHSM2 token %s: softhsm2-util: %v: %s", label, err, strings.TrimSpace(string(msg)))
		}
		cfg := hsmwrap.DefaultPKCS11Config()
		cfg.Module, cfg.TokenLabel = o.pkcs11Module, label
		cfg.PINFile, cfg.PINEnv = pinFile, ""
		cfgs[i] = cfg
		out = append(out, keystoreConfig{Kind: keystorePKCS11, Module: cfg.Module, TokenLabel: label, PINFile: pinFile, MasterKeyLabel: cfg.MasterKeyLabel})
	}

	_, srcSOPINFile := devPINFiles(o.dir, peers[0].ID)
	kcv, err := devKeyCeremony(cfgs, srcSOPINFile)
	if err != nil {
		return nil, fmt.Errorf("dev key ceremony: %w", err)
	}
	lay.kcv = kcv
	return out, nil
}

// devKeyCeremony runs the key ceremony of hsmwrap/DESIGN.md across the dev
// tokens, with every step in this process: the master key is generated on
// the first token, and for each other token a transport key is made there,
// the master key is exported from the first token under it (with the first
// token's SO PIN) and imported, and the two tokens are checked to hold the
// same key. The export is only ever in memory, and it is wrapped. It
// returns the master key's check value.
func devKeyCeremony(cfgs []hsmwrap.PKCS11Config, srcSOPINFile string) (string, error) {
	src := cfgs[0]
	if err := hsmwrap.InitMasterKey(src); err != nil {
		return "", fmt.Errorf("%s: %w", src.TokenLabel, err)
	}
	kcv, err := hsmwrap.MasterKeyKCV(src)
	if err != nil {
		return "", fmt.Errorf("%s: %w", src.TokenLabel, err)
	}
	exporter := src
	exporter.SOPINFile = srcSOPINFile
	for _, dst := range cfgs[1:] {
		pub, err := hsmwrap.NewTransportKey(dst)
		if err != nil {
			return "", fmt.Errorf("transport key on %s: %w", dst.TokenLabel, err)
		}
		exp, err := hsmwrap.ExportMasterKey(exporter, pub)
		if err != nil {
			return "", fmt.Errorf("export from %s to %s: %w", src.TokenLabel, dst.TokenLabel, err)
		}
		if err := hsmwrap.ImportMasterKey(dst, exp); err != nil {
			return "", fmt.Errorf("import into %s: %w", dst.TokenLabel, err)
		}
		same, err := hsmwrap.SameMasterKey(src, dst)
		if err != nil {
			return "", fmt.Errorf("comparing %s and %s: %w", src.TokenLabel, dst.TokenLabel, err)
		}
		got, err := hsmwrap.MasterKeyKCV(dst)
		if err != nil {
			return "", fmt.Errorf("%s: %w", dst.TokenLabel, err)
		}
		if !same || got != kcv {
			return "", fmt.Errorf("%s (KCV %s) does not hold the master key of %s (KCV %s)", dst.TokenLabel, got, src.TokenLabel, kcv)
		}
	}
	return kcv, nil
}

// randomPIN returns 32 random hex digits.
func randomPIN() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
