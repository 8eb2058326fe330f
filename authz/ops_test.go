package authz

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func TestOps_Catalogue(t *testing.T) {
	all := AllOps()
	if len(all) != len(KeyOps())+len(AdminOps()) {
		t.Fatalf("AllOps has %d, key %d + admin %d", len(all), len(KeyOps()), len(AdminOps()))
	}
	seen := map[Op]bool{}
	for _, op := range all {
		if seen[op] {
			t.Errorf("%s listed twice", op)
		}
		seen[op] = true
		if !op.Valid() || op.IsKey() == op.IsAdmin() {
			t.Errorf("%s: valid=%v key=%v admin=%v", op, op.Valid(), op.IsKey(), op.IsAdmin())
		}
		if got, err := ParseOp(string(op)); err != nil || got != op {
			t.Errorf("ParseOp(%s) = %v, %v", op, got, err)
		}
	}
	for _, op := range KeyOps() {
		if !op.IsKey() {
			t.Errorf("%s is not a key op", op)
		}
	}
	for _, op := range AdminOps() {
		if !op.IsAdmin() || !strings.Contains(string(op), ".") {
			t.Errorf("%s is not an admin op", op)
		}
	}
	if OpAll.Valid() || OpAll.IsKey() || OpAll.IsAdmin() {
		t.Error("OpAll is a catalogue op")
	}
	// The returned slices are copies.
	all[0] = "mutated"
	if AllOps()[0] == "mutated" {
		t.Error("AllOps returns shared storage")
	}
}

func TestParseOp(t *testing.T) {
	if op, err := ParseOp("*"); err != nil || op != OpAll {
		t.Errorf("ParseOp(*) = %v, %v", op, err)
	}
	for _, s := range []string{"", "GET", " get", "get ", "policy", "policy.*", "acl.grant", "**"} {
		if _, err := ParseOp(s); !errors.Is(err, ErrUnknownOp) {
			t.Errorf("ParseOp(%q) = %v, want ErrUnknownOp", s, err)
		}
	}
}

func TestParseOps(t *testing.T) {
	good := map[string][]Op{
		"generate,get":        {OpGenerate, OpGet},
		" get , describe ":    {OpGet, OpDescribe},
		"get,get,describe":    {OpGet, OpDescribe},
		"*":                   {OpAll},
		"acl.manage,acl.read": {OpACLManage, OpACLRead},
	}
	for in, want := range good {
		got, err := ParseOps(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ParseOps(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", " ", "get,", ",get", "get,,put", "get,fly", strings.Repeat("get,", 300)} {
		if _, err := ParseOps(in); !errors.Is(err, ErrUnknownOp) {
			t.Errorf("ParseOps(%q) = %v, want ErrUnknownOp", in, err)
		}
	}
}

func TestRoles(t *testing.T) {
	for _, r := range Roles() {
		if !r.Valid() {
			t.Errorf("%s invalid", r)
		}
		for _, op := range r.Ops() {
			if !op.IsAdmin() {
				t.Errorf("role %s grants non-admin op %s", r, op)
			}
			if !r.Grants(op) {
				t.Errorf("role %s: Grants(%s) false", r, op)
			}
		}
		for _, op := range KeyOps() {
			if r.Grants(op) {
				t.Errorf("role %s grants key op %s", r, op)
			}
		}
	}
	want := map[Role][]Op{
		RoleSecurityOfficer: {OpPolicyCreate, OpPolicyUpdate, OpPolicyRead, OpACLManage, OpACLRead,
			OpClientManage, OpClientRead, OpEscrowRecover, OpAuditRead, OpAuditExport, OpAuditPrune, OpCacheManage, OpCacheFlush},
		RoleOperator:    {OpPolicyRead, OpClientRead, OpAuditRead, OpClusterRead, OpClusterManage, OpSnapshotSave, OpSnapshotRestore},
		RoleApplication: nil,
	}
	for r, ops := range want {
		if got := r.Ops(); !reflect.DeepEqual(got, ops) {
			t.Errorf("%s.Ops() = %v, want %v", r, got, ops)
		}
	}
	// Separation of duties: the operator can neither change access nor
	// recover keys; the security officer cannot run the cluster.
	for _, op := range []Op{OpACLManage, OpClientManage, OpPolicyCreate, OpEscrowRecover, OpCacheManage, OpCacheFlush} {
		if RoleOperator.Grants(op) {
			t.Errorf("operator grants %s", op)
		}
	}
	for _, op := range []Op{OpClusterManage, OpSnapshotSave} {
		if RoleSecurityOfficer.Grants(op) {
			t.Errorf("security officer grants %s", op)
		}
	}
	for _, s := range []string{"", "admin", "Operator", "security_officer"} {
		if _, err := ParseRole(s); !errors.Is(err, ErrInvalidRole) {
			t.Errorf("ParseRole(%q) = %v", s, err)
		}
	}
	if r, err := ParseRole("operator"); err != nil || r != RoleOperator {
		t.Errorf("ParseRole(operator) = %v, %v", r, err)
	}
}

// TestDecide_SelfOps grants cache.read to every registered, active client
// without a role or rule, and to no one else; cache.manage and cache.flush
// stay the security officer's.
func TestDecide_SelfOps(t *testing.T) {
	snap, err := NewSnapshot([]*cofferv1.ClientRecord{
		{Name: "app", Active: true, Roles: []string{"application"}},
		{Name: "off", Active: false},
		{Name: "so", Active: true, Roles: []string{"security-officer"}},
	}, nil, []*cofferv1.RevokedCertificate{{Serial: "bad"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := SelfOps(); len(got) != 1 || got[0] != OpCacheRead || !OpCacheRead.IsSelf() || !OpCacheRead.IsAdmin() || OpCacheManage.IsSelf() {
		t.Fatalf("self ops %v", got)
	}
	cases := []struct {
		who, serial string
		op          Op
		allowed     bool
	}{
		{"client:app", "1", OpCacheRead, true},
		{"client:so", "1", OpCacheRead, true},
		{"client:off", "1", OpCacheRead, false},
		{"client:ghost", "1", OpCacheRead, false},
		{"client:app", "bad", OpCacheRead, false},
		{"node:n1", "1", OpCacheRead, false},
		{"client:app", "1", OpCacheManage, false},
		{"client:app", "1", OpCacheFlush, false},
		{"client:so", "1", OpCacheManage, true},
		{"client:so", "1", OpCacheFlush, true},
	}
	for _, c := range cases {
		d := snap.Decide(Request{Identity: c.who, CertSerial: c.serial, Op: c.op})
		if d.Allowed != c.allowed {
			t.Errorf("%s %s: %+v, want allowed=%v", c.who, c.op, d, c.allowed)
		}
		if c.allowed && c.op == OpCacheRead && d.Rule != SelfRule {
			t.Errorf("%s %s: rule %q", c.who, c.op, d.Rule)
		}
		e := snap.Explain(Request{Identity: c.who, CertSerial: c.serial, Op: c.op})
		if e.Decision.Allowed != c.allowed {
			t.Errorf("explain %s %s: %+v", c.who, c.op, e.Decision)
		}
	}
}
