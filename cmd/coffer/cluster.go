package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

func (a *app) clusterCmd() *cobra.Command {
	return group("cluster", "Inspect the cluster and manage its members", a.clusterStatusCmd(), a.clusterPinCmd(),
		a.clusterRemoveCmd(), a.clusterTransferCmd(), a.clusterDrainCmd())
}

func (a *app) clusterStatusCmd() *cobra.Command {
	var digest bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every member's role, Raft progress and health",
		Long: `Show every member's role, Raft progress and health, as each member
reports it. With --digest every reachable member also computes the SHA-256
digest of its replicated state and reports it with the applied index it was
taken at: members at the same index must show the same digest. The table
shows the first 16 hex digits, -o json the whole digest. Each member reads
its whole store for it, so it is computed only when asked.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ClusterStatus(ctx, &cofferv1.ClusterStatusRequest{Digest: digest})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeJSON(a.out, clusterStatusJSON(resp))
				}
				return writeClusterTable(a.out, resp, digest)
			})
		},
	}
	cmd.Flags().BoolVar(&digest, "digest", false, "also show each member's state digest and the index it was taken at")
	return cmd
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

func (a *app) clusterRemoveCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "remove NODE [--force]",
		Short: "Remove a member from the cluster (and keep it out)",
		Long: `Remove member NODE from the Raft configuration. The member is not admitted
again over gossip until its certificate is pinned again (coffer cluster pin).
Refused with FailedPrecondition when NODE leads (transfer leadership first),
when the removal would leave fewer voters than membership.min_quorum, or when
NODE is the last node of a site that holds a voter; --force overrides the
last two, and the audit entry says so. Needs cluster.manage.`,
		Args: exactArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.RemoveNode(ctx, &cofferv1.RemoveNodeRequest{Node: args[0], Force: force})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeJSON(a.out, map[string]any{"node": resp.GetNode(), "was_voter": resp.GetWasVoter(), "voters_left": resp.GetVotersLeft()})
				}
				_, err = fmt.Fprintf(a.out, "removed %s (voter: %v); %d voters left\n", resp.GetNode(), resp.GetWasVoter(), resp.GetVotersLeft())
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "remove even if it leaves fewer voters than the minimum quorum or empties a site holding voters")
	return cmd
}

func (a *app) clusterTransferCmd() *cobra.Command {
	var to string
	cmd := &cobra.Command{
		Use:   "transfer-leader [--to NODE]",
		Short: "Move leadership to another voter",
		Long: `Move leadership from the current leader to voter NODE, or to any other voter
that is not drained. Needs cluster.manage.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.TransferLeadership(ctx, &cofferv1.TransferLeadershipRequest{To: to})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeJSON(a.out, map[string]string{"from": resp.GetFrom(), "to": resp.GetTo()})
				}
				_, err = fmt.Fprintf(a.out, "leadership moved from %s to %s\n", resp.GetFrom(), resp.GetTo())
				return err
			})
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "voter to lead (default: any other voter that is not drained)")
	return cmd
}

func (a *app) clusterDrainCmd() *cobra.Command {
	var undo bool
	cmd := &cobra.Command{
		Use:   "drain NODE [--undo]",
		Short: "Keep leadership away from a member, for maintenance",
		Long: `Mark member NODE drained: if it leads, it hands leadership to another voter,
and it hands it over again whenever it is elected, until undrained (--undo).
It keeps its vote and serves requests. Needs cluster.manage.`,
		Args: exactArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.DrainNode(ctx, &cofferv1.DrainNodeRequest{Node: args[0], Undrain: undo})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeJSON(a.out, map[string]any{"node": resp.GetNode(), "drained": resp.GetDrained()})
				}
				state := "drained"
				if !resp.GetDrained() {
					state = "no longer drained"
				}
				_, err = fmt.Fprintf(a.out, "%s is %s\n", resp.GetNode(), state)
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&undo, "undo", false, "undrain: let NODE lead again")
	return cmd
}
