package authz

import (
	"fmt"
	"math/rand/v2"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

const (
	benchClients = 1000
	benchRules   = 10000
	benchGroups  = 300
)

// benchWorld builds 1,000 clients and 10,000 rules. The client "target"
// has 20 rules: 5 of its own and 5 in each of its 3 groups; the last one
// (group tg3) is the only one granting get on "vault/deep/k1".
func benchWorld(tb testing.TB) ([]*cofferv1.ClientRecord, []*cofferv1.AclRule, []*cofferv1.RevokedCertificate) {
	tb.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	var clients []*cofferv1.ClientRecord
	var rules []*cofferv1.AclRule
	patterns := []string{"team-%d/**", "payments/*/team-%d", "db/team-%d/orders", "**/team-%d", "team-%d/*/keys/**"}
	ops := []string{"get,describe", "generate,put", "encrypt,decrypt,datakey", "list,describe", "state,destroy"}

	clients = append(clients, client("target", true, []string{"tg1", "tg2", "tg3"}, "operator"))
	for i := range 5 {
		rules = append(rules, rule(fmt.Sprintf("t-%d", i), "client:target", ops[i], fmt.Sprintf(patterns[i], 1000+i)))
	}
	for g := 1; g <= 3; g++ {
		for i := range 5 {
			p := fmt.Sprintf(patterns[i], 2000+10*g+i)
			o := ops[(i+g)%len(ops)]
			if g == 3 && i == 4 {
				p, o = "vault/**", "get"
			}
			rules = append(rules, rule(fmt.Sprintf("tg%d-%d", g, i), fmt.Sprintf("group:tg%d", g), o, p))
		}
	}
	for c := 1; c < benchClients; c++ {
		groups := []string{
			fmt.Sprintf("g%03d", rng.IntN(benchGroups)),
			fmt.Sprintf("g%03d", rng.IntN(benchGroups)),
			fmt.Sprintf("g%03d", rng.IntN(benchGroups)),
		}
		if groups[1] == groups[0] || groups[2] == groups[0] || groups[2] == groups[1] {
			groups = groups[:1]
		}
		clients = append(clients, client(fmt.Sprintf("c%04d", c), c%50 != 0, groups, "application"))
	}
	for i := 0; len(rules) < benchRules; i++ {
		subject := fmt.Sprintf("client:c%04d", 1+rng.IntN(benchClients-1))
		if i%2 == 1 {
			subject = fmt.Sprintf("group:g%03d", rng.IntN(benchGroups))
		}
		rules = append(rules, rule(fmt.Sprintf("r%05d", i), subject, ops[rng.IntN(len(ops))], fmt.Sprintf(patterns[rng.IntN(len(patterns))], rng.IntN(500))))
	}
	var revoked []*cofferv1.RevokedCertificate
	for i := range 500 {
		revoked = append(revoked, &cofferv1.RevokedCertificate{Serial: fmt.Sprintf("%x", 0x10000+i)})
	}
	return clients, rules, revoked
}

func benchSnapshot(tb testing.TB) *Snapshot {
	tb.Helper()
	clients, rules, revoked := benchWorld(tb)
	if len(clients) != benchClients || len(rules) != benchRules {
		tb.Fatalf("%d clients, %d rules", len(clients), len(rules))
	}
	s := mustSnapshot(tb, clients, rules, revoked)
	if e := s.Explain(req("client:target", OpGet, "vault/deep/k1")); len(e.Rules) != 20 || e.Decision.Rule != "tg3-4" {
		tb.Fatalf("target has %d rules, decision %+v", len(e.Rules), e.Decision)
	}
	return s
}

func TestBenchWorld_AllowDoesNotAllocate(t *testing.T) {
	s := benchSnapshot(t)
	for _, r := range []Request{
		req("client:target", OpGet, "vault/deep/k1"),
		req("client:target", OpGet, "team-1000/x"),
		req("client:target", OpClusterRead, ""),
	} {
		if d := s.Decide(r); !d.Allowed {
			t.Fatalf("%+v: %+v", r, d)
		}
		if n := testing.AllocsPerRun(1000, func() { s.Decide(r) }); n != 0 {
			t.Errorf("%+v: %v allocs", r, n)
		}
	}
}

// BenchmarkDecide measures Decide over 1,000 clients and 10,000 rules for a
// client with 20 rules across 3 groups.
func BenchmarkDecide(b *testing.B) {
	s := benchSnapshot(b)
	cases := []struct {
		name string
		req  Request
	}{
		{"allow/last-of-20-rules", req("client:target", OpGet, "vault/deep/k1")},
		{"allow/first-rule", req("client:target", OpGet, "team-1000/x")},
		{"allow/role", req("client:target", OpClusterRead, "")},
		{"deny/no-rule-of-20", req("client:target", OpGet, "elsewhere/k1")},
		{"deny/revoked", Request{Identity: "client:target", CertSerial: "10001", Op: OpGet, Resource: "vault/k"}},
		{"deny/unregistered", req("client:nobody", OpGet, "vault/k")},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s.Decide(tc.req)
			}
		})
	}
	b.Run("allow/parallel", func(b *testing.B) {
		r := req("client:target", OpGet, "vault/deep/k1")
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				s.Decide(r)
			}
		})
	})
}

// BenchmarkNewSnapshot measures the rebuild after each applied change.
func BenchmarkNewSnapshot(b *testing.B) {
	clients, rules, revoked := benchWorld(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NewSnapshot(clients, rules, revoked); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPatternMatch(b *testing.B) {
	p := MustCompilePattern("payments/**/card-keys/*")
	b.ReportAllocs()
	for b.Loop() {
		p.Match("payments/eu/west/card-keys/k1")
	}
}
