package authz

import (
	"fmt"
	"strings"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func TestExplain_AgreesWithDecide(t *testing.T) {
	s := mustFixture(t)
	for _, tc := range decideCases() {
		e := s.Explain(tc.req)
		if d := s.Decide(tc.req); e.Decision != d {
			t.Errorf("%s: Explain decision %+v, Decide %+v", tc.name, e.Decision, d)
		}
		if e.Request != tc.req {
			t.Errorf("%s: request not echoed", tc.name)
		}
		// The grant step agrees with the decision whenever the checks before
		// it pass.
		allPassed := true
		var grant *Step
		for i := range e.Steps {
			if e.Steps[i].Name == "grant" {
				grant = &e.Steps[i]
			} else if !e.Steps[i].Passed {
				allPassed = false
			}
		}
		if allPassed && grant != nil && grant.Passed != tc.allowed {
			t.Errorf("%s: grant step %+v but allowed=%v", tc.name, grant, tc.allowed)
		}
		if _ = e.String(); e.String() == "" {
			t.Errorf("%s: empty text", tc.name)
		}
	}
}

func stepNamed(e Explanation, name string) (Step, bool) {
	for _, st := range e.Steps {
		if st.Name == name {
			return st, true
		}
	}
	return Step{}, false
}

func TestExplain_TwoRulesNoSingleGrant(t *testing.T) {
	s := mustFixture(t)
	e := s.Explain(req("client:split", OpGet, "payments/eu"))
	if e.Decision.Allowed {
		t.Fatal("allowed")
	}
	if len(e.Rules) != 2 {
		t.Fatalf("rules %+v", e.Rules)
	}
	s1, s2 := e.Rules[0], e.Rules[1]
	if s1.ID != "s1" || !s1.OpGranted || s1.ResourceMatched || s1.Matches {
		t.Errorf("s1: %+v", s1)
	}
	if s2.ID != "s2" || s2.OpGranted || !s2.ResourceMatched || s2.Matches {
		t.Errorf("s2: %+v", s2)
	}
	if s1.Why != "grants get but db/** does not match payments/eu" {
		t.Errorf("s1 why: %q", s1.Why)
	}
	if s2.Why != "matches payments/eu but does not grant get" {
		t.Errorf("s2 why: %q", s2.Why)
	}
	g, _ := stepNamed(e, "grant")
	if g.Passed || g.Detail != "no single rule grants get on payments/eu" {
		t.Errorf("grant step %+v", g)
	}
	text := e.String()
	for _, want := range []string{
		"request:  client:split get on payments/eu",
		"decision: denied (PermissionDenied): client split has no grant for get on payments/eu",
		"no  s1",
		"no  s2",
		"no  grant",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
}

func TestExplain_GroupAndRole(t *testing.T) {
	s := mustFixture(t)
	e := s.Explain(req("client:app", OpGet, "payments/eu/cards"))
	if !e.Decision.Allowed || e.Decision.Rule != "r-pay" {
		t.Fatalf("decision %+v", e.Decision)
	}
	if len(e.Rules) != 2 || e.Rules[0].ID != "r-app" || e.Rules[1].ID != "r-pay" || !e.Rules[1].Matches || e.Rules[1].Subject != "group:payments" {
		t.Fatalf("rules %+v", e.Rules)
	}
	if len(e.Roles) != 1 || e.Roles[0].Role != RoleApplication || e.Roles[0].Grants {
		t.Fatalf("roles %+v", e.Roles)
	}
	if g, _ := stepNamed(e, "grant"); !g.Passed || g.Detail != "granted by rule r-pay" {
		t.Errorf("grant %+v", g)
	}

	e = s.Explain(req("client:both", OpACLManage, ""))
	if e.Decision.Rule != "role:security-officer" {
		t.Fatalf("decision %+v", e.Decision)
	}
	if len(e.Roles) != 2 || e.Roles[0].Grants || !e.Roles[1].Grants {
		t.Errorf("roles %+v", e.Roles)
	}
	if len(e.Rules) != 1 || !e.Rules[0].Matches || e.Rules[0].Why != "grants acl.manage (pattern **)" {
		t.Errorf("rules %+v", e.Rules)
	}
	if g, _ := stepNamed(e, "grant"); g.Detail != "granted by role security-officer" {
		t.Errorf("grant %+v", g)
	}

	e = s.Explain(req("client:star", OpACLManage, ""))
	if e.Decision.Allowed || len(e.Rules) != 1 || e.Rules[0].Matches ||
		e.Rules[0].Why != "names acl.manage but only a rule on ** grants administrative operations" {
		t.Errorf("star admin: %+v", e)
	}
}

func TestExplain_WhatIf(t *testing.T) {
	s := mustFixture(t)
	// No certificate serial and a deactivated client: denied, but the grant
	// step still shows what the rules would allow.
	e := s.Explain(Request{Identity: "client:off", Op: OpGet, Resource: "x"})
	if e.Decision.Allowed || e.Decision.Code != Unauthenticated {
		t.Fatalf("decision %+v", e.Decision)
	}
	want := map[string]bool{"certificate": false, "identity": true, "registered": true, "active": false, "operation": true, "grant": true}
	if len(e.Steps) != len(want) {
		t.Fatalf("steps %+v", e.Steps)
	}
	for _, st := range e.Steps {
		if p, ok := want[st.Name]; !ok || p != st.Passed {
			t.Errorf("step %+v", st)
		}
	}

	// An unregistered client: its own rules are shown.
	e = s.Explain(req("client:ghost", OpGet, "x"))
	if len(e.Rules) != 1 || e.Rules[0].ID != "r-ghost" || !e.Rules[0].Matches {
		t.Errorf("ghost rules %+v", e.Rules)
	}
	if st, _ := stepNamed(e, "registered"); st.Passed {
		t.Errorf("registered %+v", st)
	}

	// A node: stops at the identity.
	e = s.Explain(req("node:n1", OpGet, "x"))
	if len(e.Steps) != 2 || e.Steps[1].Passed || !strings.Contains(e.Steps[1].Detail, "not subject to ACLs") {
		t.Errorf("node steps %+v", e.Steps)
	}
}

func TestExplain_Bounded(t *testing.T) {
	var rules []*cofferv1.AclRule
	for i := range MaxExplainRules + 10 {
		rules = append(rules, rule(fmt.Sprintf("r%04d", i), "client:busy", "get", fmt.Sprintf("p%d", i)))
	}
	s := mustSnapshot(t, []*cofferv1.ClientRecord{client("busy", true, nil)}, rules, nil)
	e := s.Explain(req("client:busy", OpGet, fmt.Sprintf("p%d", MaxExplainRules+5)))
	if len(e.Rules) != MaxExplainRules || e.Omitted != 10 {
		t.Fatalf("%d rules, %d omitted", len(e.Rules), e.Omitted)
	}
	if !e.Decision.Allowed {
		t.Fatal("the omitted rule should still allow")
	}
	if g, _ := stepNamed(e, "grant"); !g.Passed {
		t.Errorf("grant %+v", g)
	}
	if !strings.Contains(e.String(), "(10 more rules not shown)") {
		t.Error("text does not count omitted rules")
	}
}
