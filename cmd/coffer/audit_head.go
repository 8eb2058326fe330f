package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/client"
)

func (a *app) auditHeadCmd() *cobra.Command {
	var pin string
	var cons consistencyFlag
	cmd := &cobra.Command{
		Use:   "head [--consistency linearizable|stale] [--pin FILE]",
		Short: "Show where the audit log stands: newest entry, newest signed checkpoint, prune marker",
		Long: `Show the newest entry's sequence number and hash, the newest signed
checkpoint (the sequence number it covers, when and by which node it was
signed) and, if the log was pruned, the first sequence number left.

--pin FILE appends the newest checkpoint to FILE (created 0600 if missing)
as a line of the export format. Keep that file where the cluster's operators
cannot write, and later check exports against it with
audit verify --pinned FILE: a rewrite of the history it covers then fails,
even one signed with a node's key. It needs the audit.read grant.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.AuditHead(ctx, &cofferv1.AuditHeadRequest{Consistency: cons.v})
				if err != nil {
					return err
				}
				if pin != "" {
					if err := appendPin(pin, resp.GetCheckpoint()); err != nil {
						return err
					}
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
				fmt.Fprintf(tw, "node:\t%s (applied index %d)\n", resp.GetNode(), resp.GetAppliedIndex())
				fmt.Fprintf(tw, "head seq:\t%d\n", resp.GetHeadSeq())
				fmt.Fprintf(tw, "head hash:\t%x\n", resp.GetHeadHash())
				if cp := resp.GetCheckpoint(); cp != nil {
					writeCheckpointRows(tw, cp, true)
				} else {
					fmt.Fprintf(tw, "checkpoint:\tnone yet\n")
				}
				if m := resp.GetPruned(); m != nil {
					fmt.Fprintf(tw, "pruned before seq:\t%d\n", m.GetFirstSeq())
				}
				return tw.Flush()
			})
		},
	}
	addConsistencyFlag(cmd.Flags(), &cons, "linearizable or stale")
	cmd.Flags().StringVar(&pin, "pin", "", "append the newest checkpoint to this file, for audit verify --pinned")
	return cmd
}

// appendPin appends cp to path as an export-format checkpoint line.
func appendPin(path string, cp *cofferv1.AuditCheckpoint) error {
	if cp == nil {
		return fmt.Errorf("--pin: the log has no signed checkpoint yet")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("--pin: %w", err)
	}
	w := audit.NewWriter(f)
	err = w.WriteCheckpoint(cp)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("--pin %s: %w", path, err)
	}
	return nil
}
