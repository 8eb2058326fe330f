package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

// auditQueryOptions are the flags of `audit query`.
type auditQueryOptions struct {
	since, until string
	filter       auditFilterFlags
	after        uint64
	limit        uint32
	all          bool
}

// request validates the flags and builds the first page's request; now is
// the reference for relative times.
func (o auditQueryOptions) request(now time.Time) (*cofferv1.AuditQueryRequest, error) {
	flt, err := o.filter.values()
	if err != nil {
		return nil, err
	}
	req := flt.query(&cofferv1.AuditQueryRequest{AfterSeq: o.after, Limit: o.limit})
	if o.limit > maxAuditPage {
		return nil, usagef("--limit %d is above %d", o.limit, maxAuditPage)
	}
	if req.Since, err = parseAuditTime("since", o.since, now); err != nil {
		return nil, err
	}
	if req.Until, err = parseAuditTime("until", o.until, now); err != nil {
		return nil, err
	}
	if req.Since != nil && req.Until != nil && !req.Since.AsTime().Before(req.Until.AsTime()) {
		return nil, usagef("--since (%s) must be before --until (%s)", req.Since.AsTime().Format(time.RFC3339), req.Until.AsTime().Format(time.RFC3339))
	}
	return req, nil
}

// parseAuditTime parses a --since or --until value: an RFC 3339 time, or a
// duration meaning that long before now ("90m", "1h", "1h-ago", "7d").
// Empty is no bound.
func parseAuditTime(flag, s string, now time.Time) (*timestamppb.Timestamp, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return timestamppb.New(t), nil
	}
	d, err := parseAgo(s)
	if err != nil {
		return nil, usagef("--%s %q: want an RFC 3339 time (2024-05-01T12:00:00Z) or how long ago (90m, 1h, 7d): %v", flag, s, err)
	}
	return timestamppb.New(now.Add(-d)), nil
}

// parseAgo parses a positive duration, optionally followed by "ago" or
// "-ago"; whole days may be written as "7d".
func parseAgo(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if rest, ok := strings.CutSuffix(s, "ago"); ok {
		s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "-"))
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseUint(days, 10, 32)
		if err != nil || n > maxAgoDays {
			return 0, fmt.Errorf("days must be a whole number up to %d", maxAgoDays)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, err
		}
	}
	if d <= 0 {
		return 0, errors.New("the duration must be positive")
	}
	return d, nil
}

func (a *app) auditQueryCmd() *cobra.Command {
	var o auditQueryOptions
	cmd := &cobra.Command{
		Use:   "query [--since T] [--until T] [--client NAME | --caller ID] [--gkid G] [--op O] [--outcome X] [--after SEQ] [--limit N] [--all]",
		Short: "List audit entries, oldest first",
		Long: `List audit entries after --after, oldest first, that match every filter given.
--since and --until take an RFC 3339 time or how long ago (90m, 1h, 7d);
--since is inclusive, --until exclusive. An entry's time is the clock
reading of the node that accepted the request: sequence numbers, not times,
give the order. By its time index, the node skips the entries that are all
older than --since and stops where the rest are all at or after --until, so
a window is quick however long the log is.

One page is at most --limit entries (1000; default 100), and a page stops
early after scanning 100,000 entries, so a page with few or no matches does
not mean the log ends there. Without --all the command says which --after
continues the listing; with --all it follows pages up to the head of the log
as it was at the first page. Each page is bounded by --timeout.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := o.request(time.Now())
			if err != nil {
				return err
			}
			return a.withLongClient(cmd, func(ctx context.Context, c *client.Client) error {
				return a.auditQuery(ctx, c, req, o.all)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.since, "since", "", "only entries at or after this time (RFC 3339, or how long ago: 1h, 7d)")
	f.StringVar(&o.until, "until", "", "only entries before this time (RFC 3339, or how long ago)")
	o.filter.add(f)
	f.Uint64Var(&o.after, "after", 0, "start after this sequence number")
	f.Uint32Var(&o.limit, "limit", 0, "entries per page, at most 1000 (default 100)")
	f.BoolVar(&o.all, "all", false, "follow pages up to the head of the log")
	return cmd
}

// auditQuery prints one page, or with all every page up to the head the
// first page reported. req is advanced page by page.
func (a *app) auditQuery(ctx context.Context, c *client.Client, req *cofferv1.AuditQueryRequest, all bool) error {
	var pw auditPageWriter = &auditTable{w: a.out}
	js := newAuditListJSON(a.out)
	if a.format == formatJSON {
		pw = js
	}
	var resp *cofferv1.AuditQueryResponse
	var target uint64
	for page := 0; ; page++ {
		var err error
		if resp, err = a.auditPage(ctx, c, req); err != nil {
			// Output already written stays as it is: the exit status says
			// the listing is incomplete.
			return err
		}
		if err := pw.writePage(resp.GetEntries()); err != nil {
			return err
		}
		if page == 0 {
			target = resp.GetHeadSeq()
		}
		last := resp.GetLastSeq()
		if !all || last <= req.GetAfterSeq() || last >= target {
			break
		}
		req.AfterSeq = last
	}
	next := max(resp.GetLastSeq(), req.GetAfterSeq())
	if a.format == formatJSON {
		return js.finish(next, resp.GetHeadSeq())
	}
	if !all {
		if next < resp.GetHeadSeq() {
			fmt.Fprintf(a.err, "more entries: run again with --after %d (the log's head is %d)\n", next, resp.GetHeadSeq())
		} else {
			fmt.Fprintf(a.err, "no more entries: later ones will follow --after %d\n", next)
		}
	}
	return nil
}

// auditListJSON streams the JSON form of an AuditQueryResponse:
// {"entries": [...], "last_seq": "N", "head_seq": "H"} (uint64 as strings,
// as protojson writes them), so that following every page needs memory
// for one page only. last_seq is the --after that continues the listing.
type auditListJSON struct{ jsonList }

func newAuditListJSON(w io.Writer) *auditListJSON {
	return &auditListJSON{jsonList{w: w, field: "entries"}}
}

func (l *auditListJSON) writePage(entries []*cofferv1.AuditEntry) error {
	return writeJSONItems(&l.jsonList, entries)
}

func (l *auditListJSON) finish(lastSeq, headSeq uint64) error {
	return l.jsonList.finish(fmt.Sprintf("  \"last_seq\": \"%d\",\n  \"head_seq\": \"%d\"", lastSeq, headSeq))
}
