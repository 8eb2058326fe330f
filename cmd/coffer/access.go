package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/transport"
)

// maxReasonLen bounds a revocation reason.
const maxReasonLen = 256

func (a *app) clientCmd() *cobra.Command {
	return group("client", "Issue certificates for clients and manage registered clients",
		a.clientIssueCmd(), a.clientSignCmd(), a.clientRegisterCmd(), a.clientActiveCmd(true), a.clientActiveCmd(false),
		a.clientGetCmd(), a.clientListCmd(), a.clientRevokeCertCmd())
}

func (a *app) aclCmd() *cobra.Command {
	return group("acl", "Grant, revoke, list and check access rules",
		a.aclGrantCmd(), a.aclRevokeCmd(), a.aclListCmd(), a.aclCheckCmd())
}

// clientNameArg validates a client name given as an argument.
func clientNameArg(name string) error {
	if err := authz.ValidateClientName(name); err != nil {
		return usageError{err}
	}
	return nil
}

func (a *app) printClient(c *cofferv1.ClientInfo) error {
	if a.format == formatJSON {
		return writeProto(a.out, c)
	}
	tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", c.GetName())
	fmt.Fprintf(tw, "active:\t%s\n", yesNo(c.GetActive()))
	fmt.Fprintf(tw, "groups:\t%s\n", listOrNone(c.GetGroups()))
	fmt.Fprintf(tw, "roles:\t%s\n", listOrNone(c.GetRoles()))
	fmt.Fprintf(tw, "created:\t%s\n", formatTime(c.GetCreatedAt()))
	fmt.Fprintf(tw, "revision:\t%d\n", c.GetRevision())
	return tw.Flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (a *app) clientRegisterCmd() *cobra.Command {
	var update bool
	var m membership
	cmd := &cobra.Command{
		Use:   "register NAME [--group G]... [--role R]... [--update]",
		Short: "Register a client (its groups and roles), or replace them with --update",
		Long: `Register a client by name. Its certificate (coffer client issue or sign)
proves the name; the registration says what the name may do: its groups
(which ACL rules name) and its roles. A new client is active. With --update
the groups and roles of an existing client are replaced by the ones given.`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := clientNameArg(args[0]); err != nil {
				return err
			}
			groups, roles, err := m.parse()
			if err != nil {
				return err
			}
			req := &cofferv1.RegisterClientRequest{Name: args[0], Groups: groups, Roles: roles, Update: update}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				info, err := c.RegisterClient(ctx, req)
				if err != nil {
					return err
				}
				return a.printClient(info)
			})
		},
	}
	cmd.Flags().BoolVar(&update, "update", false, "replace the groups and roles of an existing client")
	m.addFlags(cmd, "")
	return cmd
}

func (a *app) clientActiveCmd(active bool) *cobra.Command {
	use, short := "activate NAME", "Allow a deactivated client to call again"
	if !active {
		use, short = "deactivate NAME", "Refuse every request of a client (its certificates stay valid)"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := clientNameArg(args[0]); err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				info, err := c.SetClientActive(ctx, &cofferv1.SetClientActiveRequest{Name: args[0], Active: active})
				if err != nil {
					return err
				}
				return a.printClient(info)
			})
		},
	}
}

func (a *app) clientGetCmd() *cobra.Command {
	var cons consistencyFlag
	cmd := &cobra.Command{
		Use:   "get NAME",
		Short: "Show a registered client",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := clientNameArg(args[0]); err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				info, err := c.GetClient(ctx, &cofferv1.GetClientRequest{Name: args[0], Consistency: cons.v})
				if err != nil {
					return err
				}
				return a.printClient(info)
			})
		},
	}
	addConsistencyFlag(cmd.Flags(), &cons, "linearizable or stale")
	return cmd
}

func (a *app) clientListCmd() *cobra.Command {
	var cons consistencyFlag
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List registered clients",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ListClients(ctx, &cofferv1.ListClientsRequest{Consistency: cons.v})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				return writeClientTable(a.out, resp.GetClients())
			})
		},
	}
	addConsistencyFlag(cmd.Flags(), &cons, "linearizable or stale")
	return cmd
}

func writeClientTable(w io.Writer, clients []*cofferv1.ClientInfo) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tACTIVE\tGROUPS\tROLES\tCREATED")
	for _, c := range clients {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.GetName(), yesNo(c.GetActive()),
			listOrDash(c.GetGroups()), listOrDash(c.GetRoles()), formatTime(c.GetCreatedAt()))
	}
	return tw.Flush()
}

func listOrDash(l []string) string {
	if len(l) == 0 {
		return "-"
	}
	return strings.Join(l, ",")
}

// parseSerialFlag canonicalises a --serial value. Besides what
// authz.CanonicalSerial accepts it takes a 0x prefix and the colon-separated
// form `openssl x509 -text` prints.
func parseSerialFlag(s string) (string, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimPrefix(strings.TrimPrefix(t, "0x"), "0X")
	t = strings.ReplaceAll(t, ":", "")
	serial, err := authz.CanonicalSerial(t)
	if err != nil {
		return "", usageError{fmt.Errorf("--serial: %w", err)}
	}
	return serial, nil
}

func (a *app) clientRevokeCertCmd() *cobra.Command {
	var serialFlag, certFile, reason string
	cmd := &cobra.Command{
		Use:   "revoke-cert (--serial HEX | --cert-file FILE) [--reason TEXT]",
		Short: "Refuse a certificate on every node, whoever presents it",
		Long: `Put a certificate serial on the cluster's deny list. Every node refuses the
certificate from then on, whatever client it names; the client record is not
changed (see 'coffer client deactivate' to refuse a client whatever its
certificate). The serial is given in hex (--serial) or read from the
certificate file (--cert-file; --cert stays the caller's own certificate).
With --cert-file the certificate is sent too, so that the audit entry names
the client (or node) it was issued to.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (serialFlag == "") == (certFile == "") {
				return usagef("give exactly one of --serial or --cert-file")
			}
			if len(reason) > maxReasonLen {
				return usagef("--reason is %d bytes, at most %d", len(reason), maxReasonLen)
			}
			var serial, holder string
			var certPEM []byte
			if serialFlag != "" {
				var err error
				if serial, err = parseSerialFlag(serialFlag); err != nil {
					return err
				}
			} else {
				cert, err := readCertFile(certFile)
				if err != nil {
					return fmt.Errorf("--cert-file: %w", err)
				}
				if cert.SerialNumber == nil || cert.SerialNumber.Sign() < 0 {
					return fmt.Errorf("--cert-file: %s has a negative serial number, which no Coffer CA issues", certFile)
				}
				serial = authz.FormatSerial(cert.SerialNumber)
				holder = certHolder(cert)
				if _, err := transport.IdentityFromCert(cert); err == nil {
					// The cluster names the holder in the revocation's
					// audit entry.
					certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
				}
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.RevokeCertificate(ctx, &cofferv1.RevokeCertificateRequest{Serial: serial, Reason: reason, CertificatePem: certPEM})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				if holder != "" {
					_, err = fmt.Fprintf(a.out, "revoked certificate %s (%s)\n", resp.GetSerial(), holder)
				} else {
					_, err = fmt.Fprintf(a.out, "revoked certificate %s\n", resp.GetSerial())
				}
				return err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&serialFlag, "serial", "", "certificate serial number in hex")
	f.StringVar(&certFile, "cert-file", "", "certificate file (PEM or DER) whose serial to revoke")
	f.StringVar(&reason, "reason", "", "why the certificate is revoked (recorded with the revocation)")
	return cmd
}

// certHolder describes whom a certificate names, for messages.
func certHolder(c *x509.Certificate) string {
	if id, err := transport.IdentityFromCert(c); err == nil {
		return id.String()
	}
	return "subject " + c.Subject.String()
}

// subjectFlags are the --client and --group flags that name a rule subject.
type subjectFlags struct{ client, group string }

func (s *subjectFlags) addFlags(cmd *cobra.Command, what string) {
	cmd.Flags().StringVar(&s.client, "client", "", what+" of this client")
	cmd.Flags().StringVar(&s.group, "group", "", what+" of this group")
}

// subject returns "client:<name>", "group:<name>", or "" when neither flag
// is set and optional is true.
func (s subjectFlags) subject(optional bool) (string, error) {
	switch {
	case s.client != "" && s.group != "":
		return "", usagef("give --client or --group, not both")
	case s.client != "":
		if err := authz.ValidateClientName(s.client); err != nil {
			return "", usageError{fmt.Errorf("--client: %w", err)}
		}
		return authz.ClientSubject(s.client), nil
	case s.group != "":
		if err := authz.ValidateGroupName(s.group); err != nil {
			return "", usageError{fmt.Errorf("--group: %w", err)}
		}
		return authz.GroupSubject(s.group), nil
	case optional:
		return "", nil
	}
	return "", usagef("give --client or --group")
}

func (a *app) printRule(r *cofferv1.AclRuleInfo) error {
	if a.format == formatJSON {
		return writeProto(a.out, r)
	}
	tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "id:\t%s\n", r.GetId())
	fmt.Fprintf(tw, "subject:\t%s\n", r.GetSubject())
	fmt.Fprintf(tw, "operations:\t%s\n", strings.Join(r.GetOperations(), ","))
	fmt.Fprintf(tw, "resource:\t%s\n", r.GetResourcePattern())
	fmt.Fprintf(tw, "created:\t%s\n", formatTime(r.GetCreatedAt()))
	fmt.Fprintf(tw, "created by:\t%s\n", dash(r.GetCreatedBy()))
	return tw.Flush()
}

func (a *app) aclGrantCmd() *cobra.Command {
	var s subjectFlags
	var ops, resource, id string
	cmd := &cobra.Command{
		Use:   "grant (--client C | --group G) --ops OP[,OP]... --resource PATTERN [--id ID]",
		Short: "Grant operations on the resources matching a pattern",
		Long: `Add an ACL rule: the subject may perform the operations on every resource
the pattern matches. A key operation is allowed only when one rule grants
both the operation and the resource.

Operations: generate, put, get, describe, list, encrypt, decrypt, datakey,
state, destroy, rotate (key operations); policy.create, policy.update,
policy.read, acl.manage, acl.read, client.manage, client.read,
escrow.recover, audit.read, audit.export, audit.prune, cluster.read,
cluster.manage, snapshot.save, snapshot.restore, cache.manage, cache.flush
(administrative, only on the pattern **); * for every operation.

Patterns are '/'-separated paths; a segment * matches one segment and **
any number, e.g. payments/**, payments/*/card-keys, **.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			subject, err := s.subject(false)
			if err != nil {
				return err
			}
			if ops == "" {
				return usagef("--ops is required")
			}
			if resource == "" {
				return usagef("--resource is required")
			}
			parsed, err := authz.ParseOps(ops)
			if err != nil {
				return usageError{fmt.Errorf("--ops: %w", err)}
			}
			if len(parsed) > authz.MaxOpsPerRule {
				return usagef("--ops: %d operations, at most %d", len(parsed), authz.MaxOpsPerRule)
			}
			if _, err := authz.CompilePattern(resource); err != nil {
				return usageError{fmt.Errorf("--resource: %w", err)}
			}
			if id != "" {
				if err := authz.ValidateRuleID(id); err != nil {
					return usageError{fmt.Errorf("--id: %w", err)}
				}
			}
			names := make([]string, len(parsed))
			for i, op := range parsed {
				names[i] = string(op)
			}
			// The whole rule must validate too (administrative operations
			// only on **); the id is the server's to choose when not given.
			check := &cofferv1.AclRule{Id: id, Subject: subject, Operations: names, ResourcePattern: resource}
			if check.Id == "" {
				check.Id = "new-rule"
			}
			if err := authz.ValidateRule(check); err != nil {
				return usageError{err}
			}
			req := &cofferv1.GrantRequest{Subject: subject, Operations: names, ResourcePattern: resource, Id: id}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				rule, err := c.Grant(ctx, req)
				if err != nil {
					return err
				}
				return a.printRule(rule)
			})
		},
	}
	s.addFlags(cmd, "grant to the rules")
	f := cmd.Flags()
	f.StringVar(&ops, "ops", "", "comma-separated operations (required)")
	f.StringVar(&resource, "resource", "", "resource pattern (required)")
	f.StringVar(&id, "id", "", "rule id, 1-128 of [A-Za-z0-9._-] (default: chosen by the server)")
	return cmd
}

func (a *app) aclRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Remove an ACL rule",
		Args:  exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := authz.ValidateRuleID(args[0]); err != nil {
				return usageError{err}
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.RevokeGrant(ctx, &cofferv1.RevokeGrantRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				_, err = fmt.Fprintf(a.out, "revoked rule %s\n", resp.GetId())
				return err
			})
		},
	}
}

func (a *app) aclListCmd() *cobra.Command {
	var s subjectFlags
	var cons consistencyFlag
	cmd := &cobra.Command{
		Use:   "list [--client C | --group G]",
		Short: "List ACL rules, all or those of one client or group",
		Args:  exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			subject, err := s.subject(true)
			if err != nil {
				return err
			}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ListGrants(ctx, &cofferv1.ListGrantsRequest{Subject: subject, Consistency: cons.v})
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				return writeRuleTable(a.out, resp.GetRules())
			})
		},
	}
	s.addFlags(cmd, "only the rules")
	addConsistencyFlag(cmd.Flags(), &cons, "linearizable or stale")
	return cmd
}

func writeRuleTable(w io.Writer, rules []*cofferv1.AclRuleInfo) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSUBJECT\tOPERATIONS\tRESOURCE\tCREATED-BY")
	for _, r := range rules {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.GetId(), r.GetSubject(), strings.Join(r.GetOperations(), ","),
			r.GetResourcePattern(), dash(r.GetCreatedBy()))
	}
	return tw.Flush()
}

func (a *app) aclCheckCmd() *cobra.Command {
	var name, op, resource, serial string
	var cons consistencyFlag
	cmd := &cobra.Command{
		Use:   "check --client C --op OP [--resource R] [--cert-serial HEX]",
		Short: "Ask whether a client may perform an operation on a resource, and why",
		Long: `Evaluate the committed access rules for a client, an operation and a
resource, without performing anything, and show the decision with every
check and rule considered. The exit status is 0 whether the answer is
ALLOWED or DENIED. Administrative operations take no --resource; for key
operations an empty resource means every resource (as a list without a
filter). --cert-serial also checks one of the client's certificates against
the deny list; without it the certificate is taken as not revoked.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return usagef("--client is required")
			}
			if err := authz.ValidateClientName(name); err != nil {
				return usageError{fmt.Errorf("--client: %w", err)}
			}
			if op == "" {
				return usagef("--op is required")
			}
			parsed, err := authz.ParseOp(op)
			if err != nil {
				return usageError{fmt.Errorf("--op: %w", err)}
			}
			if parsed == authz.OpAll {
				return usagef("--op: * may appear in rules only; check one operation at a time")
			}
			req := &cofferv1.CheckRequest{Client: name, Operation: op, Resource: resource, CertSerial: serial, Consistency: cons.v}
			return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.Check(ctx, req)
				if err != nil {
					return err
				}
				if a.format == formatJSON {
					return writeProto(a.out, resp)
				}
				return writeCheck(a.out, resp)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "client", "", "client name (required)")
	f.StringVar(&op, "op", "", "operation, e.g. get or acl.manage (required)")
	f.StringVar(&resource, "resource", "", "resource of the key operation")
	f.StringVar(&serial, "cert-serial", "", "also check this certificate serial (hex) against the deny list")
	addConsistencyFlag(f, &cons, "linearizable or stale")
	return cmd
}

func writeCheck(w io.Writer, resp *cofferv1.CheckResponse) error {
	verdict := "DENIED"
	if resp.GetAllowed() {
		verdict = "ALLOWED"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, verdict)
	fmt.Fprintf(tw, "reason:\t%s\n", oneLine(resp.GetReason()))
	if resp.GetRule() != "" {
		fmt.Fprintf(tw, "rule:\t%s\n", resp.GetRule())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if e := strings.TrimRight(resp.GetExplanation(), "\n"); e != "" {
		if _, err := fmt.Fprintf(w, "\n%s\n", e); err != nil {
			return err
		}
	}
	return nil
}
