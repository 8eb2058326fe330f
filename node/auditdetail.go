package node

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/transport"
)

// What an administrative audit entry says.
//
// The entry's operation stays the authorisation operation (client.manage,
// acl.manage, policy.create, policy.update: tools filter by it); its reason
// says what the write changes, set by the write's execute function before it
// proposes the change (Apply keeps it on success and replaces it with the
// error on a failure). There is one helper below per kind of change, so that
// every entry of a kind reads alike:
//
//	registered client app1: roles [application]; groups [payments]
//	updated client app1: roles [application] -> [application,operator]
//	activated client app1: inactive -> active
//	deactivated client app1: active -> inactive
//	revoked certificate serial 1f2e of client app1: key lost
//	granted rule rule-x: client:app1 may get,encrypt on payments/**
//	revoked rule rule-x: client:app1 may get,encrypt on payments/**
//	created policy p: allowed_algorithms any; default_use_policy.operations any; ...
//	updated policy p for keys created from now on: cache_policy.ttl 0s -> 1h0m0s
//	amended use policy of key k1-…: use_policy.operations any -> [decrypt]
//	set cache policy of client app1: ttl 5m0s; max_entries 100; max_uses none; allowed_operations [get]; persist false
//	set cache policy of the cluster default: ttl 5m0s -> 1m0s
//	cleared cache policy of client app1: the cluster default applies
//	ordered every client to drop its key cache: incident 42
//
// A list of settings or changes is "name value" or "name old -> new" items
// joined by "; "; lists of values are "[a,b]". An entry never holds a secret:
// no key material, wrapped KEK or escrow key bytes, only names, rule ids,
// operation names, certificate serials, escrow key ids and policy settings.
// The entry's other fields keep naming the target: client (the client, or
// the rule's subject), resource (the rule's pattern), policy.

// setting is one named value of a record, as an entry shows it.
type setting struct{ name, value string }

// changes lists the settings whose value differs between old and next (the
// same names in the same order), each as "name old -> new".
func changes(old, next []setting) []string {
	var out []string
	for i, n := range next {
		if o := old[i]; o.value != n.value {
			out = append(out, n.name+" "+o.value+" -> "+n.value)
		}
	}
	return out
}

// changeList joins changes with "; ", or says "unchanged".
func changeList(cs []string) string {
	if len(cs) == 0 {
		return "unchanged"
	}
	return strings.Join(cs, "; ")
}

// listed joins settings as "name value; name value".
func listed(ss []setting) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.name + " " + s.value
	}
	return strings.Join(out, "; ")
}

// bracketed shows a list of values as "[a,b]".
func bracketed(vs []string) string { return "[" + strings.Join(vs, ",") + "]" }

// clientSettings is what a registration sets of a client.
func clientSettings(c *cofferv1.ClientRecord) []setting {
	return []setting{{"roles", bracketed(c.GetRoles())}, {"groups", bracketed(c.GetGroups())}}
}

// clientRegistered describes a registration: a new client (cur is nil) with
// its roles and groups, or an update of cur with the fields it changes.
func clientRegistered(cur, next *cofferv1.ClientRecord) string {
	if cur == nil {
		return "registered client " + next.GetName() + ": " + listed(clientSettings(next))
	}
	return "updated client " + next.GetName() + ": " + changeList(changes(clientSettings(cur), clientSettings(next)))
}

// clientActivity describes SetClientActive: activated or deactivated, with
// the old and new state ("(unchanged)" when the client already was).
func clientActivity(name string, was, now bool) string {
	word := func(active bool) string {
		if active {
			return "active"
		}
		return "inactive"
	}
	verb := "deactivated"
	if now {
		verb = "activated"
	}
	s := verb + " client " + name + ": " + word(was) + " -> " + word(now)
	if was == now {
		s += " (unchanged)"
	}
	return s
}

// certificateRevoked describes a revocation by its serial, whom the
// certificate was issued to (holder, when the request carried the
// certificate; the zero Identity otherwise) and the caller's reason. It also
// returns the entry's target: the client's name, as in every client.manage
// entry, node:NAME for a node certificate, "" when no holder is known.
func certificateRevoked(serial string, holder transport.Identity, reason string) (target, what string) {
	what = "revoked certificate serial " + serial
	switch holder.Kind {
	case transport.KindClient:
		target = holder.Name
	case transport.KindNode:
		target = holder.String()
	}
	if target != "" {
		what += " of " + string(holder.Kind) + " " + holder.Name
	} else {
		what += " (holder not named: revoked by serial)"
	}
	return target, what + reasonSuffix(reason)
}

// ruleChanged describes a rule being granted or revoked (verb): its id as
// assigned, subject, operations and pattern.
func ruleChanged(verb string, rule *cofferv1.AclRule) string {
	return verb + " rule " + rule.GetId() + ": " + rule.GetSubject() + " may " +
		strings.Join(rule.GetOperations(), ",") + " on " + rule.GetResourcePattern()
}

// policySettings is what a policy decides for the keys created under it, in
// a fixed order. Each binds a key when it is created (createKey,
// keyUsePolicy): the algorithm is checked, the rest is copied into the key
// record (use and cache policy, not_after, escrow copies, KEK version), so a
// change applies to keys created afterwards.
func policySettings(p *cofferv1.PolicyRecord) []setting {
	u, c := p.GetDefaultUsePolicy(), p.GetCachePolicy()
	algs := make([]string, len(p.GetAllowedAlgorithms()))
	for i, a := range p.GetAllowedAlgorithms() {
		algs[i] = strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(a.String(), "ALGORITHM_")), "_", "-")
	}
	escrow := make([]string, len(p.GetEscrowKeys()))
	for i, k := range p.GetEscrowKeys() {
		escrow[i] = k.GetId()[:min(16, len(k.GetId()))]
	}
	lifetime := durationOrNone(p.GetMaxLifetimeNanos())
	out := []setting{{"allowed_algorithms", anyIfEmpty(algs)}}
	out = append(out, useSettings("default_use_policy", u)...)
	return append(out, []setting{
		{"max_lifetime", lifetime},
		{"cache_policy.cacheable", strconv.FormatBool(c.GetCacheable())},
		{"cache_policy.ttl", c.GetTtl().AsDuration().String()},
		{"cache_policy.max_keys", strconv.FormatUint(uint64(c.GetMaxKeys()), 10)},
		{"escrow_keys", bracketed(escrow)},
		{"escrow_retention", durationOrNone(p.GetEscrowRetentionNanos())},
		{"kek_version", strconv.FormatUint(uint64(p.GetKekVersion()), 10)},
	}...)
}

// useSettings is what a use policy decides, each setting named
// prefix.field, in a fixed order.
func useSettings(prefix string, u *cofferv1.KeyUsePolicy) []setting {
	period := "none"
	if d := u.GetRotationPeriod(); d != nil {
		period = d.AsDuration().String()
	}
	count := func(n uint64) string {
		if n == 0 {
			return "none"
		}
		return strconv.FormatUint(n, 10)
	}
	return []setting{
		{prefix + ".operations", anyIfEmpty(u.GetOperations())},
		{prefix + ".not_before", timeOrNone(u.GetNotBefore())},
		{prefix + ".not_after", timeOrNone(u.GetNotAfter())},
		{prefix + ".max_encryptions", count(u.GetMaxEncryptions())},
		{prefix + ".rotation_period", period},
		{prefix + ".rotate_after_encryptions", count(u.GetRotateAfterEncryptions())},
	}
}

// keyUseAmended describes the amendment of key gkid's use policy from cur
// to next: the settings it changes, old -> new, or "unchanged".
func keyUseAmended(gkid string, cur, next *cofferv1.KeyUsePolicy) string {
	return "amended use policy of key " + gkid + ": " + changeList(changes(useSettings("use_policy", cur), useSettings("use_policy", next)))
}

// cacheSettings is what a client cache policy decides, in a fixed order.
func cacheSettings(p *cofferv1.ClientCachePolicy) []setting {
	uses := "none"
	if n := p.GetMaxUses(); n > 0 {
		uses = strconv.FormatUint(uint64(n), 10)
	}
	return []setting{
		{"ttl", p.GetTtl().AsDuration().String()},
		{"max_entries", strconv.FormatUint(uint64(p.GetMaxEntries()), 10)},
		{"max_uses", uses},
		{"allowed_operations", bracketed(p.GetAllowedOperations())},
		{"persist", strconv.FormatBool(p.GetPersist())},
	}
}

// cachePolicyChanged describes SetCachePolicy for whose ("client NAME" or
// "the cluster default"): a new policy with its settings, a change with the
// settings it changes, or a clear (next nil).
func cachePolicyChanged(whose string, cur, next *cofferv1.ClientCachePolicy) string {
	switch {
	case next == nil && whose == "the cluster default":
		return "cleared cache policy of the cluster default: the built-in default applies"
	case next == nil:
		return "cleared cache policy of " + whose + ": the cluster default applies"
	case cur == nil:
		return "set cache policy of " + whose + ": " + listed(cacheSettings(next))
	}
	return "set cache policy of " + whose + ": " + changeList(changes(cacheSettings(cur), cacheSettings(next)))
}

// cachesFlushed describes FlushCaches with the caller's reason.
func cachesFlushed(reason string) string {
	return "ordered every client to drop its key cache" + reasonSuffix(reason)
}

// durationOrNone shows a duration where 0 means none.
func durationOrNone(n int64) string {
	if n <= 0 {
		return "none"
	}
	return time.Duration(n).String()
}

// anyIfEmpty shows a list where empty means no restriction.
func anyIfEmpty(vs []string) string {
	if len(vs) == 0 {
		return "any"
	}
	return bracketed(vs)
}

func timeOrNone(t *timestamppb.Timestamp) string {
	if t == nil {
		return "none"
	}
	return t.AsTime().UTC().Format(time.RFC3339Nano)
}

// policyCreated describes a new policy by its settings.
func policyCreated(p *cofferv1.PolicyRecord) string {
	return "created policy " + p.GetName() + ": " + listed(policySettings(p))
}

// policyUpdated describes an update of cur to next: the settings it
// changes, old -> new, which bind keys created from now on only (existing
// keys keep what they copied), or "unchanged".
func policyUpdated(cur, next *cofferv1.PolicyRecord) string {
	cs := changes(policySettings(cur), policySettings(next))
	if len(cs) == 0 {
		return "updated policy " + next.GetName() + ": unchanged"
	}
	return "updated policy " + next.GetName() + " for keys created from now on: " + changeList(cs)
}

// validReason checks a caller's free-text reason, which an audit entry
// records: valid UTF-8, at most max bytes, and no control or formatting
// characters (which could make one entry display as another).
func validReason(reason string, max int) error {
	if len(reason) > max {
		return fmt.Errorf("%w: reason is %d bytes, at most %d", ErrInvalidArgument, len(reason), max)
	}
	if !utf8.ValidString(reason) {
		return fmt.Errorf("%w: reason is not valid UTF-8", ErrInvalidArgument)
	}
	for _, r := range reason {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w: reason holds a control or formatting character", ErrInvalidArgument)
		}
	}
	return nil
}
