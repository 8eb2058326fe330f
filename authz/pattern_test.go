package authz

import (
	"errors"
	"strings"
	"testing"
)

func TestPattern_Match(t *testing.T) {
	tests := []struct {
		pattern  string
		resource string
		want     bool
	}{
		// exact
		{"payments/eu/card-keys", "payments/eu/card-keys", true},
		{"payments/eu/card-keys", "payments/eu/card-key", false},
		{"payments/eu/card-keys", "payments/eu/card-keys/x", false},
		{"payments/eu/card-keys", "Payments/eu/card-keys", false},
		{"payments/eu/card-keys", "", false},
		{"orders", "orders", true},
		{"orders", "orders/", false},
		// "*": exactly one non-empty segment
		{"payments/*/card-keys", "payments/eu/card-keys", true},
		{"payments/*/card-keys", "payments/us/card-keys", true},
		{"payments/*/card-keys", "payments/card-keys", false},
		{"payments/*/card-keys", "payments/eu/x/card-keys", false},
		{"payments/*/card-keys", "payments//card-keys", false},
		{"*", "orders", true},
		{"*", "db/orders", false},
		{"*", "", false},
		{"*", "/", false},
		{"*/*", "db/orders", true},
		{"*/*", "db", false},
		{"*/card-keys", "eu/card-keys", true},
		{"*/card-keys", "card-keys", false},
		{"*/card-keys", "a/b/card-keys", false},
		// "**": zero or more segments
		{"**", "", true},
		{"**", "a", true},
		{"**", "a/b/c", true},
		{"**", "/", true},
		{"**", "a//b", true},
		{"**/**", "a/b", true},
		{"payments/**", "payments", true},
		{"payments/**", "payments/eu", true},
		{"payments/**", "payments/eu/card-keys", true},
		{"payments/**", "payments/", true},
		{"payments/**", "payments-old", false},
		{"payments/**", "payments-old/eu", false},
		{"payments/**", "old/payments/eu", false},
		{"payments/**", "", false},
		{"**/card-keys", "card-keys", true},
		{"**/card-keys", "payments/eu/card-keys", true},
		{"**/card-keys", "payments/eu/card-keys/x", false},
		{"**/card-keys", "payments/eu/old-card-keys", false},
		{"a/**/z", "a/z", true},
		{"a/**/z", "a/b/z", true},
		{"a/**/z", "a/b/c/z", true},
		{"a/**/z", "a/b/c/z/y", false},
		{"a/**/z", "a/z/z", true},
		{"a/**/z", "z/a/z", false},
		{"a/**/b/**/c", "a/b/c", true},
		{"a/**/b/**/c", "a/x/b/y/c", true},
		{"a/**/b/**/c", "a/b/x/b/c/c", true},
		{"a/**/b/**/c", "a/c/b", false},
		{"**/*/x", "x", false},
		{"**/*/x", "a/x", true},
		{"**/*/x", "a/b/x", true},
		{"**/*", "", false},
		{"**/*", "a", true},
		{"*/**", "a", true},
		{"*/**", "", false},
		// no normalisation; special characters are literal
		{"a/./b", "a/./b", true},
		{"a/./b", "a/b", false},
		{"a/../b", "b", false},
		{"ключи/eu", "ключи/eu", true},
		{"with space/x", "with space/x", true},
		{"a?b/[c]", "a?b/[c]", true},
		// empty segments in resources match only "**"
		{"a/*/b", "a//b", false},
		{"a/**/b", "a//b", true},
		{"*/a", "/a", false},
		{"**/a", "/a", true},
	}
	for _, tt := range tests {
		p, err := CompilePattern(tt.pattern)
		if err != nil {
			t.Fatalf("CompilePattern(%q): %v", tt.pattern, err)
		}
		if got := p.Match(tt.resource); got != tt.want {
			t.Errorf("%q.Match(%q) = %v, want %v", tt.pattern, tt.resource, got, tt.want)
		}
		if got := refMatch(tt.pattern, tt.resource); got != tt.want {
			t.Errorf("refMatch(%q, %q) = %v, want %v (reference disagrees with the table)", tt.pattern, tt.resource, got, tt.want)
		}
	}
}

func TestCompilePattern_Errors(t *testing.T) {
	bad := []string{
		"",
		"/",
		"/a",
		"a/",
		"a//b",
		"card-*",
		"a/*b",
		"***",
		"a/**b/c",
		"a/b**",
		"a\x00b",
		"a\nb",
		"a\x7fb",
		"a\u0085b", // C1 control
		"\xff",
		strings.Repeat("a", MaxPatternLen+1),
	}
	for _, s := range bad {
		if _, err := CompilePattern(s); !errors.Is(err, ErrInvalidPattern) {
			t.Errorf("CompilePattern(%q) = %v, want ErrInvalidPattern", s, err)
		}
	}
	good := []string{"*", "**", "a", "a/b", "a/*", "a/**", "**/a", "a/**/b", "a.b/c_d/e-f", strings.Repeat("a", MaxPatternLen)}
	for _, s := range good {
		p, err := CompilePattern(s)
		if err != nil {
			t.Errorf("CompilePattern(%q): %v", s, err)
			continue
		}
		if p.String() != s {
			t.Errorf("String() = %q, want %q", p.String(), s)
		}
	}
}

func TestPattern_MatchesAll(t *testing.T) {
	for s, want := range map[string]bool{"**": true, "**/**": true, "*": false, "a/**": false, "**/a": false} {
		if got := MustCompilePattern(s).MatchesAll(); got != want {
			t.Errorf("%q.MatchesAll() = %v, want %v", s, got, want)
		}
	}
	var zero Pattern
	if zero.Match("") || zero.Match("a") || zero.MatchesAll() {
		t.Error("the zero Pattern matches something")
	}
}

func TestPattern_MatchDoesNotAllocate(t *testing.T) {
	p := MustCompilePattern("a/**/b/*/c/**")
	allocs := testing.AllocsPerRun(100, func() {
		p.Match("a/x/y/b/q/c/d/e")
		p.Match("a/x/y/b/q/d/e")
	})
	if allocs != 0 {
		t.Errorf("Match allocates %v times per run", allocs)
	}
}

// refMatch is a slow, obviously correct reference matcher over split
// segments, used to cross-check Match.
func refMatch(pattern, resource string) bool {
	return refSegs(strings.Split(pattern, "/"), strings.Split(resource, "/"))
}

func refSegs(p, r []string) bool {
	if len(p) == 0 {
		return len(r) == 0
	}
	switch p[0] {
	case "**":
		for i := 0; i <= len(r); i++ {
			if refSegs(p[1:], r[i:]) {
				return true
			}
		}
		return false
	case "*":
		return len(r) > 0 && r[0] != "" && refSegs(p[1:], r[1:])
	}
	return len(r) > 0 && r[0] == p[0] && refSegs(p[1:], r[1:])
}

func FuzzPatternMatch(f *testing.F) {
	seeds := [][2]string{
		{"payments/**", "payments/eu/card-keys"},
		{"payments/*/card-keys", "payments/eu/card-keys"},
		{"a/**/b/**/c", "a/b/x/b/c/c"},
		{"**", ""},
		{"*", "orders"},
		{"exact/path", "exact/path"},
		{"a/**/z", "a//z"},
		{"**/*/x", "/x"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, resource string) {
		p, err := CompilePattern(pattern)
		if err != nil {
			if !errors.Is(err, ErrInvalidPattern) {
				t.Fatalf("CompilePattern(%q) error %v does not wrap ErrInvalidPattern", pattern, err)
			}
			return
		}
		got := p.Match(resource)
		if !strings.Contains(pattern, "*") {
			if got != (resource == pattern) {
				t.Fatalf("exact pattern %q: Match(%q) = %v", pattern, resource, got)
			}
			if !p.Match(pattern) {
				t.Fatalf("exact pattern %q does not match itself", pattern)
			}
		}
		if p.MatchesAll() && !got {
			t.Fatalf("%q matches all but not %q", pattern, resource)
		}
		// Keep the exponential reference to small inputs.
		if strings.Count(pattern, "**") <= 4 && len(resource) <= 64 {
			if want := refMatch(pattern, resource); got != want {
				t.Fatalf("%q.Match(%q) = %v, reference says %v", pattern, resource, got, want)
			}
		}
	})
}

func TestValidateResource(t *testing.T) {
	for _, ok := range []string{"app", "app/payments", "payments/eu/card-keys", "db.orders", "a/b-c_d/e.f", "clé/données", strings.Repeat("r", MaxPatternLen)} {
		if err := ValidateResource(ok); err != nil {
			t.Errorf("ValidateResource(%q) = %v, want nil", ok, err)
		}
		if p := MustCompilePattern(ok); !p.Match(ok) {
			t.Errorf("%q is not matched by itself as a pattern", ok)
		}
	}
	for _, bad := range []string{"", "demo//app", "/demo", "demo/", "demo/*", "*", "**", "a/**", "card-*", "../../etc", "a/./b", "a/..",
		"pay\u202eslm", "a\u200bb", "a\x00b", "a\nb", "\xff", strings.Repeat("r", MaxPatternLen+1)} {
		err := ValidateResource(bad)
		if !errors.Is(err, ErrInvalidResource) {
			t.Errorf("ValidateResource(%q) = %v, want ErrInvalidResource", bad, err)
		}
	}
}
