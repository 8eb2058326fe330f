package main

import (
	"context"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

func (a *app) clusterCmd() *cobra.Command {
	return group("cluster", "Inspect the cluster", a.clusterStatusCmd())
}

func (a *app) clusterStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show every member's role, Raft progress and health",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ClusterStatus(ctx, &cofferv1.ClusterStatusRequest{})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeJSON(a.out, clusterStatusJSON(resp))
				}
				return writeClusterTable(a.out, resp)
			})
		},
	}
}
