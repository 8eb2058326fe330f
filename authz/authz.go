package authz

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// MaxReasonLen bounds Decision.Reason, in bytes.
const MaxReasonLen = 512

// Code classifies a Decision. The request path maps it to a transport
// status (gRPC codes.OK, Unauthenticated, PermissionDenied) in its one
// status-mapping place. The zero Code is never returned.
type Code uint8

// Decision codes.
const (
	_ Code = iota
	// OK: the request is allowed.
	OK
	// Unauthenticated: the credentials themselves are refused (revoked,
	// missing or malformed certificate serial, malformed identity). A retry
	// with the same certificate will fail again.
	Unauthenticated
	// PermissionDenied: the caller is known but may not do this.
	PermissionDenied
)

// String returns the code's name, e.g. "PermissionDenied".
func (c Code) String() string {
	switch c {
	case OK:
		return "OK"
	case Unauthenticated:
		return "Unauthenticated"
	case PermissionDenied:
		return "PermissionDenied"
	}
	return "Code(" + strconv.Itoa(int(c)) + ")"
}

// Request is what Decide judges: who asks (from the verified client
// certificate), and what for.
type Request struct {
	// Identity is the caller's identity string, "client:<name>" or
	// "node:<name>" (transport.Identity.String).
	Identity string
	// CertSerial is the serial of the caller's certificate in canonical form
	// (FormatSerial; CanonicalSerial also accepts upper case and leading
	// zeros, and so does Decide). It is required: an empty serial is
	// refused, so a request path that forgets it fails closed.
	CertSerial string
	// Op is the operation asked for.
	Op Op
	// Resource is the resource the operation acts on. For operations on an
	// existing key it must be the resource in the key's committed record,
	// never one the caller supplied. Empty for a list without a resource
	// filter (only a "**" grant allows that) and ignored for administrative
	// operations.
	Resource string
	// For DecideKeyRead only. KeyVersion is the version of the key's
	// material a use names (a decrypt's ciphertext, a get of a given
	// version); 0 means the newest. Encryptions is the number of
	// encryptions done so far under the key's newest version, for an
	// operation that encrypts (Op.Encrypts).
	KeyVersion  uint32
	Encryptions uint64
}

// Decision is the answer to a Request. A zero Decision denies.
type Decision struct {
	// Allowed is true only when Code is OK.
	Allowed bool
	Code    Code
	// Reason says why, in one line of at most MaxReasonLen bytes. It names
	// only the caller, the request and the caller's own grants, so it is
	// safe to return to the caller and to write to the audit trail.
	Reason string
	// Rule names the grant that allowed the request: an ACL rule id, or
	// "role:<name>" for a role. Empty when denied.
	Rule string
}

// compiledRule is an AclRule ready for evaluation.
type compiledRule struct {
	id      string
	subject string
	ops     []string // as written, for Explain
	set     opSet    // what the rule grants: key ops, plus admin ops if the pattern is "**"
	named   opSet    // ops named (OpAll expanded to every op), for Explain
	pattern Pattern
	allow   string // "granted by rule <id>", built once
	summary string // "<ops> on <pattern>", for deny reasons
}

// ruleList is the rules of one subject, in input order.
type ruleList struct {
	rules []*compiledRule
}

type clientEntry struct {
	name    string
	active  bool
	roles   []Role
	roleSet opSet
	groups  []string
	// lists is the client's own rules followed by the rules of each of its
	// groups, in group order; subjects without rules are left out.
	lists []*ruleList
}

// Snapshot is an immutable, indexed view of the committed access-control
// state: clients, ACL rules and revoked certificate serials. Build one with
// NewSnapshot after every applied change and swap it in atomically (for
// example through an atomic.Pointer[Snapshot]); requests decided after the
// swap see the change.
//
// A Snapshot is safe for concurrent use. A nil *Snapshot denies every
// request, so a node whose state could not be loaded fails closed.
type Snapshot struct {
	clients  map[string]*clientEntry // by client name
	subjects map[string]*ruleList    // by subject, "client:<name>" or "group:<name>"
	revoked  map[string]struct{}     // canonical serials
	nrules   int
}

// NewSnapshot validates the records and indexes them. Rules are indexed by
// subject and each client is linked to its own and its groups' rule lists,
// so Decide touches only the caller's rules. Rules may name clients or
// groups that have no record yet; they take effect once a matching client
// exists.
//
// It fails on a nil or invalid record (ValidateClient, ValidateRule,
// CanonicalSerial), on two clients with the same name and on two rules with
// the same id (ErrDuplicate). A serial revoked twice is not an error. The
// request path must refuse such records before proposing them, and the
// state machine should re-check, so that committed state always builds; if
// it does not, keep serving with a nil Snapshot (deny everything) rather
// than an older one, which could miss a revocation.
func NewSnapshot(clients []*cofferv1.ClientRecord, rules []*cofferv1.AclRule, revoked []*cofferv1.RevokedCertificate) (*Snapshot, error) {
	s := &Snapshot{
		clients:  make(map[string]*clientEntry, len(clients)),
		subjects: make(map[string]*ruleList),
		revoked:  make(map[string]struct{}, len(revoked)),
		nrules:   len(rules),
	}
	ids := make(map[string]struct{}, len(rules))
	for i, r := range rules {
		cr, err := compileRule(r)
		if err != nil {
			return nil, fmt.Errorf("rule %d: %w", i, err)
		}
		if _, dup := ids[cr.id]; dup {
			return nil, fmt.Errorf("%w: rule id %s appears twice", ErrDuplicate, cr.id)
		}
		ids[cr.id] = struct{}{}
		l := s.subjects[cr.subject]
		if l == nil {
			l = &ruleList{}
			s.subjects[cr.subject] = l
		}
		l.rules = append(l.rules, cr)
	}
	for i, c := range clients {
		if err := ValidateClient(c); err != nil {
			return nil, fmt.Errorf("client %d: %w", i, err)
		}
		name := c.GetName()
		if _, dup := s.clients[name]; dup {
			return nil, fmt.Errorf("%w: client %s appears twice", ErrDuplicate, name)
		}
		e := &clientEntry{
			name:   name,
			active: c.GetActive(),
			groups: append([]string(nil), c.GetGroups()...),
		}
		for _, r := range c.GetRoles() {
			e.roles = append(e.roles, Role(r))
			e.roleSet |= roleOpSets[Role(r)]
		}
		if l := s.subjects[ClientSubject(name)]; l != nil {
			e.lists = append(e.lists, l)
		}
		for _, g := range e.groups {
			if l := s.subjects[GroupSubject(g)]; l != nil {
				e.lists = append(e.lists, l)
			}
		}
		s.clients[name] = e
	}
	for i, rc := range revoked {
		if rc == nil {
			return nil, fmt.Errorf("revoked certificate %d: %w: nil record", i, ErrInvalidSerial)
		}
		serial, err := CanonicalSerial(rc.GetSerial())
		if err != nil {
			return nil, fmt.Errorf("revoked certificate %d: %w", i, err)
		}
		s.revoked[serial] = struct{}{}
	}
	return s, nil
}

func compileRule(r *cofferv1.AclRule) (*compiledRule, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: nil rule", ErrInvalidRule)
	}
	id := r.GetId()
	if err := ValidateRuleID(id); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidRule, err)
	}
	if _, _, err := ParseSubject(r.GetSubject()); err != nil {
		return nil, fmt.Errorf("%w: rule %s: %w", ErrInvalidRule, id, err)
	}
	p, err := CompilePattern(r.GetResourcePattern())
	if err != nil {
		return nil, fmt.Errorf("%w: rule %s: %w", ErrInvalidRule, id, err)
	}
	names := r.GetOperations()
	if len(names) == 0 || len(names) > MaxOpsPerRule {
		return nil, fmt.Errorf("%w: rule %s must name 1-%d operations, it names %d", ErrInvalidRule, id, MaxOpsPerRule, len(names))
	}
	var named opSet
	wildcard := false
	for _, n := range names {
		op, err := ParseOp(n)
		if err != nil {
			return nil, fmt.Errorf("%w: rule %s: %w", ErrInvalidRule, id, err)
		}
		if op == OpAll {
			wildcard = true
			continue
		}
		named |= opBits[op]
	}
	if named&adminOpSet != 0 && !p.all {
		return nil, fmt.Errorf("%w: rule %s grants administrative operations (%s), which are not resource-scoped: use the pattern %s", ErrInvalidRule, id, joinOps((named & adminOpSet).ops()), PatternAll)
	}
	if wildcard {
		named |= keyOpSet | adminOpSet
	}
	set := named
	if !p.all {
		set &^= adminOpSet // only "**" rules grant administrative operations
	}
	return &compiledRule{
		id:      id,
		subject: r.GetSubject(),
		ops:     append([]string(nil), names...),
		set:     set,
		named:   named,
		pattern: p,
		allow:   "granted by rule " + id,
		summary: clip(strings.Join(names, ","), 40) + " on " + display(p.String(), 64),
	}, nil
}

// Decide judges a client request against the snapshot. It is a pure
// function of the snapshot and the request, allocates nothing when it
// allows, and checks in this order, stopping at the first that fails:
//
//  1. certificate: CertSerial is present, hexadecimal and not revoked,
//     else Unauthenticated ("certificate revoked");
//  2. identity: "client:<name>" with a valid name, else Unauthenticated;
//     a node identity is PermissionDenied here, because nodes are not
//     subject to ACLs and only call internal RPCs (see DecideNode);
//  3. registered: a ClientRecord exists, else PermissionDenied
//     ("client X is not registered");
//  4. active: the record is active, else PermissionDenied ("client X is
//     deactivated");
//  5. operation: Op is in the catalogue (OpAll is not), else
//     PermissionDenied;
//  6. key operations: one ACL rule of the client or of one of its groups
//     names the operation (or "*") AND has a pattern matching Resource.
//     Both grants must come from the same rule: a rule is a product (its
//     operations × its resources), so one rule granting get on db/** and
//     another granting generate on payments/** do not together grant get
//     on payments/eu. Roles never grant key operations;
//  7. administrative operations: a self operation (SelfOps) is granted to
//     every client that got this far; otherwise a role of the client grants the
//     operation, or a rule of the client or its groups names it (or "*")
//     on the pattern "**". Either source is enough. Resource is ignored;
//  8. anything else is denied (deny by default).
//
// When several grants allow, Rule names the first found: roles in the
// client's order before rules; rules of the client before those of its
// groups, each in the order given to NewSnapshot.
func (s *Snapshot) Decide(req Request) Decision {
	c, d := s.caller(req.Identity, req.CertSerial)
	if c == nil {
		return d
	}
	return c.decide(req)
}

// decide is Decide's steps 6 to 8 for client c, whom steps 1 to 5 admitted.
func (c *clientEntry) decide(req Request) Decision {
	bit, ok := opBits[req.Op]
	if !ok {
		return deny(PermissionDenied, "unknown operation "+display(string(req.Op), 64))
	}
	if bit&keyOpSet != 0 {
		for _, l := range c.lists {
			for _, r := range l.rules {
				if r.set&bit != 0 && r.pattern.Match(req.Resource) {
					return Decision{Allowed: true, Code: OK, Reason: r.allow, Rule: r.id}
				}
			}
		}
		return deny(PermissionDenied, c.keyDenyReason(req.Op, req.Resource))
	}
	if bit&selfOpSet != 0 {
		return Decision{Allowed: true, Code: OK, Reason: selfAllow, Rule: SelfRule}
	}
	if c.roleSet&bit != 0 {
		for _, role := range c.roles {
			if roleOpSets[role]&bit != 0 {
				return Decision{Allowed: true, Code: OK, Reason: roleAllow[role], Rule: roleRule[role]}
			}
		}
	}
	for _, l := range c.lists {
		for _, r := range l.rules {
			if r.set&bit != 0 { // admin bits are only set on "**" rules
				return Decision{Allowed: true, Code: OK, Reason: r.allow, Rule: r.id}
			}
		}
	}
	return deny(PermissionDenied, c.adminDenyReason(req.Op))
}

// SelfRule is the Decision.Rule of a self operation (SelfOps), granted to
// every registered, active client; selfAllow is its reason.
const (
	SelfRule  = "self:client"
	selfAllow = "granted to every active client: it concerns the caller only"
)

// caller returns the client an identity names, or nil and the refusal:
// steps 1 to 5 of Decide, which depend on who calls, not on what they ask.
func (s *Snapshot) caller(identity, certSerial string) (*clientEntry, Decision) {
	if s == nil {
		return nil, deny(PermissionDenied, "authorisation state is not loaded")
	}
	if d, ok := s.checkCert(certSerial); !ok {
		return nil, d
	}
	name, ok := strings.CutPrefix(identity, SubjectClientPrefix)
	if !ok {
		if node, isNode := strings.CutPrefix(identity, "node:"); isNode && validName(node, MaxNameLen) {
			return nil, deny(PermissionDenied, "node "+node+" is not a client; nodes may only call internal RPCs")
		}
		return nil, deny(Unauthenticated, "malformed identity")
	}
	if !validName(name, MaxNameLen) {
		return nil, deny(Unauthenticated, "malformed identity")
	}
	c := s.clients[name]
	if c == nil {
		return nil, deny(PermissionDenied, "client "+name+" is not registered")
	}
	if !c.active {
		return nil, deny(PermissionDenied, "client "+name+" is deactivated")
	}
	return c, Decision{}
}

// DecideNode judges a cluster member calling an internal (node-to-node)
// RPC. Nodes are not subject to ACLs: the request path decides which RPCs
// are internal and serves them to node identities only. DecideNode checks
// that the certificate serial is present and not revoked and that identity
// is "node:<name>"; a client identity is PermissionDenied.
//
// A forwarded request carries the client that the forwarding node
// authenticated; the receiving node calls DecideNode for the forwarder and
// Decide for the client (with the client's certificate serial), so a
// revocation or ACL change that the receiver has applied is enforced even
// if the forwarder lags.
func (s *Snapshot) DecideNode(identity, certSerial string) Decision {
	if s == nil {
		return deny(PermissionDenied, "authorisation state is not loaded")
	}
	if d, ok := s.checkCert(certSerial); !ok {
		return d
	}
	if name, ok := strings.CutPrefix(identity, "node:"); ok && validName(name, MaxNameLen) {
		return Decision{Allowed: true, Code: OK, Reason: "cluster node", Rule: "node"}
	}
	if name, ok := strings.CutPrefix(identity, SubjectClientPrefix); ok && validName(name, MaxNameLen) {
		return deny(PermissionDenied, "client "+name+" may not call internal RPCs")
	}
	return deny(Unauthenticated, "malformed identity")
}

// Revoked reports whether the certificate serial (in any form
// CanonicalSerial accepts) is on the deny list.
func (s *Snapshot) Revoked(serial string) bool {
	if s == nil {
		return false
	}
	var buf [MaxSerialLen]byte
	n, ok := canonSerial(serial, &buf)
	if !ok {
		return false
	}
	_, found := s.revoked[string(buf[:n])]
	return found
}

// checkCert checks the serial without allocating (the map lookup with a
// converted byte slice does not copy).
func (s *Snapshot) checkCert(serial string) (Decision, bool) {
	if serial == "" {
		return deny(Unauthenticated, "no certificate serial"), false
	}
	var buf [MaxSerialLen]byte
	n, ok := canonSerial(serial, &buf)
	if !ok {
		return deny(Unauthenticated, "malformed certificate serial"), false
	}
	if _, revoked := s.revoked[string(buf[:n])]; revoked {
		return deny(Unauthenticated, "certificate revoked"), false
	}
	return Decision{}, true
}

func deny(code Code, reason string) Decision {
	return Decision{Code: code, Reason: clip(reason, MaxReasonLen)}
}

// maxGrantsShown bounds the grants listed in a deny reason.
const maxGrantsShown = 4

func (c *clientEntry) keyDenyReason(op Op, resource string) string {
	var b strings.Builder
	b.WriteString("client ")
	b.WriteString(c.name)
	b.WriteString(" has no grant for ")
	b.WriteString(string(op))
	if resource == "" {
		b.WriteString(" on all resources")
	} else {
		b.WriteString(" on ")
		b.WriteString(display(resource, 128))
	}
	b.WriteString(" (")
	listed, total, full := 0, 0, false
	for _, l := range c.lists {
		for _, r := range l.rules {
			total++
			// List a few grants, leaving room for "; N more)" so the reason
			// stays within MaxReasonLen without clipping.
			if full || listed == maxGrantsShown || b.Len()+len(r.summary)+24 > MaxReasonLen {
				full = true
				continue
			}
			if listed == 0 {
				b.WriteString("grants: ")
			} else {
				b.WriteString("; ")
			}
			b.WriteString(r.summary)
			listed++
		}
	}
	switch {
	case total == 0:
		b.WriteString("no grants")
	case total > listed:
		if listed > 0 {
			b.WriteString("; ")
		}
		b.WriteString(strconv.Itoa(total - listed))
		b.WriteString(" more grants")
	}
	b.WriteString(")")
	return b.String()
}

func (c *clientEntry) adminDenyReason(op Op) string {
	var b strings.Builder
	b.WriteString("client ")
	b.WriteString(c.name)
	b.WriteString(" has no grant for ")
	b.WriteString(string(op))
	b.WriteString(" (roles: ")
	if len(c.roles) == 0 {
		b.WriteString("none")
	}
	for i, r := range c.roles {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(string(r))
	}
	b.WriteString(")")
	return b.String()
}

// display renders untrusted text for a reason or an error: as is when it is
// short printable UTF-8 without spaces or quotes, otherwise quoted; longer
// than max bytes, it is cut at a character boundary and marked with "...".
func display(s string, max int) string {
	s = clip(s, max)
	for _, r := range s {
		if r == utf8.RuneError || r == ' ' || r == '"' || r == '\\' || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	if s == "" {
		return `""`
	}
	return s
}

// clip cuts s to at most max bytes at a character boundary, ending it with
// "..." when it was cut.
func clip(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func joinOps(ops []Op) string {
	parts := make([]string, len(ops))
	for i, op := range ops {
		parts[i] = string(op)
	}
	return strings.Join(parts, ",")
}
