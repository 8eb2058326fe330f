package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

func (a *app) cacheCmd() *cobra.Command {
	policy := group("policy", "Show and set client key cache policies",
		a.cachePolicyGetCmd(), a.cachePolicySetCmd(), a.cachePolicyClearCmd())
	return group("cache", "Govern client key caches: policies, flush, invalidations", policy, a.cacheFlushCmd(), a.cacheWatchCmd())
}

func (a *app) cachePolicyGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get",
		Short: "Show the cache policy in force for the calling client",
		Long: `Show the key cache policy in force for the client this command runs as: its
own, set by a security officer, or else the cluster default (source). The
generation is raised by every cache flush; a client drops the keys it cached
under an older one.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.GetCachePolicy(ctx, &cofferv1.GetCachePolicyRequest{})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				return a.printCachePolicy(resp.GetClient(), resp.GetPolicy())
			})
		},
	}
}

func (a *app) cachePolicySetCmd() *cobra.Command {
	var name string
	var ttl time.Duration
	var maxEntries, maxUses uint32
	var allow []string
	var persist bool
	cmd := &cobra.Command{
		Use:   "set [--client NAME] --ttl D [--max-entries N] [--max-uses N] [--allow get,encrypt,decrypt] [--persist]",
		Short: "Set a client's key cache policy, or the cluster default (security officer)",
		Long: `Set the key cache policy of one client (--client), or without --client the
cluster default, which applies to every client without its own. The flags
together replace the whole policy. A client library applies it on top of
each key's own cache policy: a key is cached only if both allow it.

  coffer cache policy set --ttl 5m --max-entries 500 --allow get
  coffer cache policy set --client batch-job --ttl 1h --allow get,decrypt --persist`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("ttl") {
				return usagef("--ttl is required (0 allows no caching)")
			}
			p := &cofferv1.ClientCachePolicy{Ttl: durationpb.New(ttl), MaxEntries: maxEntries, MaxUses: maxUses, Persist: persist}
			for _, op := range allow {
				if op = strings.TrimSpace(op); op != "" {
					p.AllowedOperations = append(p.AllowedOperations, op)
				}
			}
			return a.setCachePolicy(cmd, &cofferv1.SetCachePolicyRequest{Client: name, Policy: p})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "client", "", "the client whose policy is set (default: the cluster default)")
	f.DurationVar(&ttl, "ttl", 0, "longest time a key stays cached, at most 24h; 0: nothing may be cached (required)")
	f.Uint32Var(&maxEntries, "max-entries", 1000, "most keys cached at once, at most 100000")
	f.Uint32Var(&maxUses, "max-uses", 0, "most uses of one cached key before it is fetched again (0: no limit but the TTL)")
	f.StringSliceVar(&allow, "allow", []string{"get"}, "calls a cached key may serve: get, encrypt, decrypt")
	f.BoolVar(&persist, "persist", false, "the cache may be kept in an encrypted file across restarts")
	return cmd
}

// setCachePolicy sends req and prints the policy in force after it.
func (a *app) setCachePolicy(cmd *cobra.Command, req *cofferv1.SetCachePolicyRequest) error {
	return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
		resp, err := c.SetCachePolicy(ctx, req)
		if err != nil {
			return err
		}
		if a.format == formatJSON {
			return writeProto(a.out, resp)
		}
		return a.printCachePolicy(req.GetClient(), resp.GetPolicy())
	})
}

func (a *app) cachePolicyClearCmd() *cobra.Command {
	var name string
	var def bool
	cmd := &cobra.Command{
		Use:   "clear --client NAME | --default",
		Short: "Remove a client's own cache policy, or reset the cluster default (security officer)",
		Long: `Remove the key cache policy set for one client, so that the cluster default
applies to it again; or with --default remove the cluster default, so that
the built-in one applies (TTL 5m, 1000 keys, get only, not persisted).`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (name == "") == !def {
				return usagef("give exactly one of --client NAME and --default")
			}
			return a.setCachePolicy(cmd, &cofferv1.SetCachePolicyRequest{Client: name, Clear: true})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "client", "", "the client whose own policy is removed")
	f.BoolVar(&def, "default", false, "remove the cluster default instead")
	return cmd
}

func (a *app) cacheFlushCmd() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "flush --reason TEXT",
		Short: "Order every client to drop its key cache (security officer)",
		Long: `Raise the cluster's cache generation: every client drops the keys it cached
under an older one, at once if it watches for invalidations (coffer cache
watch), else when it next reads its policy. The reason is recorded in the
audit entry.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if strings.TrimSpace(reason) == "" {
				return usagef("--reason is required")
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.FlushCaches(ctx, &cofferv1.FlushCachesRequest{Reason: reason})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				_, err = fmt.Fprintf(a.out, "cache generation is now %d: every client drops what it cached before\n", resp.GetGeneration())
				return err
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit entry; required)")
	return cmd
}

func (a *app) cacheWatchCmd() *cobra.Command {
	var after uint64
	cmd := &cobra.Command{
		Use:   "watch [--after SEQ]",
		Short: "Print the calling client's cache invalidations as they come",
		Long: `Print the key cache invalidations for the client this command runs as, until
interrupted (Ctrl-C ends it with status 0): drop_key when a key it may read
changes state, is rotated or has its use policy amended; drop_all after a
cache flush or a change of the client or its grants; policy when its policy
in force changes. Each event names the audit sequence number of the change;
--after SEQ starts after it. With -o json, events are printed as JSON
Lines.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withLongClient(cmd, func(ctx context.Context, c *client.Client) error {
				var tw *tabwriter.Writer
				if a.format != formatJSON {
					tw = tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "SEQ\tEVENT\tDETAIL")
					if err := tw.Flush(); err != nil {
						return err
					}
				}
				err := c.WatchCache(ctx, &cofferv1.WatchCacheRequest{AfterSeq: after}, func(ev *cofferv1.CacheEvent) error {
					if tw == nil {
						return writeCacheEventLine(a, ev)
					}
					kind, detail := cacheEventText(ev)
					fmt.Fprintf(tw, "%d\t%s\t%s\n", ev.GetSeq(), kind, detail)
					return tw.Flush()
				})
				if ctx.Err() != nil {
					return nil // interrupted: the normal way to stop
				}
				return err
			})
		},
	}
	cmd.Flags().Uint64Var(&after, "after", 0, "start after this audit sequence number (default: from now on)")
	return cmd
}

// writeCacheEventLine writes ev as one line of compact JSON.
func writeCacheEventLine(a *app, ev *cofferv1.CacheEvent) error {
	raw, err := protoJSON.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode cache event: %w", err)
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return fmt.Errorf("compact JSON: %w", err)
	}
	b.WriteByte('\n')
	_, err = a.out.Write(b.Bytes())
	return err
}

// cacheEventText is an event's kind and what it says, for the table.
func cacheEventText(ev *cofferv1.CacheEvent) (kind, detail string) {
	switch e := ev.GetEvent().(type) {
	case *cofferv1.CacheEvent_DropKey:
		return "drop_key", e.DropKey
	case *cofferv1.CacheEvent_DropAll:
		return "drop_all", "drop every cached key"
	case *cofferv1.CacheEvent_Policy:
		return "policy", cachePolicySummary(e.Policy)
	}
	return "unknown", ""
}

// cachePolicySummary shows a policy on one line.
func cachePolicySummary(p *cofferv1.ClientCachePolicy) string {
	return fmt.Sprintf("ttl %s, max entries %d, max uses %s, allow %s, persist %t (%s, revision %d, generation %d)",
		p.GetTtl().AsDuration(), p.GetMaxEntries(), maxUsesText(p.GetMaxUses()), allowText(p.GetAllowedOperations()),
		p.GetPersist(), p.GetSource(), p.GetRevision(), p.GetGeneration())
}

func maxUsesText(n uint32) string {
	if n == 0 {
		return "none"
	}
	return strconv.FormatUint(uint64(n), 10)
}

func allowText(ops []string) string {
	if len(ops) == 0 {
		return "nothing"
	}
	return strings.Join(ops, ",")
}

// printCachePolicy prints a policy in force as a list of fields; client is
// whose it is ("" for the cluster default).
func (a *app) printCachePolicy(client string, p *cofferv1.ClientCachePolicy) error {
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	if client == "" {
		client = "(cluster default)"
	}
	fmt.Fprintf(tw, "client:\t%s\n", client)
	fmt.Fprintf(tw, "source:\t%s (revision %d)\n", p.GetSource(), p.GetRevision())
	fmt.Fprintf(tw, "ttl:\t%s\n", p.GetTtl().AsDuration())
	fmt.Fprintf(tw, "max entries:\t%d\n", p.GetMaxEntries())
	fmt.Fprintf(tw, "max uses:\t%s\n", maxUsesText(p.GetMaxUses()))
	fmt.Fprintf(tw, "allowed operations:\t%s\n", allowText(p.GetAllowedOperations()))
	fmt.Fprintf(tw, "persist:\t%t\n", p.GetPersist())
	fmt.Fprintf(tw, "generation:\t%d\n", p.GetGeneration())
	return tw.Flush()
}
