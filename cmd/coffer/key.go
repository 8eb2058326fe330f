package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

// maxMaterialFile bounds a --material-file, encoded form included.
const maxMaterialFile = 1024

// maxPageSize is the API's bound on ListKeys page size.
const maxPageSize = 1000

func (a *app) keyCmd() *cobra.Command {
	return group("key", "Generate, import, fetch and list keys; move them through their life cycle",
		append([]*cobra.Command{a.keyGenerateCmd(), a.keyPutCmd(), a.keyGetCmd(), a.keyDescribeCmd(), a.keyListCmd()},
			a.keyLifecycleCmds()...)...)
}

// keyPrint writes the result of a write: the GKID (text) or the metadata
// (json).
func (a *app) keyPrint(md *cofferv1.KeyMetadata) error {
	if a.format == formatJSON {
		return writeProto(a.out, md)
	}
	_, err := fmt.Fprintln(a.out, md.GetGkid())
	return err
}

// parseActivateAt reads --activate-at: an RFC 3339 time, or a duration from
// now ("90m", "24h"). Empty: nil (the key is active at once).
func parseActivateAt(s string, now time.Time) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return nil, usagef("--activate-at %s: a duration from now must be positive", s)
		}
		return timestamppb.New(now.Add(d)), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, usagef("--activate-at %q: want an RFC 3339 time (2027-01-31T09:00:00Z) or a duration from now (24h)", s)
	}
	return timestamppb.New(t), nil
}

func (a *app) keyGenerateCmd() *cobra.Command {
	var policy, resource, algorithm, requestID, activateAt string
	cmd := &cobra.Command{
		Use:   "generate --resource R [--policy P] [--algorithm A]",
		Short: "Generate a key and print its GKID",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if resource == "" {
				return usagef("--resource is required")
			}
			alg, err := parseAlgorithm(algorithm)
			if err != nil {
				return usageError{err}
			}
			at, err := parseActivateAt(activateAt, time.Now())
			if err != nil {
				return err
			}
			req := &cofferv1.GenerateKeyRequest{RequestId: requestID, Policy: policy, Resource: resource, Algorithm: alg, ActivateAt: at}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.GenerateKey(ctx, req)
				if err != nil {
					return err
				}
				return a.keyPrint(resp.GetKey())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&policy, "policy", "", `custody policy (default "default")`)
	f.StringVar(&resource, "resource", "", "resource the key is bound to (required)")
	f.StringVar(&algorithm, "algorithm", "", "aes-128, aes-192, aes-256 or hmac-sha256 (default aes-256)")
	f.StringVar(&requestID, "request-id", "", "idempotency id, at most 64 characters (default: random)")
	f.StringVar(&activateAt, "activate-at", "", "create the key pre-active, active from this RFC 3339 time or duration from now (24h)")
	return cmd
}

func (a *app) keyPutCmd() *cobra.Command {
	var policy, resource, algorithm, requestID, file, encoding, activateAt string
	cmd := &cobra.Command{
		Use:   "put --resource R --material-file F [--policy P] [--algorithm A] [--encoding E]",
		Short: "Import key material and print the new GKID",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if resource == "" {
				return usagef("--resource is required")
			}
			if file == "" {
				return usagef("--material-file is required")
			}
			alg, err := parseAlgorithm(algorithm)
			if err != nil {
				return usageError{err}
			}
			material, err := readMaterial(file, encoding, a.in, a.err)
			if err != nil {
				return err
			}
			defer clear(material)
			at, err := parseActivateAt(activateAt, time.Now())
			if err != nil {
				return err
			}
			req := &cofferv1.PutKeyRequest{RequestId: requestID, Policy: policy, Resource: resource,
				Algorithm: alg, Material: material, ActivateAt: at}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.PutKey(ctx, req)
				if err != nil {
					return err
				}
				return a.keyPrint(resp.GetKey())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&policy, "policy", "", `custody policy (default "default")`)
	f.StringVar(&resource, "resource", "", "resource the key is bound to (required)")
	f.StringVar(&algorithm, "algorithm", "", "aes-128, aes-192, aes-256 or hmac-sha256")
	f.StringVar(&requestID, "request-id", "", "idempotency id, at most 64 characters (default: random)")
	f.StringVar(&file, "material-file", "", `file holding the key material, at most 1 KiB ("-" reads stdin) (required)`)
	f.StringVar(&encoding, "encoding", "raw", "encoding of the material file: raw, base64 or hex")
	f.StringVar(&activateAt, "activate-at", "", "import the key pre-active, active from this RFC 3339 time or duration from now (24h)")
	return cmd
}

// readMaterial reads and decodes a key material file ("-" is stdin). It warns
// on warn when the file is readable by every user.
func readMaterial(path, encoding string, stdin io.Reader, warn io.Writer) ([]byte, error) {
	decode, err := materialDecoder(encoding)
	if err != nil {
		return nil, usageError{err}
	}
	var r io.Reader = stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("material file: %w", err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("material file: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("material file %s is not a regular file", path)
		}
		if fi.Mode().Perm()&0o004 != 0 {
			fmt.Fprintf(warn, "coffer: warning: %s is readable by every user; key material files should be private (chmod 600)\n", path)
		}
		r = f
	}
	raw, err := io.ReadAll(io.LimitReader(r, maxMaterialFile+1))
	defer clear(raw)
	if err != nil {
		return nil, fmt.Errorf("read material file: %w", err)
	}
	if len(raw) > maxMaterialFile {
		return nil, fmt.Errorf("material file %s is larger than %d bytes", path, maxMaterialFile)
	}
	material, err := decode(raw)
	if err != nil {
		return nil, fmt.Errorf("material file %s: %w", path, err)
	}
	if len(material) == 0 {
		return nil, fmt.Errorf("material file %s holds no key material", path)
	}
	return material, nil
}

// materialDecoder returns the decoder for an --encoding value. The result of
// a decoder never aliases its input.
func materialDecoder(encoding string) (func([]byte) ([]byte, error), error) {
	switch strings.ToLower(encoding) {
	case "raw", "":
		return func(b []byte) ([]byte, error) { return append([]byte(nil), b...), nil }, nil
	case "base64":
		return decodeBase64, nil
	case "hex":
		return func(b []byte) ([]byte, error) {
			s := strings.TrimSpace(string(b))
			out := make([]byte, hex.DecodedLen(len(s)))
			if _, err := hex.Decode(out, []byte(s)); err != nil {
				return nil, fmt.Errorf("bad hex: %w", err)
			}
			return out, nil
		}, nil
	}
	return nil, fmt.Errorf("unknown encoding %q (want raw, base64 or hex)", encoding)
}

// decodeBase64 accepts standard or URL-safe base64, padded or not, with
// surrounding whitespace.
func decodeBase64(b []byte) ([]byte, error) {
	s := strings.TrimRight(strings.TrimSpace(string(b)), "=")
	enc := base64.RawStdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.RawURLEncoding
	}
	out, err := enc.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("bad base64: %w", err)
	}
	return out, nil
}

func (a *app) keyGetCmd() *cobra.Command {
	var cons consistencyFlag
	var version uint32
	cmd := &cobra.Command{
		Use:   "get GKID [--version N]",
		Short: "Fetch a key's material (base64), its version and policies",
		Args:  exactArgs(1, "GKID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: args[0], Consistency: cons.v, Version: version})
				if err != nil {
					return err
				}
				defer clear(resp.Material)
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				return writeKeyText(a.out, resp)
			})
		},
	}
	addConsistencyFlag(cmd.Flags(), &cons, "linearizable or stale")
	cmd.Flags().Uint32Var(&version, "version", 0, "the version of the material to fetch (default: the newest)")
	return cmd
}

func (a *app) keyDescribeCmd() *cobra.Command {
	var cons consistencyFlag
	cmd := &cobra.Command{
		Use:   "describe GKID",
		Short: "Show a key's metadata",
		Args:  exactArgs(1, "GKID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: args[0], Consistency: cons.v})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp.GetKey())
				}
				return writeMetadataText(a.out, resp.GetKey())
			})
		},
	}
	addConsistencyFlag(cmd.Flags(), &cons, "linearizable or stale")
	return cmd
}

// listOptions are the flags of `key list`.
type listOptions struct {
	policy, resource, pageToken string
	consistency                 consistencyFlag
	pageSize                    uint32
	all                         bool
}

func (a *app) keyListCmd() *cobra.Command {
	var o listOptions
	cmd := &cobra.Command{
		Use:   "list [--policy P] [--resource R] [--page-size N] [--page-token T] [--all]",
		Short: "List key metadata",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.pageSize > maxPageSize {
				return usagef("--page-size %d is above %d", o.pageSize, maxPageSize)
			}
			req := &cofferv1.ListKeysRequest{Policy: o.policy, Resource: o.resource,
				PageSize: o.pageSize, PageToken: o.pageToken, Consistency: o.consistency.v}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				return a.listKeys(ctx, c, req, o.all)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.policy, "policy", "", "only keys under this custody policy")
	f.StringVar(&o.resource, "resource", "", "only keys bound to this resource")
	f.Uint32Var(&o.pageSize, "page-size", 0, "keys per page, at most 1000 (default 100)")
	f.StringVar(&o.pageToken, "page-token", "", "continue from this page token")
	addConsistencyFlag(f, &o.consistency, "linearizable or stale")
	f.BoolVar(&o.all, "all", false, "follow page tokens and list every matching key")
	return cmd
}

// pageWriter is the output of `key list`: keyTable or keyListJSON.
type pageWriter interface {
	writePage([]*cofferv1.KeyMetadata) error
}

// listKeys prints one page, or with all every page.
func (a *app) listKeys(ctx context.Context, c *client.Client, req *cofferv1.ListKeysRequest, all bool) error {
	var pw pageWriter = &keyTable{w: a.out}
	js := newKeyListJSON(a.out)
	if a.format == formatJSON {
		pw = js
	}
	next := ""
	if all {
		var err error
		batch := make([]*cofferv1.KeyMetadata, 0, 100)
		for k, kerr := range c.AllKeys(ctx, req) {
			if kerr != nil {
				err = kerr
				break
			}
			if batch = append(batch, k); len(batch) == cap(batch) {
				if err = pw.writePage(batch); err != nil {
					break
				}
				batch = batch[:0]
			}
		}
		if err == nil {
			err = pw.writePage(batch)
		}
		if err != nil {
			// Output already written stays as it is: the exit status
			// says the listing is incomplete.
			return err
		}
	} else {
		resp, err := c.ListKeys(ctx, req)
		if err != nil {
			return err
		}
		if err := pw.writePage(resp.GetKeys()); err != nil {
			return err
		}
		next = resp.GetNextPageToken()
	}
	if a.format == formatJSON {
		return js.finish(next)
	}
	if next != "" {
		fmt.Fprintf(a.err, "more keys: run again with --page-token %s\n", next)
	}
	return nil
}
