package authz

import (
	"errors"
	"math/big"
	"strings"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func TestValidateNames(t *testing.T) {
	good := []string{"a", "app", "App-1", "svc_payments.eu", "...", strings.Repeat("x", MaxNameLen)}
	bad := []string{"", ".", "..", "a b", "a/b", "a:b", "ü", "a\x00", strings.Repeat("x", MaxNameLen+1)}
	for _, f := range []func(string) error{ValidateClientName, ValidateGroupName} {
		for _, s := range good {
			if err := f(s); err != nil {
				t.Errorf("%q: %v", s, err)
			}
		}
		for _, s := range bad {
			if err := f(s); !errors.Is(err, ErrInvalidName) {
				t.Errorf("%q: %v, want ErrInvalidName", s, err)
			}
		}
	}
	if err := ValidateRuleID(strings.Repeat("r", MaxRuleIDLen)); err != nil {
		t.Error(err)
	}
	if err := ValidateRuleID(strings.Repeat("r", MaxRuleIDLen+1)); !errors.Is(err, ErrInvalidName) {
		t.Error(err)
	}
}

func TestParseSubject(t *testing.T) {
	for in, want := range map[string][2]string{"client:app": {"client", "app"}, "group:payments": {"group", "payments"}} {
		kind, name, err := ParseSubject(in)
		if err != nil || kind != want[0] || name != want[1] {
			t.Errorf("ParseSubject(%q) = %q, %q, %v", in, kind, name, err)
		}
	}
	for _, in := range []string{"", "app", "client:", "group:", "node:n1", "role:operator", "client:a b", "Client:app"} {
		if _, _, err := ParseSubject(in); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ParseSubject(%q) = %v", in, err)
		}
	}
	if ClientSubject("a") != "client:a" || GroupSubject("g") != "group:g" {
		t.Error("subject helpers")
	}
}

func TestValidateRule(t *testing.T) {
	good := []*cofferv1.AclRule{
		rule("r1", "client:app", "get", "payments/**"),
		rule("r2", "group:g", "*", "payments/*/keys"),
		rule("r3", "group:g", "*", "**"),
		rule("r4", "client:app", "acl.read,get", "**"),
		rule("r5", "client:app", "get,get", "*"),
	}
	for _, r := range good {
		if err := ValidateRule(r); err != nil {
			t.Errorf("%v: %v", r, err)
		}
	}
	tooMany := rule("r", "client:app", "get", "**")
	for range MaxOpsPerRule {
		tooMany.Operations = append(tooMany.Operations, "get")
	}
	bad := []*cofferv1.AclRule{
		nil,
		rule("", "client:app", "get", "**"),
		rule("r1", "client:app", "get", ""),
		rule("r1", "client:app", "", "**"),
		rule("r1", "client:app", "GET", "**"),
		rule("r1", "client:app", "policy.create", "policies/**"),
		tooMany,
	}
	for _, r := range bad {
		if err := ValidateRule(r); !errors.Is(err, ErrInvalidRule) {
			t.Errorf("%v: %v, want ErrInvalidRule", r, err)
		}
	}
}

func TestCanonicalSerial(t *testing.T) {
	good := map[string]string{
		"1a2b":     "1a2b",
		"1A2B":     "1a2b",
		"0001a2b":  "1a2b",
		"0":        "0",
		"000":      "0",
		"deadBEEF": "deadbeef",
	}
	for in, want := range good {
		got, err := CanonicalSerial(in)
		if err != nil || got != want {
			t.Errorf("CanonicalSerial(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "0x12", "12 34", "g", "12:34", strings.Repeat("a", MaxSerialLen+1)} {
		if _, err := CanonicalSerial(in); !errors.Is(err, ErrInvalidSerial) {
			t.Errorf("CanonicalSerial(%q) = %v", in, err)
		}
	}
	n, _ := new(big.Int).SetString("00ABCDEF0123456789", 16)
	if got := FormatSerial(n); got != "abcdef0123456789" {
		t.Errorf("FormatSerial = %q", got)
	}
	if c, _ := CanonicalSerial(FormatSerial(n)); c != FormatSerial(n) {
		t.Error("FormatSerial is not canonical")
	}
	if FormatSerial(nil) != "" {
		t.Error("FormatSerial(nil)")
	}
}
