package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/node"
)

// fileConfig is the JSON config file of `cofferd serve`: the node settings
// (see node.Config; durations are strings such as "250ms") plus the
// keystore.
type fileConfig struct {
	node.Config
	Keystore keystoreConfig `json:"keystore"`
}

// keystoreConfig selects and configures the keystore.
type keystoreConfig struct {
	// Kind is "software" (the embedded default; also when empty) or
	// "pkcs11".
	Kind string `json:"kind"`
	// Software keystore: the sealed master key file and exactly one of a
	// passphrase file, the name of an environment variable holding the
	// passphrase, or a key file.
	MasterKeyFile  string `json:"master_key_file,omitempty"`
	PassphraseFile string `json:"passphrase_file,omitempty"`
	PassphraseEnv  string `json:"passphrase_env,omitempty"`
	KeyFile        string `json:"key_file,omitempty"`
	// PKCS#11 keystore (see hsmwrap.PKCS11Config): the vendor's library,
	// the token by label or by slot id, the user PIN from a file or from
	// the environment variable named (default COFFER_HSM_PIN when neither
	// is set), and the label of the master key object (default
	// coffer-master). The PIN itself never appears in the config.
	Module         string `json:"module,omitempty"`
	TokenLabel     string `json:"token_label,omitempty"`
	Slot           *uint  `json:"slot,omitempty"`
	PINFile        string `json:"pin_file,omitempty"`
	PINEnv         string `json:"pin_env,omitempty"`
	MasterKeyLabel string `json:"master_key_label,omitempty"`
}

// Keystore kinds.
const (
	keystoreSoftware = hsmwrap.KindSoftware
	keystorePKCS11   = hsmwrap.KindPKCS11
)

const maxConfigBytes = 1 << 20

func loadConfig(path string) (*fileConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("config %s is larger than %d bytes", path, maxConfigBytes)
	}
	cfg := &fileConfig{Config: node.DefaultConfig()}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	if err := cfg.Config.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

func writeConfig(path string, cfg *fileConfig) error {
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o600)
}

func openKeystore(c keystoreConfig) (hsmwrap.Keystore, error) {
	switch c.Kind {
	case "", keystoreSoftware:
		if f := c.pkcs11Fields(); f != "" {
			return nil, fmt.Errorf("keystore: %s is a pkcs11 setting, but kind is %q", f, keystoreSoftware)
		}
		return hsmwrap.OpenSoftware(hsmwrap.SoftwareConfig{
			MasterKeyFile:  c.MasterKeyFile,
			PassphraseFile: c.PassphraseFile,
			PassphraseEnv:  c.PassphraseEnv,
			KeyFile:        c.KeyFile,
		})
	case keystorePKCS11:
		cfg, err := c.pkcs11Config()
		if err != nil {
			return nil, err
		}
		return hsmwrap.OpenPKCS11(cfg)
	}
	return nil, fmt.Errorf("keystore kind %q is not supported (use %q or %q)", c.Kind, keystoreSoftware, keystorePKCS11)
}

// pkcs11Config maps a "pkcs11" keystore config onto hsmwrap.PKCS11Config
// and validates it.
func (c keystoreConfig) pkcs11Config() (hsmwrap.PKCS11Config, error) {
	cfg := hsmwrap.DefaultPKCS11Config()
	if f := c.softwareFields(); f != "" {
		return cfg, fmt.Errorf("keystore: %s is a software keystore setting, but kind is %q", f, keystorePKCS11)
	}
	cfg.Module, cfg.TokenLabel, cfg.Slot = c.Module, c.TokenLabel, c.Slot
	switch {
	case c.PINFile != "" && c.PINEnv != "":
		return cfg, fmt.Errorf("keystore: pin_file and pin_env are alternatives; set one")
	case c.PINFile != "":
		cfg.PINFile, cfg.PINEnv = c.PINFile, ""
	case c.PINEnv != "":
		cfg.PINEnv = c.PINEnv
	}
	if c.MasterKeyLabel != "" {
		cfg.MasterKeyLabel = c.MasterKeyLabel
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("keystore: %w", err)
	}
	return cfg, nil
}

// softwareFields names the first software keystore setting that is set.
func (c keystoreConfig) softwareFields() string {
	for _, f := range []struct{ name, v string }{
		{"master_key_file", c.MasterKeyFile}, {"passphrase_file", c.PassphraseFile},
		{"passphrase_env", c.PassphraseEnv}, {"key_file", c.KeyFile},
	} {
		if f.v != "" {
			return f.name
		}
	}
	return ""
}

// pkcs11Fields names the first PKCS#11 keystore setting that is set.
func (c keystoreConfig) pkcs11Fields() string {
	if c.Slot != nil {
		return "slot"
	}
	for _, f := range []struct{ name, v string }{
		{"module", c.Module}, {"token_label", c.TokenLabel}, {"pin_file", c.PINFile},
		{"pin_env", c.PINEnv}, {"master_key_label", c.MasterKeyLabel},
	} {
		if f.v != "" {
			return f.name
		}
	}
	return ""
}
