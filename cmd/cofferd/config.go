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
// (see node.Config; durations are in nanoseconds) plus the keystore.
type fileConfig struct {
	node.Config
	Keystore keystoreConfig `json:"keystore"`
}

// keystoreConfig selects and configures the keystore.
type keystoreConfig struct {
	// Kind is "software" (the embedded default).
	Kind string `json:"kind"`
	// Software keystore: the sealed master key file and exactly one of a
	// passphrase file, the name of an environment variable holding the
	// passphrase, or a key file.
	MasterKeyFile  string `json:"master_key_file,omitempty"`
	PassphraseFile string `json:"passphrase_file,omitempty"`
	PassphraseEnv  string `json:"passphrase_env,omitempty"`
	KeyFile        string `json:"key_file,omitempty"`
}

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
	case "", "software":
		return hsmwrap.OpenSoftware(hsmwrap.SoftwareConfig{
			MasterKeyFile:  c.MasterKeyFile,
			PassphraseFile: c.PassphraseFile,
			PassphraseEnv:  c.PassphraseEnv,
			KeyFile:        c.KeyFile,
		})
	}
	return nil, fmt.Errorf("keystore kind %q is not supported (use \"software\")", c.Kind)
}
