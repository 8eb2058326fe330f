package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/escrow"
)

func (a *app) policyCmd() *cobra.Command {
	return group("policy", "Create and inspect custody policies", a.policyCreateCmd(), a.policyGetCmd(), a.policyListCmd())
}

func (a *app) policyCreateCmd() *cobra.Command {
	var name string
	var escrowKeys, algorithms []string
	cmd := &cobra.Command{
		Use:   "create --name P [--escrow-key PUBFILE]... [--algorithm A]...",
		Short: "Create a custody policy with its own KEK and optional escrow keys",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return usagef("--name is required")
			}
			req := &cofferv1.CreatePolicyRequest{Name: name}
			for _, s := range algorithms {
				alg, err := parseAlgorithm(s)
				if err != nil {
					return usageError{err}
				}
				req.AllowedAlgorithms = append(req.AllowedAlgorithms, alg)
			}
			for _, path := range escrowKeys {
				der, err := escrow.ReadPublicKey(path)
				if err != nil {
					return err
				}
				req.EscrowKeys = append(req.EscrowKeys, &cofferv1.EscrowKeyInfo{PublicKey: der, Label: path})
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.CreatePolicy(ctx, req)
				if err != nil {
					return err
				}
				return a.printPolicy(resp.GetPolicy())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "policy name, 1-64 of [a-z0-9._-] (required)")
	f.StringArrayVar(&escrowKeys, "escrow-key", nil, "escrow public key file (PEM, RSA >= 3072 bits); repeatable")
	f.StringArrayVar(&algorithms, "algorithm", nil, "allowed algorithm; repeatable (default: all)")
	return cmd
}

func (a *app) policyGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show a custody policy",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.GetPolicy(ctx, &cofferv1.GetPolicyRequest{Name: args[0]})
				if err != nil {
					return err
				}
				return a.printPolicy(resp.GetPolicy())
			})
		},
	}
}

func (a *app) policyListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List custody policies",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ListPolicies(ctx, &cofferv1.ListPoliciesRequest{})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tKEK\tALGORITHMS\tESCROW KEYS\tCREATED")
				for _, p := range resp.GetPolicies() {
					fmt.Fprintf(tw, "%s\tv%d\t%s\t%d\t%s\n", p.GetName(), p.GetKekVersion(), algorithmList(p.GetAllowedAlgorithms()),
						len(p.GetEscrowKeys()), formatTime(p.GetCreatedAt()))
				}
				return tw.Flush()
			})
		},
	}
}

func algorithmList(algs []cofferv1.Algorithm) string {
	if len(algs) == 0 {
		return "any"
	}
	var names []string
	for _, a := range algs {
		names = append(names, algorithmName(a))
	}
	return strings.Join(names, ",")
}

func (a *app) printPolicy(p *cofferv1.Policy) error {
	if a.format == formatJSON {
		return writeProto(a.out, p)
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 1, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", p.GetName())
	fmt.Fprintf(tw, "kek version:\t%d\n", p.GetKekVersion())
	fmt.Fprintf(tw, "algorithms:\t%s\n", algorithmList(p.GetAllowedAlgorithms()))
	fmt.Fprintf(tw, "cache policy:\t%s\n", formatCachePolicy(p.GetCachePolicy()))
	fmt.Fprintf(tw, "created:\t%s\n", formatTime(p.GetCreatedAt()))
	for _, k := range p.GetEscrowKeys() {
		fmt.Fprintf(tw, "escrow key:\t%s (%s)\n", k.GetId(), k.GetLabel())
	}
	return tw.Flush()
}
