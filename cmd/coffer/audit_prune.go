package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

func (a *app) auditPruneCmd() *cobra.Command {
	var upTo uint64
	var before string
	cmd := &cobra.Command{
		Use:   "prune (--up-to SEQ | --before TIME)",
		Short: "Delete audit entries up to a signed checkpoint, by sequence number or age",
		Long: `Delete the entries up to a signed checkpoint, on every node: with --up-to,
the newest checkpoint at or below SEQ; with --before, the newest of the
checkpoints signed before TIME (an RFC 3339 time, or how long ago: 90d),
read oldest first up to the first signed at or after it, so every entry
pruned was in the log before a checkpoint signed before TIME. A signed
prune marker takes their place, so the rest of the chain still verifies.
Pruning up to where the log already starts changes nothing and prints the
same marker, so a retention job can run it on a schedule:
  coffer audit export --after SEQ --out audit-DATE.jsonl && coffer audit prune --before 90d

Export the log (coffer audit export) and keep the export before pruning:
the deleted entries cannot be brought back. It needs the audit.prune grant
(the security-officer role has it), which audit.export does not give: a
client that ships the log to a SIEM cannot delete it.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &cofferv1.AuditPruneRequest{UpToSeq: upTo}
			switch {
			case upTo == 0 && before == "":
				return usagef("--up-to SEQ (1 or more) or --before TIME is required")
			case upTo != 0 && before != "":
				return usagef("give --up-to or --before, not both")
			case before != "":
				var err error
				if req.Before, err = parseAuditTime("before", before, time.Now()); err != nil {
					return err
				}
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.AuditPrune(ctx, req)
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				m := resp.GetMarker()
				if m == nil {
					_, err := fmt.Fprintln(a.out, "nothing to prune: no checkpoint was signed before that time")
					return err
				}
				cp := m.GetCheckpoint()
				tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
				fmt.Fprintf(tw, "pruned entries:\t%d\n", resp.GetPruned())
				fmt.Fprintf(tw, "first remaining seq:\t%d\n", m.GetFirstSeq())
				writeCheckpointRows(tw, cp, false)
				fmt.Fprintf(tw, "prev hash:\t%x\n", m.GetPrevHash())
				return tw.Flush()
			})
		},
	}
	cmd.Flags().Uint64Var(&upTo, "up-to", 0, "prune up to the newest checkpoint at or below this sequence number")
	cmd.Flags().StringVar(&before, "before", "", "prune up to the newest checkpoint signed before this time (RFC 3339, or how long ago: 90d)")
	return cmd
}
