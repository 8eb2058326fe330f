package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
)

// maxAuditPages bounds the pages printAudit reads (1000 entries each).
const maxAuditPages = 100

// printAudit prints the audit entries after seq that this run caused: those
// whose request id starts with runID (a data key per Seal, a decrypt per
// Open, and the envelope key lookup), and the creation of the envelope key
// for resource, whose request id the client chose.
func printAudit(ctx context.Context, c *client.Client, after uint64, runID, resource string) error {
	var mine []*cofferv1.AuditEntry
	for range maxAuditPages {
		resp, err := c.AuditQuery(ctx, &cofferv1.AuditQueryRequest{AfterSeq: after, Limit: 1000})
		if err != nil {
			return fmt.Errorf("querying the audit log: %w", err)
		}
		for _, e := range resp.GetEntries() {
			if strings.HasPrefix(e.GetRequestId(), runID) || e.GetOperation() == "generate" && e.GetResource() == resource {
				mine = append(mine, e)
			}
		}
		if len(resp.GetEntries()) == 0 || resp.GetLastSeq() <= after || resp.GetLastSeq() >= resp.GetHeadSeq() {
			break
		}
		after = resp.GetLastSeq()
	}
	fmt.Printf("audit entries of this run (%d):\n", len(mine))
	fmt.Printf("%-6s  %-12s  %-16s  %-10s  %-42s  %-3s  %-8s  %s\n", "SEQ", "TIME", "CALLER", "OPERATION", "GKID", "VER", "OUTCOME", "REQUEST ID")
	for _, e := range mine {
		outcome := strings.ToLower(strings.TrimPrefix(e.GetOutcome().String(), "AUDIT_OUTCOME_"))
		fmt.Printf("%-6d  %-12s  %-16s  %-10s  %-42s  %-3d  %-8s  %s\n", e.GetSeq(),
			time.Unix(0, e.GetTimeUnixNano()).UTC().Format("15:04:05.000"), e.GetCaller(), e.GetOperation(),
			e.GetGkid(), e.GetKeyVersion(), outcome, e.GetRequestId())
	}
	return nil
}
