package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/ciphertext"
	"github.com/coffer-kms/coffer/client"
)

// Input bounds of the data encryption commands.
const (
	// maxPlaintextInput is the most `coffer encrypt` reads: what one
	// Encrypt takes.
	maxPlaintextInput = client.MaxEncryptPlaintext
	// maxCiphertextOverhead bounds what a ciphertext adds to its plaintext
	// (ciphertext/FORMAT.md).
	maxCiphertextOverhead = ciphertext.MaxOverhead
	// maxCiphertextInput is the most `coffer decrypt` reads: no valid
	// ciphertext of an Encrypt or GenerateDataKey is longer.
	maxCiphertextInput = maxPlaintextInput + maxCiphertextOverhead
)

// cryptoFlags are the flags the data encryption commands share.
type cryptoFlags struct {
	gkid        string
	contexts    []string
	in, out     string
	consistency consistencyFlag
}

// addContextFlag registers --context, repeatable. StringArray keeps commas
// in values (a StringSlice would split them).
func (o *cryptoFlags) addContextFlag(f *pflag.FlagSet) {
	f.StringArrayVar(&o.contexts, "context", nil,
		`encryption context pair KEY=VALUE (split at the first "="), repeatable; decrypt needs the same pairs`)
}

func (o *cryptoFlags) addOutFlag(f *pflag.FlagSet, what string) {
	f.StringVar(&o.out, "out", "", "write "+what+` to this file (mode 0600, replaced whole) instead of standard output ("-")`)
}

// contextHelp describes --context in the commands' help.
const contextHelp = `Each --context is one KEY=VALUE pair of the encryption context, split at the
first "=" (a value may hold "=" and ","); keys are non-empty and unique. A
context holds at most 16 pairs and 4096 bytes of keys and values. It is
bound to the ciphertext, so decrypting needs the same pairs, in any order;
it is not secret, but the audit never records it.`

// outHelp describes --out in the commands' help.
const outHelp = `--out FILE writes a file of mode 0600 in one step, through a temporary file
in the same directory: it holds the whole output or is left as it was,
never half-written. An existing FILE is replaced.`

func (a *app) encryptCmd() *cobra.Command {
	var o cryptoFlags
	var resource, policy, algorithm, requestID string
	cmd := &cobra.Command{
		Use:   "encrypt (--gkid G | --resource R [--policy P]) [--context K=V]... [--in FILE|-] [--out FILE]",
		Short: "Encrypt up to 64 KiB under a key that stays in the cluster",
		Long: `Encrypt a plaintext of at most 64 KiB under the AES key --gkid, which never
leaves the cluster. The plaintext is read from --in (default "-", standard
input); the ciphertext is written, as raw bytes, to --out (default standard
output). With -o json the response is written instead, as JSON with the
ciphertext in base64.

For more than 64 KiB, use ` + "`coffer datakey`" + ` and encrypt locally with the
data key. The ciphertext names its key: ` + "`coffer decrypt`" + ` needs only the
ciphertext and the same context.

With --resource instead of --gkid (encrypt-and-custody), a new AES key is
generated under --policy for the resource, the plaintext encrypted with it,
and the key stored, in one call: one key per record. Its GKID is in the
ciphertext's header, and is printed on standard error (or in the JSON
response). It needs the generate and the encrypt grant on the resource;
--request-id makes a retry return the same key.

` + contextHelp + `

` + outHelp + `

Needs the encrypt grant on the key's resource.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (o.gkid == "") == (resource == "") {
				return usagef("give --gkid (an existing key) or --resource (a new key), not both")
			}
			if o.gkid != "" && (policy != "" || algorithm != "" || requestID != "") {
				return usagef("--policy, --algorithm and --request-id go with --resource (a new key)")
			}
			alg, err := parseAlgorithm(algorithm)
			if err != nil {
				return usageError{err}
			}
			encCtx, err := parseContext(o.contexts)
			if err != nil {
				return err
			}
			plaintext, err := readInput(o.in, a.in, maxPlaintextInput)
			if errors.Is(err, errInputTooLarge) {
				return usagef("%s holds more than %d bytes (64 KiB), the most one encrypt takes: for larger data, use `coffer datakey` and encrypt locally with the data key",
					inputName(o.in), maxPlaintextInput)
			}
			if err != nil {
				return err
			}
			defer clear(plaintext)
			if resource != "" {
				req := &cofferv1.EncryptNewRequest{RequestId: requestID, Policy: policy, Resource: resource, Algorithm: alg, Plaintext: plaintext, Context: encCtx}
				return a.withOutput(cmd, o.out, func(ctx context.Context, c *client.Client, w io.Writer) error {
					resp, err := c.EncryptNew(ctx, req)
					if err != nil {
						return err
					}
					if a.format == formatJSON {
						return writeProto(w, resp)
					}
					fmt.Fprintf(a.err, "coffer: new key %s\n", resp.GetKey().GetGkid())
					_, err = w.Write(resp.GetCiphertext())
					return err
				})
			}
			req := &cofferv1.EncryptRequest{Gkid: o.gkid, Plaintext: plaintext, Context: encCtx, Consistency: o.consistency.v}
			return a.withOutput(cmd, o.out, func(ctx context.Context, c *client.Client, w io.Writer) error {
				resp, err := c.Encrypt(ctx, req)
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(w, resp)
				}
				_, err = w.Write(resp.GetCiphertext())
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.gkid, "gkid", "", "the AES key to encrypt with")
	f.StringVar(&resource, "resource", "", "encrypt under a new key for this resource (encrypt-and-custody)")
	f.StringVar(&policy, "policy", "", `custody policy of the new key (default "default")`)
	f.StringVar(&algorithm, "algorithm", "", "aes-128, aes-192 or aes-256, of the new key (default aes-256)")
	f.StringVar(&requestID, "request-id", "", "idempotency id of the new key, at most 64 characters (default: random)")
	o.addContextFlag(f)
	f.StringVar(&o.in, "in", "-", `read the plaintext from this file ("-": standard input)`)
	o.addOutFlag(f, "the ciphertext")
	addConsistencyFlag(f, &o.consistency, "linearizable or stale")
	return cmd
}

func (a *app) decryptCmd() *cobra.Command {
	var o cryptoFlags
	cmd := &cobra.Command{
		Use:   "decrypt [--context K=V]... [--in FILE|-] [--out FILE]",
		Short: "Decrypt a ciphertext from encrypt or datakey",
		Long: `Decrypt a ciphertext made by ` + "`coffer encrypt`" + ` or ` + "`coffer datakey`" + ` with the
key it names, given the --context it was encrypted with. The ciphertext, raw
bytes (base64-decode the one datakey prints), is read from --in (default
"-", standard input); the plaintext is written, as raw bytes, to --out
(default standard output). With -o json the response is written instead, as
JSON with the plaintext in base64.

A ciphertext presented with another context, changed, or moved to a key of
another resource does not decrypt: the command fails and writes nothing.

` + contextHelp + `

` + outHelp + `

Needs the decrypt grant on the key's resource.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			encCtx, err := parseContext(o.contexts)
			if err != nil {
				return err
			}
			ciphertext, err := readInput(o.in, a.in, maxCiphertextInput)
			if errors.Is(err, errInputTooLarge) {
				return usagef("%s holds more than %d bytes: no ciphertext of encrypt or datakey is that long", inputName(o.in), maxCiphertextInput)
			}
			if err != nil {
				return err
			}
			if len(ciphertext) == 0 {
				return usagef("%s is empty: no ciphertext to decrypt", inputName(o.in))
			}
			req := &cofferv1.DecryptRequest{Ciphertext: ciphertext, Context: encCtx, Consistency: o.consistency.v}
			return a.withOutput(cmd, o.out, func(ctx context.Context, c *client.Client, w io.Writer) error {
				resp, err := c.Decrypt(ctx, req)
				if err != nil {
					return err
				}
				defer clear(resp.Plaintext)
				if a.format == formatJSON {
					return writeProto(w, resp)
				}
				_, err = w.Write(resp.GetPlaintext())
				return err
			})
		},
	}
	f := cmd.Flags()
	o.addContextFlag(f)
	f.StringVar(&o.in, "in", "-", `read the ciphertext from this file ("-": standard input)`)
	o.addOutFlag(f, "the plaintext")
	addConsistencyFlag(f, &o.consistency, "linearizable or stale")
	return cmd
}

func (a *app) reencryptCmd() *cobra.Command {
	var o cryptoFlags
	var to string
	var toContexts []string
	cmd := &cobra.Command{
		Use:   "reencrypt [--context K=V]... [--to GKID] [--to-context K=V]... [--in FILE|-] [--out FILE]",
		Short: "Move a ciphertext to another key without the plaintext leaving the cluster",
		Long: `Decrypt a ciphertext (given its --context) and encrypt the plaintext under
the key --to (default: the same key, its newest version) with --to-context
(default: the same context), inside the cluster: the plaintext never
reaches this machine. The ciphertext is read from --in and the new one
written to --out, raw bytes.

` + outHelp + `

Needs the decrypt grant on the source key's resource and the encrypt grant
on the destination's; each key's use is audited.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			srcCtx, err := parseContext(o.contexts)
			if err != nil {
				return err
			}
			dstCtx, err := parseContext(toContexts)
			if err != nil {
				return err
			}
			ciphertext, err := readInput(o.in, a.in, maxCiphertextInput)
			if errors.Is(err, errInputTooLarge) {
				return usagef("%s holds more than %d bytes: no ciphertext of encrypt or datakey is that long", inputName(o.in), maxCiphertextInput)
			}
			if err != nil {
				return err
			}
			if len(ciphertext) == 0 {
				return usagef("%s is empty: no ciphertext to re-encrypt", inputName(o.in))
			}
			req := &cofferv1.ReEncryptRequest{Ciphertext: ciphertext, SourceContext: srcCtx, DestinationGkid: to,
				DestinationContext: dstCtx, ReplaceContext: len(toContexts) > 0, Consistency: o.consistency.v}
			return a.withOutput(cmd, o.out, func(ctx context.Context, c *client.Client, w io.Writer) error {
				resp, err := c.ReEncrypt(ctx, req)
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(w, resp)
				}
				_, err = w.Write(resp.GetCiphertext())
				return err
			})
		},
	}
	f := cmd.Flags()
	o.addContextFlag(f)
	f.StringVar(&to, "to", "", "the key to encrypt under (default: the source key)")
	f.StringArrayVar(&toContexts, "to-context", nil, "context pair KEY=VALUE of the new ciphertext, repeatable (default: the source's)")
	f.StringVar(&o.in, "in", "-", `read the ciphertext from this file ("-": standard input)`)
	o.addOutFlag(f, "the new ciphertext")
	addConsistencyFlag(f, &o.consistency, "linearizable or stale")
	return cmd
}

func (a *app) datakeyCmd() *cobra.Command {
	var o cryptoFlags
	var algorithm string
	var noPlaintext bool
	cmd := &cobra.Command{
		Use:   "datakey --gkid G [--algorithm aes-128|aes-256] [--context K=V]... [--no-plaintext] [--out FILE]",
		Short: "Generate a data key, in plaintext and encrypted under a key, for data over 64 KiB",
		Long: `Generate a fresh data key (aes-256, or aes-128 with --algorithm) and a copy
of it encrypted under the AES key --gkid, for encrypting data locally. In
text format two lines are printed, each base64:

  plaintext: <the data key>
  ciphertext: <the data key, encrypted>

(only the ciphertext line with --no-plaintext). With -o json the response
is written instead.

WARNING: the plaintext data key is printed, to standard output or the --out
file. Use it to encrypt the data, then discard it: keep only the ciphertext,
beside the data, and recover the data key when needed with ` + "`coffer decrypt`" + `
(base64-decode the ciphertext first) and the same context. Keep it out of
terminal scrollback and logs, and delete an --out file holding it once the
data is encrypted. --no-plaintext returns only the ciphertext, for a data
key to be decrypted when it is first needed.

` + contextHelp + `

` + outHelp + `

Needs the datakey grant on the key's resource.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.gkid == "" {
				return usagef("--gkid is required")
			}
			alg, err := parseDataKeyAlgorithm(algorithm)
			if err != nil {
				return usageError{err}
			}
			encCtx, err := parseContext(o.contexts)
			if err != nil {
				return err
			}
			req := &cofferv1.GenerateDataKeyRequest{Gkid: o.gkid, Context: encCtx, Algorithm: alg,
				WithoutPlaintext: noPlaintext, Consistency: o.consistency.v}
			return a.withOutput(cmd, o.out, func(ctx context.Context, c *client.Client, w io.Writer) error {
				resp, err := c.GenerateDataKey(ctx, req)
				if err != nil {
					return err
				}
				defer clear(resp.Plaintext)
				if a.format == formatJSON {
					return writeProto(w, resp)
				}
				return writeDataKeyText(w, resp, !noPlaintext)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.gkid, "gkid", "", "the AES key to encrypt the data key under (required)")
	f.StringVar(&algorithm, "algorithm", "", "the data key's algorithm: aes-128 or aes-256 (default aes-256)")
	o.addContextFlag(f)
	f.BoolVar(&noPlaintext, "no-plaintext", false, "return only the encrypted data key")
	o.addOutFlag(f, "the data key lines")
	addConsistencyFlag(f, &o.consistency, "linearizable or stale")
	return cmd
}

// writeDataKeyText writes "plaintext: <base64>" (when withPlaintext) and
// "ciphertext: <base64>" lines.
func writeDataKeyText(w io.Writer, resp *cofferv1.GenerateDataKeyResponse, withPlaintext bool) error {
	var b strings.Builder
	if withPlaintext {
		b.WriteString("plaintext: " + base64.StdEncoding.EncodeToString(resp.GetPlaintext()) + "\n")
	}
	b.WriteString("ciphertext: " + base64.StdEncoding.EncodeToString(resp.GetCiphertext()) + "\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// parseDataKeyAlgorithm parses datakey's --algorithm: aes-128 or aes-256
// (or their API names); "" leaves the choice to the server (aes-256).
func parseDataKeyAlgorithm(s string) (cofferv1.Algorithm, error) {
	alg, err := parseAlgorithm(s)
	if err == nil {
		switch alg {
		case cofferv1.Algorithm_ALGORITHM_UNSPECIFIED, cofferv1.Algorithm_ALGORITHM_AES_128, cofferv1.Algorithm_ALGORITHM_AES_256:
			return alg, nil
		}
	}
	return 0, fmt.Errorf("--algorithm %q: a data key is aes-128 or aes-256", s)
}

// parseContext parses --context values into an encryption context; none
// gives nil. Each value is KEY=VALUE, split at the first "=". Every error is
// a usage error naming the offending value: no "=", an empty key, a key
// given twice, a key or value that is not UTF-8, or more than the service
// takes (client.MaxContextPairs pairs, client.MaxContextBytes bytes of keys
// and values).
func parseContext(vals []string) (map[string]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	if len(vals) > client.MaxContextPairs {
		return nil, usagef("--context: %d pairs, at most %d", len(vals), client.MaxContextPairs)
	}
	encCtx := make(map[string]string, len(vals))
	size := 0
	for _, v := range vals {
		key, value, ok := strings.Cut(v, "=")
		switch {
		case !ok:
			return nil, usagef("--context %q: want KEY=VALUE", v)
		case key == "":
			return nil, usagef("--context %q: the key is empty", v)
		case !utf8.ValidString(key) || !utf8.ValidString(value):
			return nil, usagef("--context %q: not valid UTF-8", v)
		}
		if _, dup := encCtx[key]; dup {
			return nil, usagef("--context %q: key %q given twice", v, key)
		}
		encCtx[key] = value
		size += len(key) + len(value)
	}
	if size > client.MaxContextBytes {
		return nil, usagef("--context: %d bytes of keys and values, at most %d", size, client.MaxContextBytes)
	}
	return encCtx, nil
}

// errInputTooLarge is readInput's error for input beyond its limit.
var errInputTooLarge = errors.New("input too large")

// inputName names an --in value in messages.
func inputName(path string) string {
	if path == "" || path == "-" {
		return "standard input"
	}
	return path
}

// readInput reads the whole of path ("" or "-": stdin), at most limit bytes.
// It reads no more than limit+1 bytes, so an endless stream is refused as
// soon as it passes the limit; input beyond the limit gives
// errInputTooLarge.
func readInput(path string, stdin io.Reader, limit int) ([]byte, error) {
	r := stdin
	if path != "" && path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("read input: %w", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		clear(data)
		return nil, fmt.Errorf("read %s: %w", inputName(path), err)
	}
	if len(data) > limit {
		clear(data)
		return nil, errInputTooLarge
	}
	return data, nil
}

// withOutput runs fn with a fresh client, a context bounded by --timeout and
// the writer for the command's output: standard output when path is "" or
// "-", else a new file that becomes path only when fn succeeds (see
// atomicFile). The file is created before fn runs, so an unwritable path
// fails before any request.
func (a *app) withOutput(cmd *cobra.Command, path string, fn func(ctx context.Context, c *client.Client, w io.Writer) error) error {
	if path == "" || path == "-" {
		return a.withClient(cmd, func(ctx context.Context, c *client.Client) error { return fn(ctx, c, a.out) })
	}
	f, err := createAtomic(path)
	if err != nil {
		return err
	}
	defer f.discard()
	err = a.withClient(cmd, func(ctx context.Context, c *client.Client) error { return fn(ctx, c, f) })
	if err != nil {
		return err
	}
	return f.commit()
}

// atomicFile is a file written in one step: it is written as a temporary
// file of mode 0600 in the target's directory, and commit renames it to the
// target, replacing any file there. Until then the target is untouched;
// discard removes the temporary file.
type atomicFile struct {
	tmp  *os.File
	path string
	done bool
}

// createAtomic starts an atomicFile for path.
func createAtomic(path string) (*atomicFile, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".coffer-out-*")
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	// CreateTemp makes the file 0600 already; Chmod states the contract.
	if err := tmp.Chmod(0o600); err != nil {
		_ = tmp.Close()
		_ = os.Remove(tmp.Name())
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return &atomicFile{tmp: tmp, path: path}, nil
}

func (f *atomicFile) Write(p []byte) (int, error) { return f.tmp.Write(p) }

// commit makes the written content path's, durably. After a failed commit
// the target is as it was.
func (f *atomicFile) commit() error {
	if err := f.tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	if err := f.tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	if err := os.Rename(f.tmp.Name(), f.path); err != nil {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	f.done = true
	return nil
}

// discard removes the temporary file unless commit succeeded.
func (f *atomicFile) discard() {
	if f.done {
		return
	}
	_ = f.tmp.Close()
	_ = os.Remove(f.tmp.Name())
}
