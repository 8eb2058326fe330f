package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/client"
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

// auditCmd is `coffer audit`. Each subcommand lives in its own file
// (audit_head.go, audit_query.go, audit_tail.go, audit_export.go,
// audit_verify.go, audit_prune.go, audit_match.go); this file holds what
// several of them share: the limits above, the entry filters of query and
// tail, the entry table, and the checkpoint rows of head and prune.
func (a *app) auditCmd() *cobra.Command {
	return group("audit", "Query, follow, export, verify and prune the audit log",
		a.auditHeadCmd(), a.auditQueryCmd(), a.auditTailCmd(), a.auditExportCmd(), a.auditVerifyCmd(), a.auditPruneCmd(), a.auditMatchCmd())
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

// auditPageWriter is the output of `audit query` and `audit tail`.
type auditPageWriter interface {
	writePage([]*cofferv1.AuditEntry) error
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

// auditTarget is what an entry concerned: its key (and the key version a
// use named or used, "k1-... v2"), else its resource, policy or target
// client.
func auditTarget(e *cofferv1.AuditEntry) string {
	if e.GetGkid() != "" && e.GetKeyVersion() != 0 {
		return e.GetGkid() + " v" + strconv.FormatUint(uint64(e.GetKeyVersion()), 10)
	}
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
