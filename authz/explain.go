package authz

import (
	"fmt"
	"strings"
	"text/tabwriter"
)

// MaxExplainRules bounds Explanation.Rules; further rules are counted in
// Explanation.Omitted.
const MaxExplainRules = 256

// Explanation is Decide's answer with its working shown, for
// `coffer acl check` and for debugging a denial.
type Explanation struct {
	Request Request
	// Decision is exactly what Decide returns for Request.
	Decision Decision
	// Steps are the checks of Decide in order. Unlike Decide, Explain runs
	// every check it can even after one has failed, so a what-if query
	// (say, without a certificate serial, or for a deactivated client) still
	// shows what the grants would allow.
	Steps []Step
	// Roles are the client's roles and whether each grants Request.Op.
	Roles []RoleCheck
	// Rules are the rules of the client and of its groups, in evaluation
	// order, each with whether it grants Request.Op on Request.Resource.
	// For an unregistered client, the rules whose subject is the client.
	Rules []RuleCheck
	// Omitted counts rules left out of Rules beyond MaxExplainRules.
	Omitted int
}

// Step is one check of the decision procedure.
type Step struct {
	// Name is one of "certificate", "identity", "registered", "active",
	// "operation", "grant".
	Name string
	// Passed reports whether the check passed.
	Passed bool
	// Detail says what was found.
	Detail string
}

// RoleCheck is one of the client's roles.
type RoleCheck struct {
	Role   Role
	Grants bool // the role grants Request.Op
}

// RuleCheck is one rule considered.
type RuleCheck struct {
	ID         string
	Subject    string
	Operations []string
	Pattern    string
	// OpGranted: the rule grants Request.Op. An administrative operation
	// named through "*" on a pattern other than "**" is not granted.
	OpGranted bool
	// ResourceMatched: the pattern matches Request.Resource. For an
	// administrative operation, which has no resource, whether the pattern
	// is "**".
	ResourceMatched bool
	// Matches: the rule alone grants the request (both of the above).
	Matches bool
	// Why says in words why the rule does or does not match.
	Why string
}

// Explain evaluates req like Decide and reports every check, role and rule
// considered. Explanation.Decision always equals Decide(req). Explain
// allocates and is meant for diagnostics, not the request path.
func (s *Snapshot) Explain(req Request) Explanation {
	e := Explanation{Request: req, Decision: s.Decide(req)}
	if s == nil {
		e.Steps = append(e.Steps, Step{Name: "certificate", Detail: "authorisation state is not loaded"})
		return e
	}

	// certificate
	st := Step{Name: "certificate"}
	var buf [MaxSerialLen]byte
	switch n, ok := canonSerial(req.CertSerial, &buf); {
	case req.CertSerial == "":
		st.Detail = "no certificate serial"
	case !ok:
		st.Detail = "malformed certificate serial " + display(req.CertSerial, 80)
	default:
		if _, revoked := s.revoked[string(buf[:n])]; revoked {
			st.Detail = "certificate " + string(buf[:n]) + " is revoked"
		} else {
			st.Passed, st.Detail = true, "certificate "+string(buf[:n])+" is not revoked"
		}
	}
	e.Steps = append(e.Steps, st)

	// identity
	name, isClient := strings.CutPrefix(req.Identity, SubjectClientPrefix)
	st = Step{Name: "identity"}
	switch node, isNode := strings.CutPrefix(req.Identity, "node:"); {
	case isClient && validName(name, MaxNameLen):
		st.Passed, st.Detail = true, "client "+name
	case isNode && validName(node, MaxNameLen):
		st.Detail = "node " + node + ": nodes are not subject to ACLs and may only call internal RPCs"
	default:
		st.Detail = "malformed identity " + display(req.Identity, 80)
	}
	e.Steps = append(e.Steps, st)
	if !st.Passed {
		return e
	}

	// registered, active
	c := s.clients[name]
	if c == nil {
		e.Steps = append(e.Steps, Step{Name: "registered", Detail: "client " + name + " is not registered"})
	} else {
		active := Step{Name: "active", Passed: c.active, Detail: "client " + name + " is active"}
		if !c.active {
			active.Detail = "client " + name + " is deactivated"
		}
		e.Steps = append(e.Steps, Step{Name: "registered", Passed: true, Detail: "client " + name + " is registered"}, active)
	}

	// operation
	bit, known := opBits[req.Op]
	st = Step{Name: "operation", Passed: known}
	switch {
	case !known:
		st.Detail = "unknown operation " + display(string(req.Op), 64)
	case bit&keyOpSet != 0:
		st.Detail = string(req.Op) + " is a key operation: it needs one rule granting it on a pattern matching the resource"
	default:
		st.Detail = string(req.Op) + " is an administrative operation: a role or a rule on ** grants it"
	}
	e.Steps = append(e.Steps, st)

	// roles and rules
	var lists []*ruleList
	if c != nil {
		for _, r := range c.roles {
			e.Roles = append(e.Roles, RoleCheck{Role: r, Grants: known && roleOpSets[r]&bit != 0})
		}
		lists = c.lists
	} else if l := s.subjects[ClientSubject(name)]; l != nil {
		lists = []*ruleList{l}
	}
	grant := Step{Name: "grant"}
	if known && bit&selfOpSet != 0 {
		grant.Passed, grant.Detail = true, selfAllow
	}
	if known && bit&adminOpSet != 0 {
		for _, rc := range e.Roles {
			if rc.Grants && grant.Detail == "" {
				grant.Passed, grant.Detail = true, "granted by role "+string(rc.Role)
			}
		}
	}
	for _, l := range lists {
		for _, r := range l.rules {
			rc := checkRule(r, req, bit, known)
			if rc.Matches && grant.Detail == "" {
				grant.Passed, grant.Detail = true, "granted by rule "+r.id
			}
			if len(e.Rules) == MaxExplainRules {
				e.Omitted++
				continue
			}
			e.Rules = append(e.Rules, rc)
		}
	}
	if grant.Detail == "" {
		switch {
		case !known:
			grant.Detail = "nothing grants an unknown operation"
		case bit&keyOpSet != 0:
			grant.Detail = "no single rule grants " + string(req.Op) + " on " + resourceText(req.Resource)
		default:
			grant.Detail = "no role or rule on ** grants " + string(req.Op)
		}
	}
	e.Steps = append(e.Steps, grant)
	return e
}

func checkRule(r *compiledRule, req Request, bit opSet, known bool) RuleCheck {
	rc := RuleCheck{
		ID:         r.id,
		Subject:    r.subject,
		Operations: append([]string(nil), r.ops...),
		Pattern:    r.pattern.String(),
	}
	if !known {
		rc.Why = "unknown operation"
		return rc
	}
	op := string(req.Op)
	if bit&adminOpSet != 0 {
		rc.ResourceMatched = r.pattern.all
		rc.OpGranted = r.set&bit != 0
		rc.Matches = rc.OpGranted
		switch {
		case rc.Matches:
			rc.Why = "grants " + op + " (pattern **)"
		case r.named&bit != 0:
			rc.Why = "names " + op + " but only a rule on ** grants administrative operations"
		default:
			rc.Why = "does not grant " + op
		}
		return rc
	}
	rc.OpGranted = r.set&bit != 0
	rc.ResourceMatched = r.pattern.Match(req.Resource)
	rc.Matches = rc.OpGranted && rc.ResourceMatched
	res := resourceText(req.Resource)
	switch {
	case rc.Matches:
		rc.Why = "grants " + op + " on " + res
	case rc.ResourceMatched:
		rc.Why = "matches " + res + " but does not grant " + op
	case rc.OpGranted:
		rc.Why = "grants " + op + " but " + r.pattern.String() + " does not match " + res
	default:
		rc.Why = "does not grant " + op + " and " + r.pattern.String() + " does not match " + res
	}
	return rc
}

func resourceText(r string) string {
	if r == "" {
		return "all resources"
	}
	return display(r, 128)
}

// String renders the explanation as text, one check per line.
func (e Explanation) String() string {
	var b strings.Builder
	verdict := "denied"
	if e.Decision.Allowed {
		verdict = "allowed"
	}
	res := ""
	if e.Request.Resource != "" {
		res = " on " + display(e.Request.Resource, 128)
	}
	fmt.Fprintf(&b, "request:  %s %s%s\n", display(e.Request.Identity, 80), display(string(e.Request.Op), 64), res)
	fmt.Fprintf(&b, "decision: %s (%s): %s\n", verdict, e.Decision.Code, e.Decision.Reason)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "checks:")
	for _, st := range e.Steps {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", mark(st.Passed), st.Name, st.Detail)
	}
	if len(e.Roles) > 0 {
		fmt.Fprintln(tw, "roles:")
		for _, r := range e.Roles {
			what := "does not grant " + string(e.Request.Op)
			if r.Grants {
				what = "grants " + string(e.Request.Op)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", mark(r.Grants), r.Role, what)
		}
	}
	if len(e.Rules) > 0 {
		fmt.Fprintln(tw, "rules:")
		for _, r := range e.Rules {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", mark(r.Matches), r.ID, r.Subject,
				clip(strings.Join(r.Operations, ","), 64), r.Pattern, r.Why)
		}
	}
	if e.Omitted > 0 {
		fmt.Fprintf(tw, "  (%d more rules not shown)\n", e.Omitted)
	}
	_ = tw.Flush()
	return b.String()
}

func mark(ok bool) string {
	if ok {
		return "ok"
	}
	return "no"
}
