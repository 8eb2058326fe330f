package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

func (a *app) auditMatchCmd() *cobra.Command {
	var seq uint64
	var file, encoding string
	cmd := &cobra.Command{
		Use:   "match --seq N --material-file F [--encoding raw|base64|hex]",
		Short: "Tell whether the entry that created a key recorded exactly this key material",
		Long: `The audit log never holds key material. An entry that created a key (generate,
put) holds an HMAC of it under a key the cluster keeps; match asks a node to
compare. It needs the audit.read grant and is itself audited.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if seq == 0 {
				return usagef("--seq is required")
			}
			if file == "" {
				return usagef("--material-file is required")
			}
			material, err := readMaterial(file, encoding, a.in, a.err)
			if err != nil {
				return err
			}
			defer clear(material)
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.AuditMatch(ctx, &cofferv1.AuditMatchRequest{Seq: seq, Material: material})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeJSON(a.out, map[string]any{"seq": seq, "match": resp.GetMatch()})
				}
				if resp.GetMatch() {
					fmt.Fprintf(a.out, "entry %d recorded this key material\n", seq)
				} else {
					fmt.Fprintf(a.out, "entry %d did not record this key material\n", seq)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&seq, "seq", 0, "sequence number of the entry (required)")
	f.StringVar(&file, "material-file", "", `file holding the candidate material ("-" reads stdin) (required)`)
	f.StringVar(&encoding, "encoding", "raw", "encoding of the material file: raw, base64 or hex")
	return cmd
}
