package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/coffer-kms/coffer/escrow"
	"github.com/coffer-kms/coffer/fsm"
)

func (a *app) escrowCmd() *cobra.Command {
	return group("escrow", "Offline escrow keys and key recovery (no cluster needed)", a.escrowKeygenCmd(), a.escrowRecoverCmd())
}

// readPassphrase reads a passphrase from a file (one trailing newline
// dropped) or an environment variable; never from a flag value.
func (a *app) readPassphrase(file, env string) ([]byte, error) {
	switch {
	case file != "" && env != "":
		return nil, usagef("give --passphrase-file or --passphrase-env, not both")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("passphrase file: %w", err)
		}
		return []byte(strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")), nil
	case env != "":
		v := a.getenv(env)
		if v == "" {
			return nil, fmt.Errorf("environment variable %s is empty or unset", env)
		}
		return []byte(v), nil
	}
	return nil, nil
}

func (a *app) escrowKeygenCmd() *cobra.Command {
	var out, passFile, passEnv string
	var bits int
	cmd := &cobra.Command{
		Use:   "keygen --out PREFIX [--bits 3072] [--passphrase-file F | --passphrase-env VAR]",
		Short: "Create an escrow key pair: PREFIX.pub for the policy, PREFIX.key (0600) for the officer",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("--out is required")
			}
			pass, err := a.readPassphrase(passFile, passEnv)
			if err != nil {
				return err
			}
			defer clear(pass)
			priv, err := escrow.GenerateKey(bits)
			if err != nil {
				return usageError{err}
			}
			pub, key, err := escrow.WriteKeyPair(out, priv, pass)
			if err != nil {
				return err
			}
			if a.format == formatJSON {
				return writeJSON(a.out, map[string]string{"public_key": pub, "private_key": key})
			}
			fmt.Fprintf(a.out, "public key:  %s (give this to `coffer policy create --escrow-key`)\nprivate key: %s (keep offline)\n", pub, key)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "file name prefix (required)")
	f.IntVar(&bits, "bits", 3072, "RSA modulus size (3072-8192)")
	f.StringVar(&passFile, "passphrase-file", "", "encrypt the private key under the passphrase in this file")
	f.StringVar(&passEnv, "passphrase-env", "", "encrypt the private key under the passphrase in this environment variable")
	return cmd
}

func (a *app) escrowRecoverCmd() *cobra.Command {
	var keyFile, snapshot, dataDir, passFile, passEnv, out string
	var gkids []string
	cmd := &cobra.Command{
		Use:   "recover --escrow-key FILE (--snapshot FILE | --data-dir DIR) [--gkid G]... [--out FILE]",
		Short: "Recover keys offline from a snapshot or a stopped node's data directory",
		Long: `Recover keys with an escrow private key alone: no cluster and no keystore.
The source is a snapshot (coffer snapshot save) or the data directory of a
stopped node. Without --gkid every key escrowed to this key is recovered.
Recovered material is plaintext: write it to a private file (--out, 0600) or
pipe it where it is needed.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyFile == "" {
				return usagef("--escrow-key is required")
			}
			if (snapshot == "") == (dataDir == "") {
				return usagef("give exactly one of --snapshot or --data-dir")
			}
			pass, err := a.readPassphrase(passFile, passEnv)
			if err != nil {
				return err
			}
			defer clear(pass)
			priv, err := escrow.ReadPrivateKey(keyFile, pass)
			if err != nil {
				return err
			}
			src := escrow.FromDataDir(dataDir)
			if snapshot != "" {
				f, err := os.Open(snapshot)
				if err != nil {
					return err
				}
				defer f.Close()
				// Offline, the seal cannot be checked (it needs the
				// cluster's keystore); escrow copies carry their own
				// protection.
				_, stream, err := fsm.ReadBackupHeader(f)
				if err != nil {
					return fmt.Errorf("%s: %w", snapshot, err)
				}
				src = escrow.FromSnapshot(stream)
			}
			keys, err := escrow.Recover(src, priv, gkids)
			if err != nil {
				return err
			}
			defer func() {
				for _, k := range keys {
					clear(k.Material)
				}
			}()
			w := a.out
			if out != "" {
				f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			if a.format == formatJSON {
				type rec struct {
					GKID      string `json:"gkid"`
					Policy    string `json:"policy"`
					Resource  string `json:"resource"`
					Algorithm string `json:"algorithm"`
					Version   uint32 `json:"version"`
					Material  string `json:"material"`
				}
				list := []rec{}
				for _, k := range keys {
					list = append(list, rec{k.GKID, k.Policy, k.Resource, algorithmName(k.Algorithm), k.Version, base64.StdEncoding.EncodeToString(k.Material)})
				}
				return writeJSON(w, map[string]any{"keys": list})
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "GKID\tPOLICY\tRESOURCE\tALGORITHM\tVERSION\tMATERIAL")
			for _, k := range keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", k.GKID, k.Policy, k.Resource, algorithmName(k.Algorithm), k.Version, base64.StdEncoding.EncodeToString(k.Material))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.err, "coffer: recovered %d key(s)\n", len(keys))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "escrow-key", "", "escrow private key file (required)")
	f.StringVar(&snapshot, "snapshot", "", "snapshot file from `coffer snapshot save`")
	f.StringVar(&dataDir, "data-dir", "", "data directory of a stopped node")
	f.StringArrayVar(&gkids, "gkid", nil, "recover only this key; repeatable")
	f.StringVar(&out, "out", "", "write the recovered keys to this new file (0600) instead of standard output")
	f.StringVar(&passFile, "passphrase-file", "", "passphrase of an encrypted escrow key, from this file")
	f.StringVar(&passEnv, "passphrase-env", "", "passphrase of an encrypted escrow key, from this environment variable")
	return cmd
}
