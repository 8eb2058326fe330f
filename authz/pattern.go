package authz

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxPatternLen is the longest resource pattern accepted, in bytes. It
// equals the longest resource the service accepts.
const MaxPatternLen = 256

// MaxResourceLen is the longest resource accepted, in bytes.
const MaxResourceLen = MaxPatternLen

// PatternAll is the pattern that matches every resource, including the
// empty one.
const PatternAll = "**"

type segKind uint8

const (
	segLiteral segKind = iota // matches a segment equal to lit
	segOne                    // "*": matches exactly one non-empty segment
	segAny                    // "**": matches zero or more segments
)

type segment struct {
	kind segKind
	lit  string
}

// Pattern is a compiled resource pattern. Resources are '/'-separated
// paths such as "payments/eu/card-keys"; a pattern is a path whose segments
// are either literal or one of two wildcards:
//
//	payments/eu/card-keys   a literal segment matches a segment equal to it
//	payments/*/card-keys    "*" matches exactly one non-empty segment
//	payments/**             "**" matches zero or more segments of any content
//	**                      every resource, including "" (see PatternAll)
//	*                       every resource of exactly one segment ("orders",
//	                        not "db/orders")
//
// So "payments/**" matches "payments", "payments/eu" and
// "payments/eu/card-keys", but not "payments-old"; "*/card-keys" matches
// "eu/card-keys" but not "card-keys" or "a/b/card-keys"; "a/**/z" matches
// "a/z" and "a/b/c/z".
//
// Matching is byte-exact and case-sensitive, and resources are not
// normalised: "." and ".." are ordinary literal segments, and an empty
// segment of a resource ("a//b", "/a", "a/") is matched only by "**". The
// empty resource (requests without one, such as a list of every key)
// matches only patterns that match everything, such as "**".
//
// A Pattern is immutable and safe for concurrent use. Match never
// allocates. The zero Pattern matches nothing.
type Pattern struct {
	src   string
	segs  []segment
	all   bool // every segment is "**": matches every resource
	exact bool // no wildcard: matches src only
}

// CompilePattern parses and validates a resource pattern. A pattern is 1 to
// MaxPatternLen bytes of valid UTF-8 without control characters; it is
// split at '/' into segments, none of which may be empty (so no leading,
// trailing or doubled '/'); '*' may appear only as a whole segment "*" or
// "**" (so "card-*" and "***" are refused). Errors wrap ErrInvalidPattern.
func CompilePattern(s string) (Pattern, error) {
	if err := checkPatternText(s); err != nil {
		return Pattern{}, err
	}
	p := Pattern{src: s, all: true, exact: true}
	p.segs = make([]segment, 0, strings.Count(s, "/")+1)
	for seg := range strings.SplitSeq(s, "/") {
		switch {
		case seg == "":
			return Pattern{}, fmt.Errorf("%w: %s has an empty segment (leading, trailing or doubled '/')", ErrInvalidPattern, display(s, 64))
		case seg == "**":
			p.exact = false
			if n := len(p.segs); n > 0 && p.segs[n-1].kind == segAny {
				continue // "**/**" is "**"
			}
			p.segs = append(p.segs, segment{kind: segAny})
		case seg == "*":
			p.exact, p.all = false, false
			p.segs = append(p.segs, segment{kind: segOne})
		case strings.Contains(seg, "*"):
			return Pattern{}, fmt.Errorf("%w: %s: '*' and '**' must be whole segments", ErrInvalidPattern, display(s, 64))
		default:
			p.all = false
			p.segs = append(p.segs, segment{kind: segLiteral, lit: seg})
		}
	}
	return p, nil
}

func checkPatternText(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty pattern", ErrInvalidPattern)
	}
	if len(s) > MaxPatternLen {
		return fmt.Errorf("%w: pattern is %d bytes, the limit is %d", ErrInvalidPattern, len(s), MaxPatternLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: pattern is not valid UTF-8", ErrInvalidPattern)
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("%w: pattern contains a control or formatting character (such as a bidirectional override)", ErrInvalidPattern)
		}
	}
	return nil
}

// ValidateResource checks the name of a key's resource. A resource is 1 to
// MaxResourceLen bytes of valid UTF-8, '/'-separated segments none of which
// is empty (no leading, trailing or doubled '/'), "." or ".."; it contains
// no '*' (so no resource reads as an ACL pattern, and every resource is the
// exact pattern that matches it alone), no control characters and no
// formatting characters (bidirectional overrides, zero-width characters),
// which would let one name display as another. Errors wrap
// ErrInvalidResource.
func ValidateResource(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: a resource is required", ErrInvalidResource)
	case len(s) > MaxResourceLen:
		return fmt.Errorf("%w: resource is %d bytes, the limit is %d", ErrInvalidResource, len(s), MaxResourceLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: resource is not valid UTF-8", ErrInvalidResource)
	case strings.Contains(s, "*"):
		return fmt.Errorf("%w: %s contains '*', which only ACL patterns may use", ErrInvalidResource, display(s, 64))
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("%w: %s contains a control or formatting character (such as a bidirectional override)", ErrInvalidResource, display(s, 64))
		}
	}
	for seg := range strings.SplitSeq(s, "/") {
		switch seg {
		case "":
			return fmt.Errorf("%w: %s has an empty segment (leading, trailing or doubled '/')", ErrInvalidResource, display(s, 64))
		case ".", "..":
			return fmt.Errorf("%w: %s has a %q segment", ErrInvalidResource, display(s, 64), seg)
		}
	}
	return nil
}

// MustCompilePattern is CompilePattern for patterns known to be valid, such
// as constants; it panics on an error.
func MustCompilePattern(s string) Pattern {
	p, err := CompilePattern(s)
	if err != nil {
		panic(err)
	}
	return p
}

// String returns the pattern as written.
func (p Pattern) String() string { return p.src }

// MatchesAll reports whether p matches every resource (it is "**").
func (p Pattern) MatchesAll() bool { return p.all }

// Match reports whether resource matches p. It does not allocate, and it
// runs in O(len(p) × len(resource)) time at worst.
func (p Pattern) Match(resource string) bool {
	switch {
	case p.all:
		return true
	case p.exact:
		return resource == p.src
	case len(p.segs) == 0:
		return false // zero Pattern
	}
	// Segment-wise glob with one backtracking point: the most recent "**".
	// Positions in resource are segment starts; end means no segment left.
	// Only the most recent "**" needs to be retried: extending an earlier one
	// can never produce a match that extending the later one cannot.
	segs := p.segs
	end := len(resource) + 1
	pi, ri := 0, 0
	starPi, starRi := -1, 0
	for {
		if pi < len(segs) && segs[pi].kind == segAny {
			starPi, starRi = pi, ri
			pi++
			continue
		}
		if ri == end {
			return pi == len(segs)
		}
		seg, next := segmentAt(resource, ri)
		if pi < len(segs) && segs[pi].matches(seg) {
			pi, ri = pi+1, next
			continue
		}
		if starPi < 0 {
			return false
		}
		// Let the last "**" absorb one more segment and retry after it.
		_, starRi = segmentAt(resource, starRi)
		pi, ri = starPi+1, starRi
	}
}

func (s segment) matches(seg string) bool {
	switch s.kind {
	case segLiteral:
		return seg == s.lit
	case segOne:
		return seg != ""
	}
	return true
}

// segmentAt returns the segment of r starting at byte offset i and the
// offset of the next segment, or len(r)+1 when it was the last one.
func segmentAt(r string, i int) (string, int) {
	if j := strings.IndexByte(r[i:], '/'); j >= 0 {
		return r[i : i+j], i + j + 1
	}
	return r[i:], len(r) + 1
}
