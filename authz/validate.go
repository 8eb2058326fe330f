package authz

import (
	"fmt"
	"math/big"
	"strings"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// Limits on records. The request path should refuse records beyond them
// before proposing; NewSnapshot refuses them too.
const (
	// MaxNameLen is the longest client or group name. It equals the longest
	// identity name transport accepts.
	MaxNameLen = 64
	// MaxRuleIDLen is the longest ACL rule id.
	MaxRuleIDLen = 128
	// MaxGroupsPerClient bounds ClientRecord.groups.
	MaxGroupsPerClient = 64
	// MaxOpsPerRule bounds AclRule.operations.
	MaxOpsPerRule = 64
	// MaxSerialLen is the longest certificate serial, in hex digits (RFC
	// 5280 allows 20 octets; this leaves room for non-conforming CAs).
	MaxSerialLen = 64
)

// Subject prefixes of AclRule.subject.
const (
	SubjectClientPrefix = "client:"
	SubjectGroupPrefix  = "group:"
)

// ClientSubject returns the rule subject for client name: "client:<name>".
// It is also the client's identity string.
func ClientSubject(name string) string { return SubjectClientPrefix + name }

// GroupSubject returns the rule subject for group name: "group:<name>".
func GroupSubject(name string) string { return SubjectGroupPrefix + name }

// ValidateClientName checks a client name: 1-64 characters of
// [A-Za-z0-9._-], and not "." or ".." (the same rule as transport's
// identity names, so every registered client can hold a certificate).
func ValidateClientName(name string) error {
	if !validName(name, MaxNameLen) {
		return fmt.Errorf("%w: client name %s must be 1-%d of [A-Za-z0-9._-], not . or ..", ErrInvalidName, display(name, 80), MaxNameLen)
	}
	return nil
}

// ValidateGroupName checks a group name with the same rule as client names.
func ValidateGroupName(name string) error {
	if !validName(name, MaxNameLen) {
		return fmt.Errorf("%w: group name %s must be 1-%d of [A-Za-z0-9._-], not . or ..", ErrInvalidName, display(name, 80), MaxNameLen)
	}
	return nil
}

// ValidateRuleID checks an ACL rule id: 1-128 characters of [A-Za-z0-9._-],
// not "." or "..". Rule ids never contain ':', so they cannot be confused
// with the "role:<name>" form of Decision.Rule.
func ValidateRuleID(id string) error {
	if !validName(id, MaxRuleIDLen) {
		return fmt.Errorf("%w: rule id %s must be 1-%d of [A-Za-z0-9._-], not . or ..", ErrInvalidName, display(id, 80), MaxRuleIDLen)
	}
	return nil
}

func validName(s string, maxLen int) bool {
	if len(s) == 0 || len(s) > maxLen || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// ParseSubject splits a rule subject into its kind ("client" or "group")
// and name, and validates the name.
func ParseSubject(subject string) (kind, name string, err error) {
	switch {
	case strings.HasPrefix(subject, SubjectClientPrefix):
		name = subject[len(SubjectClientPrefix):]
		if err := ValidateClientName(name); err != nil {
			return "", "", err
		}
		return "client", name, nil
	case strings.HasPrefix(subject, SubjectGroupPrefix):
		name = subject[len(SubjectGroupPrefix):]
		if err := ValidateGroupName(name); err != nil {
			return "", "", err
		}
		return "group", name, nil
	}
	return "", "", fmt.Errorf("%w: subject %s is not client:<name> or group:<name>", ErrInvalidName, display(subject, 80))
}

// ValidateRule checks an ACL rule: a valid id, a subject of the form
// "client:<name>" or "group:<name>", 1 to MaxOpsPerRule operations that
// ParseOp accepts (OpAll included), and a pattern that CompilePattern
// accepts. A rule that names an administrative operation explicitly must
// use the pattern "**": administrative operations are not resource-scoped,
// and a narrower pattern would suggest a restriction that does not exist.
// Errors wrap ErrInvalidRule and, where one applies, the more specific
// sentinel (ErrInvalidName, ErrUnknownOp, ErrInvalidPattern).
func ValidateRule(r *cofferv1.AclRule) error {
	_, err := compileRule(r)
	return err
}

// ValidateClient checks a client record: a valid name, at most
// MaxGroupsPerClient valid and distinct groups, and valid, distinct roles.
// Errors wrap ErrInvalidClient and the more specific sentinel.
func ValidateClient(c *cofferv1.ClientRecord) error {
	if c == nil {
		return fmt.Errorf("%w: nil record", ErrInvalidClient)
	}
	if err := ValidateClientName(c.GetName()); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidClient, err)
	}
	groups := c.GetGroups()
	if len(groups) > MaxGroupsPerClient {
		return fmt.Errorf("%w: client %s is in %d groups, the limit is %d", ErrInvalidClient, c.GetName(), len(groups), MaxGroupsPerClient)
	}
	for i, g := range groups {
		if err := ValidateGroupName(g); err != nil {
			return fmt.Errorf("%w: client %s: %w", ErrInvalidClient, c.GetName(), err)
		}
		for _, h := range groups[:i] {
			if g == h {
				return fmt.Errorf("%w: client %s lists group %s twice", ErrInvalidClient, c.GetName(), g)
			}
		}
	}
	rs := c.GetRoles()
	for i, r := range rs {
		if err := ValidateRole(r); err != nil {
			return fmt.Errorf("%w: client %s: %w", ErrInvalidClient, c.GetName(), err)
		}
		for _, h := range rs[:i] {
			if r == h {
				return fmt.Errorf("%w: client %s lists role %s twice", ErrInvalidClient, c.GetName(), r)
			}
		}
	}
	return nil
}

// CanonicalSerial returns a certificate serial in the form the deny list
// and Request.CertSerial use: lowercase hexadecimal without leading zeros
// ("0" for zero), as (*big.Int).Text(16) prints it. It accepts upper case
// and leading zeros, and refuses anything else, including a sign or an
// empty string. Errors wrap ErrInvalidSerial.
func CanonicalSerial(s string) (string, error) {
	var buf [MaxSerialLen]byte
	n, ok := canonSerial(s, &buf)
	if !ok {
		return "", fmt.Errorf("%w: %s is not 1-%d hex digits", ErrInvalidSerial, display(s, 80), MaxSerialLen)
	}
	return string(buf[:n]), nil
}

// FormatSerial returns the canonical serial of a certificate serial number
// (x509.Certificate.SerialNumber). Negative serials, which RFC 5280
// forbids but some CAs issue, keep their sign and never match the deny
// list's canonical form; callers should refuse such certificates.
func FormatSerial(n *big.Int) string {
	if n == nil {
		return ""
	}
	return n.Text(16)
}

// canonSerial writes the canonical form of s into buf without allocating.
func canonSerial(s string, buf *[MaxSerialLen]byte) (int, bool) {
	if len(s) == 0 || len(s) > MaxSerialLen {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		case c >= 'A' && c <= 'F':
			c += 'a' - 'A'
		default:
			return 0, false
		}
		if n == 0 && c == '0' {
			continue // leading zero
		}
		buf[n] = c
		n++
	}
	if n == 0 {
		buf[0] = '0'
		n = 1
	}
	return n, true
}
