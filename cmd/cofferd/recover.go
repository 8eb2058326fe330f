package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/coffer-kms/coffer/node"
)

func recoverCmd() *cobra.Command {
	var configPath, voters string
	var accept bool
	cmd := &cobra.Command{
		Use:   "recover --config FILE --voters ID,ID... --accept-data-loss",
		Short: "Bring back a cluster that lost a majority of its voters (run on each stopped survivor)",
		Long: `When a majority of the voters is lost for good, no leader can be elected and
nothing can be written. On every surviving node, stopped, run

  cofferd recover --config FILE --voters n1,n3 --accept-data-loss

with the same list of survivors (ids of the current configuration), then
start them: they elect a leader among themselves, and the recovery is
recorded in the audit log (operation cluster.recover) as soon as they have
one. The node's log and state are kept; only its Raft configuration is
rewritten (hashicorp/raft's RecoverCluster).

What may be lost: writes that a majority of the old voters acknowledged
without any of the survivors. Never start a lost node again with its old
data: wipe it and let it join as a new node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				return usageError{fmt.Errorf("--config is required")}
			}
			var ids []string
			for _, v := range strings.Split(voters, ",") {
				if v = strings.TrimSpace(v); v != "" {
					ids = append(ids, v)
				}
			}
			if len(ids) == 0 {
				return usageError{fmt.Errorf("--voters is required: the ids of the surviving voters, this node included")}
			}
			cfg, err := loadConfig(configPath)
			if err != nil {
				return err
			}
			rec, err := node.Recover(cfg.Config, ids, accept)
			if err != nil {
				return err
			}
			fmt.Printf("Recovered %s: voters are now %s (were %s), at index %d.\nStart every survivor; the recovery is audited once they have a leader.\n",
				rec.Node, strings.Join(rec.Voters, ", "), strings.Join(rec.Previous, ", "), rec.Index)
			return nil
		},
	}
	cmd.Flags().StringVar(&configPath, "config", "", "the stopped node's config file (JSON)")
	cmd.Flags().StringVar(&voters, "voters", "", "ids of the surviving voters, comma-separated, this node included")
	cmd.Flags().BoolVar(&accept, "accept-data-loss", false, "accept that writes only the lost voters acknowledged may be lost")
	return cmd
}
