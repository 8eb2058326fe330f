package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/coffer-kms/coffer/hsmwrap"
)

// keystoreFlags are the flags every `cofferd keystore` subcommand takes:
// which PKCS#11 module, token and master key, and where the PIN comes from.
type keystoreFlags struct {
	module  string
	token   string
	slot    uint
	pinFile string
	pinEnv  string
	label   string
	pool    int
}

// keystoreCmd is `cofferd keystore`: the PKCS#11 key ceremony (see
// hsmwrap/DESIGN.md, "Key ceremony") and checks of a node's HSM.
func keystoreCmd() *cobra.Command {
	var f keystoreFlags
	cmd := &cobra.Command{
		Use:   "keystore",
		Short: "PKCS#11 keystore: master key ceremony, key check value, self-test",
		Long: `Manage the master key in a PKCS#11 HSM and check a node's keystore.

The ceremony that gives every node's HSM the same master key, without it
ever leaving an HSM in plaintext:

  on the first HSM:    cofferd keystore init-master ...
  on each further HSM: cofferd keystore transport-key --out T.pem ...
  on the first HSM:    cofferd keystore export-master --transport-pub T.pem --out M.json --so-pin-file SO ...
  on that further HSM: cofferd keystore import-master --in M.json ...
  on every HSM:        cofferd keystore kcv ...   (the values must match)

The PIN is read from a file (--pin-file) or from an environment variable
(--pin-env, default ` + hsmwrap.DefaultPINEnv + `), never from the command line.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.module, "module", "", "PKCS#11 module: the HSM vendor's library (required)")
	pf.StringVar(&f.token, "token", "", "token label (or --slot)")
	pf.UintVar(&f.slot, "slot", 0, "slot id (instead of --token)")
	pf.StringVar(&f.pinFile, "pin-file", "", "file holding the user PIN (one trailing newline ignored)")
	pf.StringVar(&f.pinEnv, "pin-env", "", "environment variable holding the user PIN (default "+hsmwrap.DefaultPINEnv+" unless --pin-file is given)")
	pf.StringVar(&f.label, "label", hsmwrap.DefaultMasterKeyLabel, "label of the master key object")

	cmd.AddCommand(
		keystoreInitMasterCmd(&f),
		keystoreTransportKeyCmd(&f),
		keystoreExportMasterCmd(&f),
		keystoreImportMasterCmd(&f),
		keystoreKCVCmd(&f),
		keystoreSelfTestCmd(&f),
	)
	return cmd
}

// config turns the flags into a validated PKCS11Config; a bad combination is
// a usage error.
func (f *keystoreFlags) config(cmd *cobra.Command) (hsmwrap.PKCS11Config, error) {
	cfg := hsmwrap.DefaultPKCS11Config()
	cfg.Module = f.module
	cfg.TokenLabel = f.token
	if cmd.Flags().Changed("slot") {
		slot := f.slot
		cfg.Slot = &slot
	}
	cfg.MasterKeyLabel = f.label
	switch {
	case f.pinFile != "" && f.pinEnv != "":
		return cfg, usageError{errors.New("--pin-file and --pin-env are alternatives")}
	case f.pinFile != "":
		cfg.PINFile, cfg.PINEnv = f.pinFile, ""
	case f.pinEnv != "":
		cfg.PINEnv = f.pinEnv
	}
	if f.pool > 0 {
		cfg.SessionPoolSize = f.pool
	}
	if err := cfg.Validate(); err != nil {
		return cfg, usageError{err}
	}
	return cfg, nil
}

func keystoreInitMasterCmd(f *keystoreFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "init-master --module M --token T --pin-file F",
		Short: "Generate the cluster's master key in this HSM (refuses if one exists)",
		Long: `Generate the master key, an AES-256 token object, in this HSM: sensitive,
extractable only under a key the security officer marks trusted, usable only
for key wrapping and CMAC. Run this once per cluster, on the first HSM; the
other HSMs receive the same key through transport-key, export-master and
import-master. Refuses if the token already holds an object with the label.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			if err := hsmwrap.InitMasterKey(cfg); err != nil {
				return err
			}
			kcv, err := hsmwrap.MasterKeyKCV(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "master key %q created; KCV %s\n", cfg.MasterKeyLabel, kcv)
			return nil
		},
	}
}

func keystoreTransportKeyCmd(f *keystoreFlags) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "transport-key --out PUB.pem",
		Short: fmt.Sprintf("Generate an RSA-%d transport key in this (target) HSM and write its public key", hsmwrap.TransportKeyBits),
		Long: fmt.Sprintf(`Generate, in the HSM that is to receive the master key, an RSA-%d key pair
whose private key never leaves it, and write the public key (PEM) to --out.
Carry the file to the HSM that holds the master key, and compare the printed
fingerprint there over a second channel (phone, in person): the master key
goes to whoever holds the private key. Replaces an earlier transport key on
this token; refuses if the token already holds a master key.`, hsmwrap.TransportKeyBits),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usageError{errors.New("--out is required")}
			}
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			pub, err := hsmwrap.NewTransportKey(cfg)
			if err != nil {
				return err
			}
			fp, err := hsmwrap.TransportKeyFingerprint(pub)
			if err != nil {
				return err
			}
			if err := writeNew(out, pub, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "transport public key written to %s\nSHA-256 fingerprint %s\n", out, fp)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write the transport public key to (PEM; must not exist)")
	return cmd
}

func keystoreExportMasterCmd(f *keystoreFlags) *cobra.Command {
	var pubPath, out, soPINFile, soPINEnv string
	cmd := &cobra.Command{
		Use:   "export-master --transport-pub PUB.pem --out WRAPPED --so-pin-file F",
		Short: "Wrap this HSM's master key under a target HSM's transport key",
		Long: `Wrap the master key under a target HSM's transport public key (RSA-OAEP) and
write the export (JSON: the wrapped key, the key check value, the transport
key's fingerprint) to --out. The master key may only be wrapped under a
trusted key, and only the security officer can mark one trusted, so this
needs the SO PIN (--so-pin-file or --so-pin-env) as well as the user PIN.
Check the printed fingerprint against the one transport-key printed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pubPath == "" || out == "" {
				return usageError{errors.New("--transport-pub and --out are required")}
			}
			if (soPINFile == "") == (soPINEnv == "") {
				return usageError{errors.New("exactly one of --so-pin-file or --so-pin-env is required")}
			}
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			cfg.SOPINFile, cfg.SOPINEnv = soPINFile, soPINEnv
			pub, err := readSmall(pubPath)
			if err != nil {
				return err
			}
			fp, err := hsmwrap.TransportKeyFingerprint(pub)
			if err != nil {
				return err
			}
			exp, err := hsmwrap.ExportMasterKey(cfg, pub)
			if err != nil {
				return err
			}
			if err := writeNew(out, append(exp, '\n'), 0o600); err != nil {
				return err
			}
			kcv, err := hsmwrap.MasterKeyKCV(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "master key %q (KCV %s) wrapped for transport key %s\nwritten to %s\n", cfg.MasterKeyLabel, kcv, fp, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&pubPath, "transport-pub", "", "the target HSM's transport public key (PEM)")
	cmd.Flags().StringVar(&out, "out", "", "file to write the export to (must not exist)")
	cmd.Flags().StringVar(&soPINFile, "so-pin-file", "", "file holding this token's security officer PIN")
	cmd.Flags().StringVar(&soPINEnv, "so-pin-env", "", "environment variable holding this token's security officer PIN")
	return cmd
}

func keystoreImportMasterCmd(f *keystoreFlags) *cobra.Command {
	var in string
	cmd := &cobra.Command{
		Use:   "import-master --in WRAPPED",
		Short: "Unwrap an exported master key into this (target) HSM with its transport key",
		Long: `Unwrap the export written by export-master into this HSM's master key, with the
transport key made here by transport-key, check the key check value, and
destroy the transport key. Refuses if the token already holds a master key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if in == "" {
				return usageError{errors.New("--in is required")}
			}
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			exp, err := readSmall(in)
			if err != nil {
				return err
			}
			if err := hsmwrap.ImportMasterKey(cfg, exp); err != nil {
				return err
			}
			kcv, err := hsmwrap.MasterKeyKCV(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "master key %q imported; KCV %s\n", cfg.MasterKeyLabel, kcv)
			return nil
		},
	}
	cmd.Flags().StringVar(&in, "in", "", "the export written by export-master")
	return cmd
}

func keystoreKCVCmd(f *keystoreFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "kcv",
		Short: "Print the master key's check value (compare across HSMs)",
		Long: `Print the key check value of the master key, computed inside the HSM: the
first 3 bytes of AES-CMAC over a zero block. Every node's HSM must print the
same value.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			kcv, err := hsmwrap.MasterKeyKCV(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), kcv)
			return nil
		},
	}
}

func keystoreSelfTestCmd(f *keystoreFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "selftest",
		Short: "Open the keystore as a node would and run its self-test",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config(cmd)
			if err != nil {
				return err
			}
			ks, err := hsmwrap.OpenPKCS11(cfg) // runs SelfTest
			if err != nil {
				return err
			}
			defer ks.Close()
			if err := ks.SelfTest(); err != nil {
				return err
			}
			kcv, err := hsmwrap.MasterKeyKCV(cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %s keystore, master key %q, KCV %s\n", ks.Kind(), cfg.MasterKeyLabel, kcv)
			return nil
		},
	}
	cmd.Flags().IntVar(&f.pool, "sessions", 0, "session pool size (default 2 × GOMAXPROCS)")
	return cmd
}

// maxCeremonyFile bounds the files the ceremony reads.
const maxCeremonyFile = 64 << 10

func readSmall(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxCeremonyFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxCeremonyFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxCeremonyFile)
	}
	return b, nil
}

// writeNew writes data to a file that must not exist yet.
func writeNew(path string, data []byte, mode os.FileMode) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := fh.Write(data); err != nil {
		fh.Close()
		os.Remove(path)
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		os.Remove(path)
		return err
	}
	return fh.Close()
}
