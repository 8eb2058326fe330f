package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

func (a *app) clusterCmd() *cobra.Command {
	return group("cluster", "Inspect the cluster and manage its members", a.clusterStatusCmd(), a.clusterPinCmd())
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

func (a *app) clusterPinCmd() *cobra.Command {
	var certFile string
	cmd := &cobra.Command{
		Use:   "pin NODE --cert-file FILE",
		Short: "Pin a member's renewed certificate (only the pinned one is accepted from it)",
		Long: `Replace the certificate pinned for member NODE with FILE. The leader pins
every member's certificate when it admits the member; from then on the
internal API and the Raft port accept that member only with that very
certificate, so a second certificate minted for the same name is refused.
After renewing a member's certificate (coffer ca issue-node), pin the new one,
then restart the member with it. FILE must be a node certificate from the
node CA for coffer://node/NODE. Needs cluster.manage; audited with both
fingerprints.`,
		Args: exactArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if certFile == "" {
				return usagef("--cert-file is required")
			}
			pemBytes, err := readFileLimited(certFile)
			if err != nil {
				return fmt.Errorf("read %s: %w", certFile, err)
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.PinNode(ctx, &cofferv1.PinNodeRequest{Node: args[0], CertificatePem: pemBytes})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeJSON(a.out, map[string]string{"node": resp.GetNode(), "cert_sha256": resp.GetCertSha256(),
						"previous_sha256": resp.GetPreviousSha256(), "cert_serial": resp.GetCertSerial()})
				}
				prev := resp.GetPreviousSha256()
				if prev == "" {
					prev = "none"
				}
				_, err = fmt.Fprintf(a.out, "pinned %s: sha256 %s (serial %s), was %s\n", resp.GetNode(), resp.GetCertSha256(), resp.GetCertSerial(), prev)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&certFile, "cert-file", "", "the member's new certificate, PEM (required)")
	return cmd
}
