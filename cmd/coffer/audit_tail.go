package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

func (a *app) auditTailCmd() *cobra.Command {
	var n int
	var follow bool
	var interval time.Duration
	var filter auditFilterFlags
	cmd := &cobra.Command{
		Use:   "tail [-n 20] [-f] [--interval 1s] [--client NAME | --caller ID] [--gkid G] [--op O] [--outcome X]",
		Short: "Show the newest audit entries, and with -f follow new ones",
		Long: `Show the newest -n entries of the audit log. With -f, keep printing new
entries as nodes apply them, until interrupted (Ctrl-C ends it with status
0). With -o json, entries are printed as JSON Lines, one object per entry.

-f opens one stream (AuditService.Follow) that starts with the newest -n
entries: one request with one audit entry (audit.read), whose own entry
follows them. When its node fails the stream resumes on another after the
last entry printed. Against a node too old to stream, -f polls
every --interval instead, and every poll is a request with its own entry.

The filters keep only matching entries, as in audit query, and -n counts
matches: the node reads back from the newest entry until it has found n, or
has read 100,000 entries. For example, the last 20 refusals of one client,
then its refusals as they happen:
  coffer audit tail -n 20 -f --client app --outcome denied`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if n < 0 || n > maxAuditPage {
				return usagef("-n must be between 0 and %d, got %d", maxAuditPage, n)
			}
			if interval < minTailInterval || interval > maxTailInterval {
				return usagef("--interval must be between %v and %v, got %v", minTailInterval, maxTailInterval, interval)
			}
			flt, err := filter.values()
			if err != nil {
				return err
			}
			return a.withLongClient(cmd, func(ctx context.Context, c *client.Client) error {
				err := a.auditTail(ctx, c, n, flt, follow, interval)
				if follow && ctx.Err() != nil {
					// Interrupted: the normal way to stop following.
					return nil
				}
				return err
			})
		},
	}
	f := cmd.Flags()
	f.IntVarP(&n, "lines", "n", defaultTailLines, "how many of the newest entries to show (0-1000)")
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new entries until interrupted")
	f.DurationVar(&interval, "interval", time.Second, "with -f against a node that cannot stream, how often to poll (100ms-5m)")
	filter.add(f)
	return cmd
}

func (a *app) auditTail(ctx context.Context, c *client.Client, n int, flt auditFilter, follow bool, interval time.Duration) error {
	var pw auditPageWriter = &auditTable{w: a.out}
	if a.format == formatJSON {
		pw = auditLines{w: a.out}
	}
	if follow {
		// One stream, which starts with the newest n entries.
		started := false
		req := flt.follow(&cofferv1.AuditFollowRequest{FromNewest: true, Newest: uint32(n)})
		err := c.AuditFollow(ctx, req, func(m *cofferv1.AuditFollowResponse) error {
			started = true
			return pw.writePage(m.GetEntries())
		})
		if started || status.Code(err) != codes.Unimplemented {
			return err
		}
		fmt.Fprintf(a.err, "coffer: this node cannot stream the log; polling every %v\n", interval)
	}
	entries, last, err := a.auditNewest(ctx, c, n, flt)
	if err != nil {
		return err
	}
	if err := pw.writePage(entries); err != nil {
		return err
	}
	if !follow {
		return nil
	}
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		// Catch up page by page, then wait again.
		for {
			resp, err := a.auditPage(ctx, c, flt.query(&cofferv1.AuditQueryRequest{AfterSeq: last, Limit: maxAuditPage}))
			if err != nil {
				return err
			}
			if err := pw.writePage(resp.GetEntries()); err != nil {
				return err
			}
			progressed := resp.GetLastSeq() > last
			if progressed {
				last = resp.GetLastSeq()
			}
			if !progressed || last >= resp.GetHeadSeq() {
				break
			}
		}
		t.Reset(interval)
	}
}

// auditNewest returns the newest n entries that match flt, and the head
// seq to follow on from.
func (a *app) auditNewest(ctx context.Context, c *client.Client, n int, flt auditFilter) ([]*cofferv1.AuditEntry, uint64, error) {
	if n == 0 {
		head, err := a.auditPage(ctx, c, &cofferv1.AuditQueryRequest{Limit: 1})
		return nil, head.GetHeadSeq(), err
	}
	resp, err := a.auditPage(ctx, c, flt.query(&cofferv1.AuditQueryRequest{Newest: uint32(n), Limit: uint32(n)}))
	if err != nil || resp.GetLastSeq() >= resp.GetHeadSeq() {
		// A node that reads back from the head answers up to it. A node
		// older than newest answers from the start of the log, and that is
		// the same answer when it read up to the head.
		return resp.GetEntries(), resp.GetHeadSeq(), err
	}
	// An older node: the matches among the newest n entries.
	head := resp.GetHeadSeq()
	after := head - min(uint64(n), head)
	resp, err = a.auditPage(ctx, c, flt.query(&cofferv1.AuditQueryRequest{AfterSeq: after, Limit: uint32(n)}))
	if err != nil {
		return nil, 0, err
	}
	return resp.GetEntries(), max(resp.GetLastSeq(), after), nil
}

// auditLines writes entries as JSON Lines, one compact protojson object per
// entry: the streaming form of `audit tail -o json`.
type auditLines struct{ w io.Writer }

func (l auditLines) writePage(entries []*cofferv1.AuditEntry) error {
	for _, e := range entries {
		raw, err := protoJSON.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode audit entry: %w", err)
		}
		var b bytes.Buffer
		if err := json.Compact(&b, raw); err != nil {
			return fmt.Errorf("compact JSON: %w", err)
		}
		b.WriteByte('\n')
		if _, err := l.w.Write(b.Bytes()); err != nil {
			return err
		}
	}
	return nil
}
