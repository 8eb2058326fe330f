package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// Limits and defaults of the audit commands.
const (
	// maxAuditPage is the API's bound on one audit query page.
	maxAuditPage = 1000
	// defaultTailLines is `audit tail`'s default -n.
	defaultTailLines = 20
	// minTailInterval and maxTailInterval bound `audit tail -f`'s polling
	// interval. Every poll is a request with its own audit entry, so the
	// interval cannot be made arbitrarily short.
	minTailInterval = 100 * time.Millisecond
	maxTailInterval = 5 * time.Minute
	// maxAgoDays bounds a --since/--until given in days.
	maxAgoDays = 100 * 365
	// auditKeyFile is where a node publishes the public key its audit
	// checkpoints are signed with, in its data directory (node.AuditKeyFile).
	auditKeyFile = "audit-signing.pub"
)

func (a *app) auditCmd() *cobra.Command {
	return group("audit", "Query, follow, export, verify and prune the audit log",
		a.auditHeadCmd(), a.auditQueryCmd(), a.auditTailCmd(), a.auditExportCmd(), a.auditVerifyCmd(), a.auditPruneCmd(), a.auditMatchCmd())
}

func (a *app) auditHeadCmd() *cobra.Command {
	var pin string
	var cons consistencyFlag
	cmd := &cobra.Command{
		Use:   "head [--consistency linearizable|stale] [--pin FILE]",
		Short: "Show where the audit log stands: newest entry, newest signed checkpoint, prune marker",
		Long: `Show the newest entry's sequence number and hash, the newest signed
checkpoint (the sequence number it covers, when and by which node it was
signed) and, if the log was pruned, the first sequence number left.

--pin FILE appends the newest checkpoint to FILE (created 0600 if missing)
as a line of the export format. Keep that file where the cluster's operators
cannot write, and later check exports against it with
audit verify --pinned FILE: a rewrite of the history it covers then fails,
even one signed with a node's key. It needs the audit.read grant.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.AuditHead(ctx, &cofferv1.AuditHeadRequest{Consistency: cons.v})
				if err != nil {
					return err
				}
				if pin != "" {
					if err := appendPin(pin, resp.GetCheckpoint()); err != nil {
						return err
					}
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
				fmt.Fprintf(tw, "node:\t%s (applied index %d)\n", resp.GetNode(), resp.GetAppliedIndex())
				fmt.Fprintf(tw, "head seq:\t%d\n", resp.GetHeadSeq())
				fmt.Fprintf(tw, "head hash:\t%x\n", resp.GetHeadHash())
				if cp := resp.GetCheckpoint(); cp != nil {
					writeCheckpointRows(tw, cp, true)
				} else {
					fmt.Fprintf(tw, "checkpoint:\tnone yet\n")
				}
				if m := resp.GetPruned(); m != nil {
					fmt.Fprintf(tw, "pruned before seq:\t%d\n", m.GetFirstSeq())
				}
				return tw.Flush()
			})
		},
	}
	addConsistencyFlag(cmd.Flags(), &cons, "linearizable or stale")
	cmd.Flags().StringVar(&pin, "pin", "", "append the newest checkpoint to this file, for audit verify --pinned")
	return cmd
}

// writeCheckpointRows writes a checkpoint's fields as "name:\tvalue" rows,
// its head hash too when withHead is set.
func writeCheckpointRows(w io.Writer, cp *cofferv1.AuditCheckpoint, withHead bool) {
	fmt.Fprintf(w, "checkpoint seq:\t%d\n", cp.GetSeq())
	if withHead {
		fmt.Fprintf(w, "checkpoint head:\t%x\n", cp.GetHead())
	}
	fmt.Fprintf(w, "checkpoint signer:\t%s\n", cell(cp.GetSigner()))
	fmt.Fprintf(w, "checkpoint time:\t%s\n", auditTime(cp.GetTimeUnixNano()))
}

// appendPin appends cp to path as an export-format checkpoint line.
func appendPin(path string, cp *cofferv1.AuditCheckpoint) error {
	if cp == nil {
		return fmt.Errorf("--pin: the log has no signed checkpoint yet")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("--pin: %w", err)
	}
	w := audit.NewWriter(f)
	err = w.WriteCheckpoint(cp)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("--pin %s: %w", path, err)
	}
	return nil
}

func (a *app) auditMatchCmd() *cobra.Command {
	var seq uint64
	var file, encoding string
	cmd := &cobra.Command{
		Use:   "match --seq N --material-file F [--encoding raw|base64|hex]",
		Short: "Tell whether the entry that created a key recorded exactly this key material",
		Long: `The audit log never holds key material. An entry that created a key (generate,
put) holds an HMAC of it under a key the cluster keeps; match asks a node to
compare. It needs the audit.read grant and is itself audited.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if seq == 0 {
				return usagef("--seq is required")
			}
			if file == "" {
				return usagef("--material-file is required")
			}
			material, err := readMaterial(file, encoding, a.in, a.err)
			if err != nil {
				return err
			}
			defer clear(material)
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.AuditMatch(ctx, &cofferv1.AuditMatchRequest{Seq: seq, Material: material})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeJSON(a.out, map[string]any{"seq": seq, "match": resp.GetMatch()})
				}
				if resp.GetMatch() {
					fmt.Fprintf(a.out, "entry %d recorded this key material\n", seq)
				} else {
					fmt.Fprintf(a.out, "entry %d did not record this key material\n", seq)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&seq, "seq", 0, "sequence number of the entry (required)")
	f.StringVar(&file, "material-file", "", `file holding the candidate material ("-" reads stdin) (required)`)
	f.StringVar(&encoding, "encoding", "raw", "encoding of the material file: raw, base64 or hex")
	return cmd
}

// withLongClient runs fn with a fresh client and the command's own context,
// for commands that make one request after another with no overall bound
// (query --all, tail -f). fn bounds each request with requestCtx.
func (a *app) withLongClient(cmd *cobra.Command, fn func(ctx context.Context, c *client.Client) error) error {
	c, err := a.newClient()
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(cmd.Context(), c)
}

// auditPage runs one query bounded by --timeout.
func (a *app) auditPage(ctx context.Context, c *client.Client, req *cofferv1.AuditQueryRequest) (*cofferv1.AuditQueryResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, a.limit)
	defer cancel()
	return c.AuditQuery(ctx, req)
}

// ---- query ----

// auditQueryOptions are the flags of `audit query`.
type auditQueryOptions struct {
	since, until string
	filter       auditFilterFlags
	after        uint64
	limit        uint32
	all          bool
}

// auditFilterFlags are the entry filters of audit query and audit tail.
type auditFilterFlags struct {
	clientName, caller string
	gkid, op, outcome  string
}

func (o *auditFilterFlags) add(f *pflag.FlagSet) {
	f.StringVar(&o.clientName, "client", "", "only requests by this client (caller client:NAME)")
	f.StringVar(&o.caller, "caller", "", "only requests by this caller identity, e.g. client:app or node:n1")
	f.StringVar(&o.gkid, "gkid", "", "only entries about this key")
	f.StringVar(&o.op, "op", "", "only this operation, e.g. get, generate, acl.manage, audit.export")
	f.StringVar(&o.outcome, "outcome", "", "only granted, denied or failed requests")
}

// auditFilter is what a query or a follow stream matches.
type auditFilter struct{ caller, gkid, op, outcome string }

// query sets the filter on a query request and returns it.
func (v auditFilter) query(req *cofferv1.AuditQueryRequest) *cofferv1.AuditQueryRequest {
	req.Caller, req.Gkid, req.Operation, req.Outcome = v.caller, v.gkid, v.op, v.outcome
	return req
}

// follow sets the filter on a follow request and returns it.
func (v auditFilter) follow(req *cofferv1.AuditFollowRequest) *cofferv1.AuditFollowRequest {
	req.Caller, req.Gkid, req.Operation, req.Outcome = v.caller, v.gkid, v.op, v.outcome
	return req
}

// values validates the flags.
func (o auditFilterFlags) values() (auditFilter, error) {
	v := auditFilter{gkid: o.gkid, op: o.op}
	switch {
	case o.clientName != "" && o.caller != "":
		return v, usagef("give --client or --caller, not both")
	case o.clientName != "":
		if err := authz.ValidateClientName(o.clientName); err != nil {
			return v, usageError{fmt.Errorf("--client: %w", err)}
		}
		v.caller = transport.Identity{Kind: transport.KindClient, Name: o.clientName}.String()
	case o.caller != "":
		v.caller = strings.TrimSpace(o.caller)
		if v.caller == "" {
			return v, usagef("--caller is blank")
		}
	}
	if o.outcome != "" {
		v.outcome = strings.ToLower(strings.TrimSpace(o.outcome))
		switch v.outcome {
		case "granted", "denied", "failed":
		default:
			return v, usagef("unknown --outcome %q (want granted, denied or failed)", o.outcome)
		}
	}
	for _, f := range []struct{ name, val string }{{"caller", v.caller}, {"gkid", v.gkid}, {"op", v.op}} {
		if len(f.val) > audit.MaxFieldLen {
			return v, usagef("--%s is %d bytes, at most %d", f.name, len(f.val), audit.MaxFieldLen)
		}
	}
	return v, nil
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

// auditPageWriter is the output of `audit query` and `audit tail`.
type auditPageWriter interface {
	writePage([]*cofferv1.AuditEntry) error
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

// auditTable writes entries as a table, one page at a time.
//
// Columns are as wide as the widest cell so far, so later pages line up
// with the header and the rows before them (widening when a cell needs it).
type auditTable struct {
	w      io.Writer
	header bool
	widths []int
}

func (t *auditTable) writePage(entries []*cofferv1.AuditEntry) error {
	if t.header && len(entries) == 0 {
		return nil
	}
	var rows [][]string
	if !t.header {
		rows = append(rows, []string{"SEQ", "TIME", "NODE", "CALLER", "OP", "OUTCOME", "TARGET", "REASON"})
		t.header = true
	}
	for _, e := range entries {
		rows = append(rows, []string{strconv.FormatUint(e.GetSeq(), 10), auditTime(e.GetTimeUnixNano()),
			cell(e.GetNode()), cell(e.GetCaller()), cell(e.GetOperation()), outcomeName(e.GetOutcome()),
			cell(auditTarget(e)), cell(e.GetReason())})
	}
	for _, r := range rows {
		for i, c := range r[:len(r)-1] {
			if i >= len(t.widths) {
				t.widths = append(t.widths, 0)
			}
			t.widths[i] = max(t.widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	for _, r := range rows {
		for i, c := range r[:len(r)-1] {
			b.WriteString(c)
			b.WriteString(strings.Repeat(" ", t.widths[i]-utf8.RuneCountInString(c)+2))
		}
		b.WriteString(r[len(r)-1])
		b.WriteByte('\n')
	}
	_, err := io.WriteString(t.w, b.String())
	return err
}

// auditTarget is what an entry concerned: its key, else its resource,
// policy or target client.
func auditTarget(e *cofferv1.AuditEntry) string {
	for _, s := range []string{e.GetGkid(), e.GetResource(), e.GetPolicy(), e.GetClient()} {
		if s != "" {
			return s
		}
	}
	return ""
}

// auditTime is an entry time in RFC 3339 UTC with milliseconds, or "-".
func auditTime(n int64) string {
	if n == 0 {
		return "-"
	}
	return time.Unix(0, n).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

func outcomeName(o cofferv1.AuditOutcome) string { return enumWord(o.String(), "AUDIT_OUTCOME_") }

// cell makes a logged value safe for one table cell on a terminal: one
// line, no control or formatting characters (escaped as \u....), "-" when
// empty. Audit fields carry caller-chosen text, which must not be able to
// move the cursor or recolour an auditor's screen.
func cell(s string) string {
	s = oneLine(s)
	clean := true
	for _, r := range s {
		if !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if !clean {
		var b strings.Builder
		for _, r := range s {
			if unicode.IsPrint(r) {
				b.WriteRune(r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		}
		s = b.String()
	}
	return dash(s)
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

// ---- tail ----

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

// ---- export ----

func (a *app) auditExportCmd() *cobra.Command {
	var format, out string
	var after uint64
	cmd := &cobra.Command{
		Use:   "export [--format jsonl] [--after SEQ] [--out FILE]",
		Short: "Export the audit log as JSON Lines, for offline verification",
		Long: `Export the audit log in the JSON Lines export format (audit/DESIGN.md):
entries and signed checkpoints in apply order, starting with the prune
marker when the log was pruned. The export goes to standard output, or with
--out to a new file (mode 0600; an existing file is never overwritten).
Check it with ` + "`coffer audit verify --file`" + `. --timeout bounds the whole
transfer: raise it for a long log.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f := strings.ToLower(strings.TrimSpace(format)); f != "jsonl" {
				return usagef("--format %q is not supported: only jsonl", format)
			}
			if out == "" {
				return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
					return c.AuditExport(ctx, after, a.out)
				})
			}
			return a.exportToFile(cmd, after, out)
		},
	}
	f := cmd.Flags()
	f.StringVar(&format, "format", "jsonl", "export format; only jsonl")
	f.Uint64Var(&after, "after", 0, "export only the entries after this sequence number")
	f.StringVar(&out, "out", "", "write the export to this new file (0600) instead of standard output")
	return cmd
}

// exportToFile exports into a temporary file next to path and moves it to
// path only when the export is complete, never replacing an existing file.
func (a *app) exportToFile(cmd *cobra.Command, after uint64, path string) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s already exists", path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".audit-export-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	cw := &countingWriter{w: tmp}
	err = a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
		return c.AuditExport(ctx, after, cw)
	})
	if err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := publishNew(tmp.Name(), path); err != nil {
		return err
	}
	if a.format == formatJSON {
		return writeJSON(a.out, map[string]any{"file": path, "bytes": cw.n, "after_seq": after})
	}
	fmt.Fprintf(a.out, "exported %s: %d bytes\n", path, cw.n)
	return nil
}

// publishNew gives the complete file tmp the name path, failing if path
// exists. A hard link does that atomically; where links are not supported
// it falls back to a check and a rename.
func publishNew(tmp, path string) error {
	err := os.Link(tmp, path)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrExist):
		return fmt.Errorf("%s already exists", path)
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s already exists", path)
	}
	return os.Rename(tmp, path)
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ---- verify ----

func (a *app) auditVerifyCmd() *cobra.Command {
	var file, dataDir string
	var keys, pinned []string
	var strict bool
	cmd := &cobra.Command{
		Use:   "verify (--file EXPORT | --data-dir DIR) --trusted-key PEM... [--strict] [--pinned FILE]...",
		Short: "Verify an audit export offline with the nodes' public keys (no cluster needed)",
		Long: `Verify the audit chain offline: consecutive sequence numbers, every hash and
link, and every checkpoint's head and signature against the trusted keys.
The source is an export (coffer audit export; "-" reads standard input) or
the data directory of a stopped node.

--trusted-key names a PEM file of PUBLIC KEY blocks: the audit signing key
of each node (` + auditKeyFile + ` in its data directory), obtained out of band,
for example at the key ceremony. Repeat it for every node. A key taken from
the very directory being verified proves nothing against whoever could
write that directory.

Entries after the last checkpoint are hash-linked but not signed; --strict
refuses them. --pinned names an earlier export or a file of checkpoint lines
you kept: the chain must reproduce every kept checkpoint, which catches a
rewrite of history even by someone holding a node key.

Exit status 0 when the chain verifies, 1 when it does not (the first bad
sequence number is named), 2 for usage errors.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(keys) == 0 {
				return usagef("--trusted-key is required: the PEM public key of each node's audit signing key (%s in the node's data directory), obtained out of band; repeat it for every node", auditKeyFile)
			}
			if (file == "") == (dataDir == "") {
				return usagef("give exactly one of --file or --data-dir")
			}
			for _, k := range keys {
				if strings.TrimSpace(k) == "" {
					return usagef("--trusted-key is blank")
				}
			}
			trusted, err := audit.LoadTrustedKeys(keys...)
			if err != nil {
				return fmt.Errorf("trusted keys: %w", err)
			}
			opts := audit.DefaultVerifyOptions()
			opts.StrictTail = strict
			if opts.Pinned, err = loadPinned(pinned); err != nil {
				return err
			}
			v := verifyRun{source: file, trustedKeys: trusted.Len(), strict: strict}
			for _, cp := range opts.Pinned {
				v.pinnedSeqs = append(v.pinnedSeqs, cp.GetSeq())
			}
			if dataDir != "" {
				v.source = "data directory " + dataDir
				v.report, v.err, err = verifyDataDir(dataDir, trusted, opts)
				if err != nil {
					return err
				}
			} else {
				var r io.Reader = a.in
				if file == "-" {
					v.source = "standard input"
				} else {
					f, err := os.Open(file)
					if err != nil {
						return err
					}
					defer f.Close()
					r = f
				}
				v.report, v.err = audit.VerifyJSONL(r, trusted, opts)
			}
			return a.printVerify(v)
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "file", "", `export file from "coffer audit export" ("-": standard input)`)
	f.StringVar(&dataDir, "data-dir", "", "data directory of a stopped node")
	f.StringArrayVar(&keys, "trusted-key", nil, "PEM file of a node's audit signing public key (required); repeatable")
	f.BoolVar(&strict, "strict", false, "fail when entries follow the last checkpoint (an unsigned tail)")
	f.StringArrayVar(&pinned, "pinned", nil, "earlier export or checkpoints file whose checkpoints the chain must reproduce; repeatable")
	return cmd
}

// loadPinned reads the checkpoints (and prune markers' checkpoints) of the
// given export or checkpoint files. Entries in them are ignored.
func loadPinned(paths []string) ([]*cofferv1.AuditCheckpoint, error) {
	var out []*cofferv1.AuditCheckpoint
	seen := map[uint64][]byte{}
	add := func(path string, cp *cofferv1.AuditCheckpoint) error {
		if h, ok := seen[cp.GetSeq()]; ok {
			if !bytes.Equal(h, cp.GetHead()) {
				return fmt.Errorf("--pinned %s: two kept checkpoints for seq %d disagree", path, cp.GetSeq())
			}
			return nil
		}
		if len(out) == audit.MaxPinned {
			return fmt.Errorf("--pinned: more than %d checkpoints", audit.MaxPinned)
		}
		seen[cp.GetSeq()] = cp.GetHead()
		out = append(out, cp)
		return nil
	}
	for _, p := range paths {
		if err := readPinned(p, add); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func readPinned(path string, add func(string, *cofferv1.AuditCheckpoint) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--pinned: %w", err)
	}
	defer f.Close()
	rd := audit.NewReader(f)
	n := 0
	for {
		it, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("--pinned %s: %w", path, err)
		}
		cp := it.Checkpoint
		if it.Marker != nil {
			cp = it.Marker.GetCheckpoint()
		}
		if cp == nil {
			continue
		}
		if err := audit.ValidateCheckpoint(cp); err != nil {
			return fmt.Errorf("--pinned %s: line %d: %w", path, it.Line, err)
		}
		if err := add(path, cp); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("--pinned %s holds no checkpoint", path)
	}
	return nil
}

// errVerifyDone tells the exporter that the verifier stopped reading.
var errVerifyDone = errors.New("verification ended")

// verifyDataDir exports a stopped node's audit log through a pipe into the
// verifier, so the log is never held in memory. err is a failure to read
// the directory; verr is the verifier's verdict.
func verifyDataDir(dir string, trusted audit.TrustedKeys, opts audit.VerifyOptions) (rep audit.Report, verr, err error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := fsm.ExportAuditDir(dir, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	rep, verr = audit.VerifyJSONL(pr, trusted, opts)
	pr.CloseWithError(errVerifyDone)
	if err := <-done; err != nil && !errors.Is(err, errVerifyDone) {
		return rep, nil, err
	}
	return rep, verr, nil
}

// verifyRun is one verification and its outcome.
type verifyRun struct {
	source      string
	trustedKeys int
	strict      bool
	pinnedSeqs  []uint64
	report      audit.Report
	err         error
}

// verifyReportJSON is audit.Report in `audit verify -o json`.
type verifyReportJSON struct {
	Entries      uint64   `json:"entries"`
	FirstSeq     uint64   `json:"first_seq"`
	LastSeq      uint64   `json:"last_seq"`
	Head         string   `json:"head"`
	PrunedBefore uint64   `json:"pruned_before"`
	Checkpoints  int      `json:"checkpoints"`
	CoveredSeq   uint64   `json:"covered_seq"`
	Uncovered    uint64   `json:"uncovered"`
	Signers      []string `json:"signers"`
}

// verifyErrorJSON is the failure in `audit verify -o json`: a
// *audit.VerifyError's seq, kind and detail, or kind "unreadable" for an
// export that does not parse.
type verifyErrorJSON struct {
	Seq    uint64 `json:"seq,omitempty"`
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

// verifyJSON is the output of `audit verify -o json`.
type verifyJSON struct {
	OK          bool             `json:"ok"`
	Source      string           `json:"source"`
	TrustedKeys int              `json:"trusted_keys"`
	Strict      bool             `json:"strict"`
	Pinned      int              `json:"pinned"`
	Report      verifyReportJSON `json:"report"`
	Error       *verifyErrorJSON `json:"error,omitempty"`
}

// verifyFailure is the error `audit verify` ends with when the chain does
// not verify: "audit: chain broken at seq N (KIND): detail".
type verifyFailure struct{ err error }

func (f verifyFailure) Error() string {
	var ve *audit.VerifyError
	if errors.As(f.err, &ve) {
		return fmt.Sprintf("audit: chain broken at seq %d (%s): %s", ve.Seq, ve.Kind, ve.Detail)
	}
	return fmt.Sprintf("audit: the export cannot be read: %v", f.err)
}

func (f verifyFailure) Unwrap() error { return f.err }

func (a *app) printVerify(v verifyRun) error {
	r := v.report
	if a.format == formatJSON {
		out := verifyJSON{OK: v.err == nil, Source: v.source, TrustedKeys: v.trustedKeys, Strict: v.strict, Pinned: len(v.pinnedSeqs),
			Report: verifyReportJSON{Entries: r.Entries, FirstSeq: r.FirstSeq, LastSeq: r.LastSeq, Head: hex.EncodeToString(r.Head),
				PrunedBefore: r.PrunedBefore, Checkpoints: r.Checkpoints, CoveredSeq: r.CoveredSeq, Uncovered: r.Uncovered,
				Signers: append([]string{}, r.Signers...)}}
		if v.err != nil {
			var ve *audit.VerifyError
			if errors.As(v.err, &ve) {
				out.Error = &verifyErrorJSON{Seq: ve.Seq, Kind: ve.Kind, Detail: ve.Detail}
			} else {
				out.Error = &verifyErrorJSON{Kind: "unreadable", Detail: v.err.Error()}
			}
		}
		if err := writeJSON(a.out, out); err != nil {
			return err
		}
		if v.err != nil {
			return verifyFailure{v.err}
		}
		return nil
	}
	if v.err != nil {
		return verifyFailure{v.err}
	}
	tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "audit chain verified:\t%s\n", v.source)
	switch {
	case r.Entries == 0:
		fmt.Fprintf(tw, "entries:\t0\n")
	default:
		fmt.Fprintf(tw, "entries:\t%d (seq %d..%d)\n", r.Entries, r.FirstSeq, r.LastSeq)
	}
	if r.PrunedBefore > 0 {
		fmt.Fprintf(tw, "pruned:\tentries before seq %d, replaced by a signed marker\n", r.PrunedBefore)
	}
	if r.Checkpoints == 0 {
		fmt.Fprintf(tw, "checkpoints:\t0 (nothing in this export is signed)\n")
	} else {
		fmt.Fprintf(tw, "checkpoints:\t%d, covering up to seq %d\n", r.Checkpoints, r.CoveredSeq)
	}
	fmt.Fprintf(tw, "signers:\t%s\n", listOrDash(r.Signers))
	fmt.Fprintf(tw, "head:\t%x\n", r.Head)
	if r.Uncovered > 0 {
		fmt.Fprintf(tw, "uncovered tail:\t%s after seq %d, hash-linked but not signed (export after the next checkpoint, or use --strict)\n",
			countEntries(r.Uncovered), r.CoveredSeq)
	} else {
		fmt.Fprintf(tw, "uncovered tail:\tnone\n")
	}
	if len(v.pinnedSeqs) > 0 {
		// Kept checkpoints before a prune marker cannot be checked.
		checked := 0
		for _, seq := range v.pinnedSeqs {
			if r.PrunedBefore == 0 || seq >= r.PrunedBefore-1 {
				checked++
			}
		}
		fmt.Fprintf(tw, "pinned:\t%d kept checkpoint(s) reproduced", checked)
		if skipped := len(v.pinnedSeqs) - checked; skipped > 0 {
			fmt.Fprintf(tw, "; %d predate the prune marker and cannot be checked", skipped)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// countEntries is "1 entry" or "N entries".
func countEntries(n uint64) string {
	if n == 1 {
		return "1 entry"
	}
	return fmt.Sprintf("%d entries", n)
}

// ---- prune ----

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
