package authz

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

const (
	goodSerial    = "1a2b3c"
	revokedSerial = "dead"
)

func client(name string, active bool, groups []string, roles ...string) *cofferv1.ClientRecord {
	return &cofferv1.ClientRecord{Name: name, Active: active, Groups: groups, Roles: roles}
}

func rule(id, subject, ops, pattern string) *cofferv1.AclRule {
	return &cofferv1.AclRule{Id: id, Subject: subject, Operations: strings.Split(ops, ","), ResourcePattern: pattern}
}

// fixture is a small deployment exercising every branch of Decide.
func fixture() ([]*cofferv1.ClientRecord, []*cofferv1.AclRule, []*cofferv1.RevokedCertificate) {
	clients := []*cofferv1.ClientRecord{
		client("app", true, []string{"payments"}, "application"),
		client("reader", true, []string{"readers"}),
		client("split", true, nil),
		client("off", false, nil),
		client("officer", true, nil, "security-officer"),
		client("ops", true, nil, "operator"),
		client("both", true, nil, "operator", "security-officer"),
		client("auditor-bot", true, nil),
		client("star", true, nil),
		client("root", true, nil),
		client("lonely", true, []string{"nobody-rules-here"}),
	}
	rules := []*cofferv1.AclRule{
		rule("r-app", "client:app", "generate,describe", "payments/**"),
		rule("r-pay", "group:payments", "get,encrypt", "payments/eu/*"),
		rule("r-readers", "group:readers", "describe,list", "**"),
		rule("s1", "client:split", "get", "db/**"),
		rule("s2", "client:split", "generate", "payments/**"),
		rule("r-off", "client:off", "*", "**"),
		rule("a1", "client:auditor-bot", "audit.read", "**"),
		rule("both-acl", "client:both", "acl.manage", "**"),
		rule("w1", "client:star", "*", "payments/**"),
		rule("w2", "client:root", "*", "**"),
		rule("r-ghost", "client:ghost", "get", "**"),
	}
	revoked := []*cofferv1.RevokedCertificate{{Serial: revokedSerial, Reason: "key compromise"}}
	return clients, rules, revoked
}

func mustSnapshot(t testing.TB, clients []*cofferv1.ClientRecord, rules []*cofferv1.AclRule, revoked []*cofferv1.RevokedCertificate) *Snapshot {
	t.Helper()
	s, err := NewSnapshot(clients, rules, revoked)
	if err != nil {
		t.Fatalf("NewSnapshot: %v", err)
	}
	return s
}

func mustFixture(t testing.TB) *Snapshot {
	t.Helper()
	clients, rules, revoked := fixture()
	return mustSnapshot(t, clients, rules, revoked)
}

type decideCase struct {
	name       string
	req        Request
	allowed    bool
	code       Code
	rule       string
	reasonPart string
}

func req(identity string, op Op, resource string) Request {
	return Request{Identity: identity, CertSerial: goodSerial, Op: op, Resource: resource}
}

func decideCases() []decideCase {
	withSerial := func(r Request, serial string) Request { r.CertSerial = serial; return r }
	return []decideCase{
		// 1. certificate
		{"revoked certificate", withSerial(req("client:app", OpGenerate, "payments/eu"), revokedSerial), false, Unauthenticated, "", "certificate revoked"},
		{"revoked certificate, other spelling", withSerial(req("client:app", OpGenerate, "payments/eu"), "00DEAD"), false, Unauthenticated, "", "certificate revoked"},
		{"revoked before unregistered", withSerial(req("client:ghost", OpGet, "x"), revokedSerial), false, Unauthenticated, "", "certificate revoked"},
		{"revoked node", withSerial(req("node:n1", OpGet, "x"), revokedSerial), false, Unauthenticated, "", "certificate revoked"},
		{"no serial", withSerial(req("client:app", OpGenerate, "payments/eu"), ""), false, Unauthenticated, "", "no certificate serial"},
		{"malformed serial", withSerial(req("client:app", OpGenerate, "payments/eu"), "-12"), false, Unauthenticated, "", "malformed certificate serial"},
		// 2. identity
		{"node identity", req("node:n1", OpGet, "payments/eu/x"), false, PermissionDenied, "", "node n1 is not a client"},
		{"identity without kind", req("app", OpGet, "x"), false, Unauthenticated, "", "malformed identity"},
		{"identity with empty name", req("client:", OpGet, "x"), false, Unauthenticated, "", "malformed identity"},
		{"identity with bad name", req("client:a/b", OpGet, "x"), false, Unauthenticated, "", "malformed identity"},
		{"identity of unknown kind", req("user:app", OpGet, "x"), false, Unauthenticated, "", "malformed identity"},
		// 3, 4. registered, active
		{"unregistered client", req("client:ghost", OpGet, "x"), false, PermissionDenied, "", "client ghost is not registered"},
		{"deactivated client", req("client:off", OpGet, "x"), false, PermissionDenied, "", "client off is deactivated"},
		// 5. operation
		{"unknown operation", req("client:root", "frobnicate", "x"), false, PermissionDenied, "", `unknown operation frobnicate`},
		{"empty operation", req("client:root", "", "x"), false, PermissionDenied, "", `unknown operation ""`},
		{"wildcard is not a request op", req("client:root", OpAll, "x"), false, PermissionDenied, "", "unknown operation *"},
		// 6. key operations
		{"client rule", req("client:app", OpGenerate, "payments/eu"), true, OK, "r-app", "granted by rule r-app"},
		{"group rule", req("client:app", OpGet, "payments/eu/cards"), true, OK, "r-pay", "granted by rule r-pay"},
		{"missing op grant", req("client:app", OpDestroy, "payments/eu"), false, PermissionDenied, "",
			"client app has no grant for destroy on payments/eu (grants: generate,describe on payments/**; get,encrypt on payments/eu/*)"},
		{"missing resource grant", req("client:app", OpGenerate, "db/orders"), false, PermissionDenied, "", "client app has no grant for generate on db/orders"},
		{"group op, resource outside its pattern", req("client:app", OpGet, "payments/us/cards"), false, PermissionDenied, "", "has no grant for get on payments/us/cards"},
		{"op and resource from two rules", req("client:split", OpGet, "payments/eu"), false, PermissionDenied, "",
			"client split has no grant for get on payments/eu (grants: get on db/**; generate on payments/**)"},
		{"split: first rule alone", req("client:split", OpGet, "db/orders"), true, OK, "s1", ""},
		{"split: second rule alone", req("client:split", OpGenerate, "payments/eu"), true, OK, "s2", ""},
		{"no grants at all", req("client:lonely", OpGet, "x"), false, PermissionDenied, "", "(no grants)"},
		{"list of everything needs **", req("client:reader", OpList, ""), true, OK, "r-readers", ""},
		{"list of everything denied", req("client:app", OpList, ""), false, PermissionDenied, "", "has no grant for list on all resources"},
		{"empty resource for a key op", req("client:app", OpGenerate, ""), false, PermissionDenied, "", "on all resources"},
		{"roles never grant key ops", req("client:officer", OpGet, "payments/eu/x"), false, PermissionDenied, "", "client officer has no grant for get"},
		{"wildcard op on a subtree", req("client:star", OpDestroy, "payments/eu/x"), true, OK, "w1", ""},
		{"wildcard op outside the subtree", req("client:star", OpGet, "db/x"), false, PermissionDenied, "", "(grants: * on payments/**)"},
		{"wildcard op everywhere", req("client:root", OpDataKey, "any/thing"), true, OK, "w2", ""},
		{"wildcard op, empty resource", req("client:root", OpList, ""), true, OK, "w2", ""},
		{"resource shown quoted", req("client:app", OpGet, "a b\"c"), false, PermissionDenied, "", `on "a b\"c"`},
		// 7. administrative operations
		{"role admin op", req("client:officer", OpACLManage, ""), true, OK, "role:security-officer", "granted by role security-officer"},
		{"role admin op ignores resource", req("client:officer", OpPolicyCreate, "whatever/x"), true, OK, "role:security-officer", ""},
		{"operator role", req("client:ops", OpClusterManage, ""), true, OK, "role:operator", ""},
		{"operator lacks acl.manage", req("client:ops", OpACLManage, ""), false, PermissionDenied, "", "client ops has no grant for acl.manage (roles: operator)"},
		{"officer lacks cluster.manage", req("client:officer", OpClusterManage, ""), false, PermissionDenied, "", "(roles: security-officer)"},
		{"application role grants no admin op", req("client:app", OpPolicyRead, ""), false, PermissionDenied, "", "(roles: application)"},
		{"no roles", req("client:split", OpAuditRead, ""), false, PermissionDenied, "", "(roles: none)"},
		{"rule admin op", req("client:auditor-bot", OpAuditRead, ""), true, OK, "a1", "granted by rule a1"},
		{"rule admin op, other op", req("client:auditor-bot", OpAuditExport, ""), false, PermissionDenied, "", ""},
		{"role and rule: role named first", req("client:both", OpACLManage, ""), true, OK, "role:security-officer", ""},
		{"roles in client order", req("client:both", OpAuditRead, ""), true, OK, "role:operator", ""},
		{"wildcard op on subtree grants no admin op", req("client:star", OpACLManage, ""), false, PermissionDenied, "", ""},
		{"wildcard op on ** grants admin ops", req("client:root", OpEscrowRecover, ""), true, OK, "w2", ""},
	}
}

func TestDecide(t *testing.T) {
	s := mustFixture(t)
	for _, tc := range decideCases() {
		t.Run(tc.name, func(t *testing.T) {
			d := s.Decide(tc.req)
			if d.Allowed != tc.allowed || d.Code != tc.code || d.Rule != tc.rule {
				t.Fatalf("Decide(%+v) = %+v, want allowed=%v code=%v rule=%q", tc.req, d, tc.allowed, tc.code, tc.rule)
			}
			if !strings.Contains(d.Reason, tc.reasonPart) {
				t.Errorf("reason %q does not contain %q", d.Reason, tc.reasonPart)
			}
			if d.Reason == "" {
				t.Error("empty reason")
			}
			if d.Allowed != (d.Code == OK) {
				t.Errorf("Allowed=%v with code %v", d.Allowed, d.Code)
			}
		})
	}
}

func TestDecide_NilSnapshot(t *testing.T) {
	var s *Snapshot
	d := s.Decide(req("client:app", OpGet, "x"))
	if d.Allowed || d.Code != PermissionDenied {
		t.Fatalf("nil snapshot: %+v", d)
	}
	if d := s.DecideNode("node:n1", goodSerial); d.Allowed {
		t.Fatalf("nil snapshot allows a node: %+v", d)
	}
	if e := s.Explain(req("client:app", OpGet, "x")); e.Decision.Allowed {
		t.Fatalf("nil snapshot explains an allow: %+v", e)
	}
}

func TestDecide_ZeroDecisionDenies(t *testing.T) {
	var d Decision
	if d.Allowed || d.Code == OK {
		t.Fatal("zero Decision allows")
	}
}

func TestDecide_AllowDoesNotAllocate(t *testing.T) {
	s := mustFixture(t)
	for _, r := range []Request{
		req("client:app", OpGenerate, "payments/eu"),                                             // client rule
		req("client:app", OpGet, "payments/eu/cards"),                                            // group rule
		req("client:officer", OpACLManage, ""),                                                   // role
		req("client:auditor-bot", OpAuditRead, ""),                                               // admin op by rule
		req("client:root", OpList, ""),                                                           // "*" on "**"
		{Identity: "client:app", CertSerial: "001A2B3C", Op: OpGenerate, Resource: "payments/x"}, // non-canonical serial
	} {
		if d := s.Decide(r); !d.Allowed {
			t.Fatalf("Decide(%+v) = %+v, want allowed", r, d)
		}
		if n := testing.AllocsPerRun(200, func() { s.Decide(r) }); n != 0 {
			t.Errorf("Decide(%+v) allocates %v times", r, n)
		}
	}
}

func TestDecide_ReasonIsBounded(t *testing.T) {
	var rules []*cofferv1.AclRule
	long := strings.Repeat("x", 200)
	for i := range 50 {
		rules = append(rules, rule(fmt.Sprintf("r%02d", i), "client:busy", "generate,get,describe,list,encrypt,decrypt,datakey,state", long+fmt.Sprintf("/%d/**", i)))
	}
	s := mustSnapshot(t, []*cofferv1.ClientRecord{client("busy", true, nil)}, rules, nil)
	d := s.Decide(req("client:busy", OpDestroy, strings.Repeat("ü", 128)))
	if d.Allowed || len(d.Reason) > MaxReasonLen {
		t.Fatalf("reason of %d bytes (limit %d): %q", len(d.Reason), MaxReasonLen, d.Reason)
	}
	if !strings.Contains(d.Reason, " more grants)") {
		t.Errorf("reason does not count the grants left out: %q", d.Reason)
	}
	if !strings.HasPrefix(d.Reason, "client busy has no grant for destroy on ") {
		t.Errorf("reason %q", d.Reason)
	}
}

func TestDecideNode(t *testing.T) {
	s := mustFixture(t)
	tests := []struct {
		identity, serial string
		allowed          bool
		code             Code
	}{
		{"node:n1", goodSerial, true, OK},
		{"node:n1", revokedSerial, false, Unauthenticated},
		{"node:n1", "", false, Unauthenticated},
		{"client:app", goodSerial, false, PermissionDenied},
		{"node:", goodSerial, false, Unauthenticated},
		{"n1", goodSerial, false, Unauthenticated},
	}
	for _, tt := range tests {
		d := s.DecideNode(tt.identity, tt.serial)
		if d.Allowed != tt.allowed || d.Code != tt.code || d.Reason == "" {
			t.Errorf("DecideNode(%q, %q) = %+v, want allowed=%v code=%v", tt.identity, tt.serial, d, tt.allowed, tt.code)
		}
	}
}

func TestSnapshot_Revoked(t *testing.T) {
	s := mustFixture(t)
	for serial, want := range map[string]bool{"dead": true, "DEAD": true, "000dead": true, "beef": false, "": false, "zz": false} {
		if got := s.Revoked(serial); got != want {
			t.Errorf("Revoked(%q) = %v, want %v", serial, got, want)
		}
	}
}

func TestNewSnapshot_Errors(t *testing.T) {
	ok := rule("r1", "client:app", "get", "**")
	tests := []struct {
		name    string
		clients []*cofferv1.ClientRecord
		rules   []*cofferv1.AclRule
		revoked []*cofferv1.RevokedCertificate
		want    []error
	}{
		{"duplicate client", []*cofferv1.ClientRecord{client("app", true, nil), client("app", false, nil)}, nil, nil, []error{ErrDuplicate}},
		{"duplicate rule id", nil, []*cofferv1.AclRule{ok, rule("r1", "group:g", "get", "x")}, nil, []error{ErrDuplicate}},
		{"bad pattern", nil, []*cofferv1.AclRule{rule("r1", "client:app", "get", "a//b")}, nil, []error{ErrInvalidRule, ErrInvalidPattern}},
		{"partial wildcard", nil, []*cofferv1.AclRule{rule("r1", "client:app", "get", "card-*")}, nil, []error{ErrInvalidRule, ErrInvalidPattern}},
		{"unknown op", nil, []*cofferv1.AclRule{rule("r1", "client:app", "get,fly", "**")}, nil, []error{ErrInvalidRule, ErrUnknownOp}},
		{"no ops", nil, []*cofferv1.AclRule{{Id: "r1", Subject: "client:app", ResourcePattern: "**"}}, nil, []error{ErrInvalidRule}},
		{"admin op on a narrow pattern", nil, []*cofferv1.AclRule{rule("r1", "client:app", "get,acl.manage", "payments/**")}, nil, []error{ErrInvalidRule}},
		{"admin op on a single-segment pattern", nil, []*cofferv1.AclRule{rule("r1", "client:app", "audit.read", "*")}, nil, []error{ErrInvalidRule}},
		{"bad subject", nil, []*cofferv1.AclRule{rule("r1", "user:app", "get", "**")}, nil, []error{ErrInvalidRule, ErrInvalidName}},
		{"bad subject name", nil, []*cofferv1.AclRule{rule("r1", "group:a b", "get", "**")}, nil, []error{ErrInvalidRule, ErrInvalidName}},
		{"bad rule id", nil, []*cofferv1.AclRule{rule("role:x", "client:app", "get", "**")}, nil, []error{ErrInvalidRule, ErrInvalidName}},
		{"nil rule", nil, []*cofferv1.AclRule{nil}, nil, []error{ErrInvalidRule}},
		{"nil client", []*cofferv1.ClientRecord{nil}, nil, nil, []error{ErrInvalidClient}},
		{"bad client name", []*cofferv1.ClientRecord{client("..", true, nil)}, nil, nil, []error{ErrInvalidClient, ErrInvalidName}},
		{"bad group", []*cofferv1.ClientRecord{client("app", true, []string{"ok", "not ok"})}, nil, nil, []error{ErrInvalidClient, ErrInvalidName}},
		{"duplicate group", []*cofferv1.ClientRecord{client("app", true, []string{"g", "g"})}, nil, nil, []error{ErrInvalidClient}},
		{"unknown role", []*cofferv1.ClientRecord{client("app", true, nil, "admin")}, nil, nil, []error{ErrInvalidClient, ErrInvalidRole}},
		{"duplicate role", []*cofferv1.ClientRecord{client("app", true, nil, "operator", "operator")}, nil, nil, []error{ErrInvalidClient}},
		{"bad serial", nil, nil, []*cofferv1.RevokedCertificate{{Serial: "xyz"}}, []error{ErrInvalidSerial}},
		{"empty serial", nil, nil, []*cofferv1.RevokedCertificate{{Serial: ""}}, []error{ErrInvalidSerial}},
		{"nil revocation", nil, nil, []*cofferv1.RevokedCertificate{nil}, []error{ErrInvalidSerial}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewSnapshot(tt.clients, tt.rules, tt.revoked)
			if err == nil || s != nil {
				t.Fatalf("NewSnapshot = %v, %v; want an error", s, err)
			}
			for _, want := range tt.want {
				if !errors.Is(err, want) {
					t.Errorf("error %q does not wrap %q", err, want)
				}
			}
		})
	}
}

func TestNewSnapshot_Accepts(t *testing.T) {
	// Empty state, a serial revoked twice, and rules for subjects that have
	// no client record yet are all fine.
	s, err := NewSnapshot(nil, []*cofferv1.AclRule{rule("r1", "group:later", "get", "**")},
		[]*cofferv1.RevokedCertificate{{Serial: "ab"}, {Serial: "AB"}})
	if err != nil {
		t.Fatal(err)
	}
	if d := s.Decide(req("client:app", OpGet, "x")); d.Allowed {
		t.Fatalf("empty state allows: %+v", d)
	}
}

func TestNewSnapshot_DoesNotAliasRecords(t *testing.T) {
	clients, rules, revoked := fixture()
	s := mustSnapshot(t, clients, rules, revoked)
	r := req("client:app", OpGet, "payments/eu/cards")
	if !s.Decide(r).Allowed {
		t.Fatal("fixture should allow")
	}
	// Mutating the records after the build must not change the snapshot.
	clients[0].Groups[0] = "other"
	clients[0].Active = false
	rules[1].Operations[0] = "destroy"
	if d := s.Decide(r); !d.Allowed {
		t.Fatalf("snapshot changed with its input records: %+v", d)
	}
}

// TestSnapshot_DynamicChange follows the lead's pattern: a new Snapshot is
// built from committed state after each change and swapped in atomically.
// Every decision made after the swap sees the change, while concurrent
// deciders never race.
func TestSnapshot_DynamicChange(t *testing.T) {
	clients, rules, _ := fixture()
	var cur atomic.Pointer[Snapshot]
	cur.Store(mustSnapshot(t, clients, rules, nil))

	r := req("client:app", OpGet, "payments/eu/cards")
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := cur.Load()
				_ = s.Decide(r)
				_ = s.Decide(req("client:officer", OpACLManage, ""))
				_ = s.Explain(req("client:split", OpGet, "payments/eu"))
				_ = s.DecideNode("node:n1", goodSerial)
			}
		}()
	}

	// Revoke the serial: acknowledged once the new snapshot is stored.
	cur.Store(mustSnapshot(t, clients, rules, []*cofferv1.RevokedCertificate{{Serial: goodSerial}}))
	if d := cur.Load().Decide(r); d.Code != Unauthenticated {
		t.Errorf("after revocation: %+v", d)
	}
	// Deactivate instead.
	off := client("app", false, []string{"payments"}, "application")
	cur.Store(mustSnapshot(t, append([]*cofferv1.ClientRecord{off}, clients[1:]...), rules, nil))
	if d := cur.Load().Decide(r); d.Allowed || !strings.Contains(d.Reason, "deactivated") {
		t.Errorf("after deactivation: %+v", d)
	}
	// Remove the group rule.
	cur.Store(mustSnapshot(t, clients, append(append([]*cofferv1.AclRule{}, rules[:1]...), rules[2:]...), nil))
	if d := cur.Load().Decide(r); d.Allowed {
		t.Errorf("after the rule was removed: %+v", d)
	}
	close(stop)
	wg.Wait()
}

func TestDecide_Concurrent(t *testing.T) {
	s := mustFixture(t)
	cases := decideCases()
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				tc := cases[(g+i)%len(cases)]
				if d := s.Decide(tc.req); d.Allowed != tc.allowed || d.Rule != tc.rule {
					t.Errorf("%s: %+v", tc.name, d)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestBootstrapAdmin(t *testing.T) {
	c, r := BootstrapAdmin("admin")
	if err := ValidateClient(c); err != nil {
		t.Fatal(err)
	}
	if err := ValidateRule(r); err != nil {
		t.Fatal(err)
	}
	if r.GetId() != "bootstrap-admin" || r.GetSubject() != "client:admin" || r.GetResourcePattern() != "**" {
		t.Fatalf("rule %v", r)
	}
	if len(c.GetRoles()) != len(Roles()) || !c.GetActive() {
		t.Fatalf("client %v", c)
	}
	s := mustSnapshot(t, []*cofferv1.ClientRecord{c}, []*cofferv1.AclRule{r}, nil)
	for _, op := range AllOps() {
		for _, res := range []string{"", "x", "payments/eu/card-keys"} {
			if d := s.Decide(req("client:admin", op, res)); !d.Allowed {
				t.Errorf("bootstrap admin denied %s on %q: %s", op, res, d.Reason)
			}
		}
	}
	if d := s.Decide(req("client:someone-else", OpGet, "x")); d.Allowed {
		t.Error("bootstrap grants reach another client")
	}
}

func TestDecideKeyRead(t *testing.T) {
	clients := []*cofferv1.ClientRecord{
		{Name: "admin", Active: true}, {Name: "app", Active: true}, {Name: "off", Active: false},
	}
	rules := []*cofferv1.AclRule{
		rule("all", "client:admin", "get", "**"),
		rule("pay", "client:app", "get,describe,encrypt,decrypt", "pay/**"),
	}
	s, err := NewSnapshot(clients, rules, []*cofferv1.RevokedCertificate{{Serial: "0bad"}})
	if err != nil {
		t.Fatal(err)
	}
	rec := &cofferv1.KeyRecord{Gkid: "k1", Resource: "secret/hr"}
	mine := &cofferv1.KeyRecord{Gkid: "k2", Resource: "pay/eu", Algorithm: cofferv1.Algorithm_ALGORITHM_AES_256}
	hmac := &cofferv1.KeyRecord{Gkid: "k4", Resource: "pay/eu", Algorithm: cofferv1.Algorithm_ALGORITHM_HMAC_SHA256}
	// k3 may only be used to decrypt.
	decryptOnly := &cofferv1.KeyRecord{Gkid: "k3", Resource: "pay/eu", Algorithm: cofferv1.Algorithm_ALGORITHM_AES_128, UsePolicy: &cofferv1.KeyUsePolicy{Operations: []string{"decrypt"}}}
	at := time.Unix(0, 0)
	req := func(who, serial string) Request {
		return Request{Identity: "client:" + who, CertSerial: serial, Op: OpGet}
	}
	as := func(r Request, op Op) Request { r.Op = op; return r }
	for _, c := range []struct {
		name   string
		req    Request
		gkid   string
		rec    *cofferv1.KeyRecord
		want   cofferv1.ReadRefusal
		detail string
	}{
		{"granted", req("app", "01"), "k2", mine, cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, ""},
		{"no grant on an existing key", req("app", "01"), "k1", rec, cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, "key k1 does not exist, or client:app holds no grant for get on it"},
		{"no grant on a missing key", req("app", "01"), "k1", nil, cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, "key k1 does not exist, or client:app holds no grant for get on it"},
		{"granted everywhere, missing key", req("admin", "01"), "k1", nil, cofferv1.ReadRefusal_READ_REFUSAL_NOT_FOUND, "key k1"},
		{"deactivated", req("off", "01"), "k1", rec, cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, "client off is deactivated"},
		{"revoked certificate", req("admin", "0bad"), "k1", rec, cofferv1.ReadRefusal_READ_REFUSAL_UNAUTHENTICATED, "certificate revoked"},
		{"encrypt granted", as(req("app", "01"), OpEncrypt), "k2", mine, cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, ""},
		{"datakey not granted", as(req("app", "01"), OpDataKey), "k2", mine, cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, "key k2 does not exist, or client:app holds no grant for datakey on it"},
		{"use policy refuses encrypt", as(req("app", "01"), OpEncrypt), "k3", decryptOnly, cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, "the use policy of key k3 does not allow encrypt (allowed: [decrypt])"},
		{"use policy allows decrypt", as(req("app", "01"), OpDecrypt), "k3", decryptOnly, cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, ""},
		{"encrypt with an HMAC key", as(req("app", "01"), OpEncrypt), "k4", hmac, cofferv1.ReadRefusal_READ_REFUSAL_UNSUITABLE, "key k4 is ALGORITHM_HMAC_SHA256; encrypt needs an AES key"},
		{"get of an HMAC key", req("app", "01"), "k4", hmac, cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, ""},
		{"describe ignores the use policy", as(req("app", "01"), OpDescribe), "k3", decryptOnly, cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, ""},
	} {
		got, detail := s.DecideKeyRead(c.req, c.gkid, c.rec, at)
		if got != c.want || detail != c.detail {
			t.Errorf("%s: %v %q, want %v %q", c.name, got, detail, c.want, c.detail)
		}
		if strings.Contains(detail, "secret") {
			t.Errorf("%s: the refusal names the key's resource: %q", c.name, detail)
		}
	}
}
