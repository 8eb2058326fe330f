package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/escrow"
)

func (a *app) policyCmd() *cobra.Command {
	return group("policy", "Create, change and inspect custody policies", a.policyCreateCmd(), a.policyUpdateCmd(), a.policyGetCmd(), a.policyListCmd())
}

func (a *app) policyCreateCmd() *cobra.Command {
	var name string
	var escrowKeys, algorithms []string
	var uf useFlags
	cmd := &cobra.Command{
		Use:   "create --name P [--escrow-key PUBFILE]... [--algorithm A]...",
		Short: "Create a custody policy with its own KEK and optional escrow keys",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return usagef("--name is required")
			}
			req := &cofferv1.CreatePolicyRequest{Name: name}
			var err error
			if req.DefaultUsePolicy, req.MaxLifetime, req.CachePolicy, err = uf.build(cmd); err != nil {
				return err
			}
			req.EscrowRetention = uf.escrowRetention(cmd)
			if req.AllowedAlgorithms, err = parseAlgorithms(algorithms); err != nil {
				return err
			}
			if req.EscrowKeys, err = readEscrowKeys(escrowKeys); err != nil {
				return err
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
	uf.register(f)
	return cmd
}

// useFlags are the key use and cache policy flags of policy create/update.
type useFlags struct {
	ops                 []string
	notBefore, notAfter string
	maxLifetime         time.Duration
	escrowRetain        time.Duration
	maxEncryptions      uint64
	rotateEvery         time.Duration
	rotateAfter         uint64
	cacheable           bool
	cacheTTL            time.Duration
	cacheMax            uint32
}

func (u *useFlags) register(f *pflag.FlagSet) {
	u.registerUse(f)
	f.DurationVar(&u.maxLifetime, "max-lifetime", 0, "keys expire this long after creation, e.g. 8760h (at least 1m)")
	f.DurationVar(&u.escrowRetain, "escrow-retention", 0, "keep escrow copies this long after their key is destroyed or version retired, e.g. 720h (0: not at all, and destroy needs --destroy-escrow)")
	f.BoolVar(&u.cacheable, "cacheable", false, "cache policy: clients may cache keys")
	f.DurationVar(&u.cacheTTL, "cache-ttl", 0, "cache policy: how long a client may cache a key")
	f.Uint32Var(&u.cacheMax, "cache-max-keys", 0, "cache policy: how many keys a client may cache")
}

// registerUse registers the use policy flags only (key amend-use).
func (u *useFlags) registerUse(f *pflag.FlagSet) {
	f.StringSliceVar(&u.ops, "ops", nil, "key use policy: operations keys may be used for, e.g. get,encrypt (default: any granted)")
	f.StringVar(&u.notBefore, "not-before", "", "key use policy: keys may not be used before this time (RFC 3339)")
	f.StringVar(&u.notAfter, "not-after", "", "key use policy: keys may not be used after this time (RFC 3339)")
	f.Uint64Var(&u.maxEncryptions, "max-encryptions", 0, "key use policy: encryptions allowed under one version of a key, then refused until it is rotated (default: 2^32 less a margin)")
	f.DurationVar(&u.rotateEvery, "rotate-every", 0, "key use policy: rotate each key automatically once its newest version is this old, e.g. 2160h (at least 1h)")
	f.Uint64Var(&u.rotateAfter, "rotate-after-encryptions", 0, "key use policy: rotate each key automatically after this many encryptions under its newest version")
}

// build returns the use policy, lifetime and cache policy the flags set (nil
// for what no flag touched).
func (u *useFlags) build(cmd *cobra.Command) (*cofferv1.KeyUsePolicy, *durationpb.Duration, *cofferv1.KeyCachePolicy, error) {
	f := cmd.Flags()
	use, err := u.buildUse(cmd)
	if err != nil {
		return nil, nil, nil, err
	}
	var lifetime *durationpb.Duration
	if f.Changed("max-lifetime") {
		lifetime = durationpb.New(u.maxLifetime)
	}
	var cache *cofferv1.KeyCachePolicy
	if f.Changed("cacheable") || f.Changed("cache-ttl") || f.Changed("cache-max-keys") {
		cache = &cofferv1.KeyCachePolicy{Cacheable: u.cacheable, Ttl: durationpb.New(u.cacheTTL), MaxKeys: u.cacheMax}
	}
	return use, lifetime, cache, nil
}

// escrowRetention returns --escrow-retention, nil if it was not given.
func (u *useFlags) escrowRetention(cmd *cobra.Command) *durationpb.Duration {
	if !cmd.Flags().Changed("escrow-retention") {
		return nil
	}
	return durationpb.New(u.escrowRetain)
}

// buildUse returns the use policy the use flags set, nil if none was given.
func (u *useFlags) buildUse(cmd *cobra.Command) (*cofferv1.KeyUsePolicy, error) {
	f := cmd.Flags()
	var use *cofferv1.KeyUsePolicy
	if f.Changed("ops") || f.Changed("not-before") || f.Changed("not-after") ||
		f.Changed("max-encryptions") || f.Changed("rotate-every") || f.Changed("rotate-after-encryptions") {
		// The flags together replace the whole use policy.
		use = &cofferv1.KeyUsePolicy{Operations: u.ops, MaxEncryptions: u.maxEncryptions, RotateAfterEncryptions: u.rotateAfter}
		if u.rotateEvery != 0 {
			use.RotationPeriod = durationpb.New(u.rotateEvery)
		}
		for _, t := range []struct {
			flag, val string
			dst       **timestamppb.Timestamp
		}{{"not-before", u.notBefore, &use.NotBefore}, {"not-after", u.notAfter, &use.NotAfter}} {
			if t.val == "" {
				continue
			}
			ts, err := time.Parse(time.RFC3339, t.val)
			if err != nil {
				return nil, usagef("--%s: %v", t.flag, err)
			}
			*t.dst = timestamppb.New(ts)
		}
	}
	return use, nil
}

func (a *app) policyUpdateCmd() *cobra.Command {
	var name string
	var escrowKeys, algorithms []string
	var rotate bool
	var uf useFlags
	cmd := &cobra.Command{
		Use:   "update --name P [--rotate-kek] [--escrow-key PUBFILE]... [--algorithm A]... [use and cache policy flags]",
		Short: "Change a custody policy for the keys created from now on; --rotate-kek gives them a new KEK",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return usagef("--name is required")
			}
			req := &cofferv1.UpdatePolicyRequest{Name: name, RotateKek: rotate}
			var err error
			if req.DefaultUsePolicy, req.MaxLifetime, req.CachePolicy, err = uf.build(cmd); err != nil {
				return err
			}
			req.EscrowRetention = uf.escrowRetention(cmd)
			if req.AllowedAlgorithms, err = parseAlgorithms(algorithms); err != nil {
				return err
			}
			if req.AddEscrowKeys, err = readEscrowKeys(escrowKeys); err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.UpdatePolicy(ctx, req)
				if err != nil {
					return err
				}
				if a.format != formatJSON {
					// Keys copy the policy's use and cache policy and its KEK
					// version when they are created.
					fmt.Fprintln(a.err, "coffer: the change applies to keys created from now on; existing keys keep the use and cache policy and the KEK they were created with (amend one key's use policy with coffer key amend-use)")
				}
				return a.printPolicy(resp.GetPolicy())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "policy name (required)")
	f.BoolVar(&rotate, "rotate-kek", false, "generate a new KEK version for new keys")
	f.StringArrayVar(&escrowKeys, "escrow-key", nil, "add an escrow public key (PEM); repeatable")
	f.StringArrayVar(&algorithms, "algorithm", nil, "replace the allowed algorithms; repeatable")
	uf.register(f)
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
	fmt.Fprintf(tw, "use policy:\t%s\n", formatUsePolicy(p.GetDefaultUsePolicy()))
	if p.GetEscrowRetention() != nil {
		fmt.Fprintf(tw, "escrow retention:\t%s\n", p.GetEscrowRetention().AsDuration())
	}
	if p.GetMaxLifetime() != nil {
		fmt.Fprintf(tw, "max lifetime:\t%s\n", p.GetMaxLifetime().AsDuration())
	}
	fmt.Fprintf(tw, "cache policy:\t%s\n", formatCachePolicy(p.GetCachePolicy()))
	fmt.Fprintf(tw, "revision:\t%d\n", p.GetRevision())
	fmt.Fprintf(tw, "created:\t%s\n", formatTime(p.GetCreatedAt()))
	for _, k := range p.GetEscrowKeys() {
		fmt.Fprintf(tw, "escrow key:\t%s (%s)\n", k.GetId(), k.GetLabel())
	}
	return tw.Flush()
}

// parseAlgorithms parses --algorithm values.
func parseAlgorithms(names []string) ([]cofferv1.Algorithm, error) {
	var out []cofferv1.Algorithm
	for _, s := range names {
		alg, err := parseAlgorithm(s)
		if err != nil {
			return nil, usageError{err}
		}
		out = append(out, alg)
	}
	return out, nil
}

// readEscrowKeys reads --escrow-key files, each labelled with its path.
func readEscrowKeys(paths []string) ([]*cofferv1.EscrowKeyInfo, error) {
	var out []*cofferv1.EscrowKeyInfo
	for _, path := range paths {
		der, err := escrow.ReadPublicKey(path)
		if err != nil {
			return nil, err
		}
		out = append(out, &cofferv1.EscrowKeyInfo{PublicKey: der, Label: path})
	}
	return out, nil
}
