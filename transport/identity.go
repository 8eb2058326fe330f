package transport

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Kind is the role an identity plays in a Coffer deployment.
type Kind string

const (
	// KindNode identifies a cluster member. Node certificates may serve
	// (gRPC and Raft) and act as clients (Raft, forwarding).
	KindNode Kind = "node"
	// KindClient identifies an API caller. Client certificates may only act
	// as TLS clients and are never accepted on the Raft port.
	KindClient Kind = "client"
)

// URIScheme is the scheme of the URI SAN that carries a Coffer identity.
const URIScheme = "coffer"

// MaxNameLen is the longest identity name accepted.
const MaxNameLen = 64

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k == KindNode || k == KindClient }

// Identity is who a certificate speaks for. It is derived only from the
// certificate's coffer:// URI SAN; the subject is informational.
type Identity struct {
	Kind Kind
	Name string
}

// String returns "<kind>:<name>", e.g. "node:n1" or "client:admin".
// ParseIdentity is its inverse.
func (i Identity) String() string { return string(i.Kind) + ":" + i.Name }

// URI returns the URI SAN form, e.g. coffer://node/n1.
func (i Identity) URI() *url.URL {
	return &url.URL{Scheme: URIScheme, Host: string(i.Kind), Path: "/" + i.Name}
}

// Validate checks the kind and the name: 1-64 characters of [A-Za-z0-9._-],
// and not "." or "..".
func (i Identity) Validate() error {
	if !i.Kind.Valid() {
		return fmt.Errorf("%w: unknown kind %q", ErrInvalidIdentity, i.Kind)
	}
	return validateName(i.Name)
}

// IsNode reports whether i is a cluster node identity.
func (i Identity) IsNode() bool { return i.Kind == KindNode }

func validateName(name string) error {
	if len(name) == 0 || len(name) > MaxNameLen {
		return fmt.Errorf("%w: name must be 1-%d characters, got %d", ErrInvalidIdentity, MaxNameLen, len(name))
	}
	if name == "." || name == ".." {
		return fmt.Errorf("%w: name %q is reserved", ErrInvalidIdentity, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("%w: name contains invalid byte %q at offset %d", ErrInvalidIdentity, c, i)
		}
	}
	return nil
}

// ParseIdentity parses the "<kind>:<name>" form produced by Identity.String.
func ParseIdentity(s string) (Identity, error) {
	kind, name, ok := strings.Cut(s, ":")
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q is not of the form kind:name", ErrInvalidIdentity, s)
	}
	id := Identity{Kind: Kind(kind), Name: name}
	if err := id.Validate(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// IdentityFromURI parses a coffer://<kind>/<name> URI. Anything beyond the
// scheme, the kind as host and a single path segment (user info, port,
// query, fragment, escapes, further segments) is rejected.
func IdentityFromURI(u *url.URL) (Identity, error) {
	if u == nil {
		return Identity{}, fmt.Errorf("%w: nil URI", ErrInvalidIdentity)
	}
	if !strings.EqualFold(u.Scheme, URIScheme) {
		return Identity{}, fmt.Errorf("%w: scheme %q is not %q", ErrInvalidIdentity, u.Scheme, URIScheme)
	}
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery ||
		u.Fragment != "" || u.RawFragment != "" || u.RawPath != "" || u.OmitHost {
		return Identity{}, fmt.Errorf("%w: URI %q has extra components", ErrInvalidIdentity, u.String())
	}
	if !strings.HasPrefix(u.Path, "/") {
		return Identity{}, fmt.Errorf("%w: URI %q has no name", ErrInvalidIdentity, u.String())
	}
	id := Identity{Kind: Kind(u.Host), Name: u.Path[1:]}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("URI %q: %w", u.String(), err)
	}
	return id, nil
}

// IdentityFromCert returns the identity carried by c's coffer:// URI SAN.
// Other URI schemes are ignored. A certificate with no coffer:// URI yields
// ErrNoIdentity; one with several, or a malformed one, ErrInvalidIdentity.
//
// IdentityFromCert does not verify c; callers must only pass certificates
// from a verified chain (see IdentityFromContext).
func IdentityFromCert(c *x509.Certificate) (Identity, error) {
	if c == nil {
		return Identity{}, fmt.Errorf("%w: no certificate", ErrNoIdentity)
	}
	var found *url.URL
	for _, u := range c.URIs {
		if u == nil || !strings.EqualFold(u.Scheme, URIScheme) {
			continue
		}
		if found != nil {
			return Identity{}, fmt.Errorf("%w: certificate carries more than one %s:// URI", ErrInvalidIdentity, URIScheme)
		}
		found = u
	}
	if found == nil {
		return Identity{}, fmt.Errorf("%w: certificate carries no %s:// URI", ErrNoIdentity, URIScheme)
	}
	return IdentityFromURI(found)
}

// IdentityFromContext returns the identity of the gRPC peer in ctx, taken
// from the leaf of its verified TLS chain. It returns ErrNoIdentity when the
// connection is not TLS or the peer presented no verified certificate.
func IdentityFromContext(ctx context.Context) (Identity, error) {
	_, id, err := PeerFromContext(ctx)
	return id, err
}

// PeerFromContext returns the verified leaf certificate of the gRPC peer and
// the identity it carries.
func PeerFromContext(ctx context.Context) (*x509.Certificate, Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p == nil {
		return nil, Identity{}, fmt.Errorf("%w: no peer in context", ErrNoIdentity)
	}
	var info credentials.TLSInfo
	switch ai := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		info = ai
	case *credentials.TLSInfo:
		if ai == nil {
			return nil, Identity{}, fmt.Errorf("%w: peer is not using TLS", ErrNoIdentity)
		}
		info = *ai
	default:
		return nil, Identity{}, fmt.Errorf("%w: peer is not using TLS", ErrNoIdentity)
	}
	id, err := identityFromState(info.State.VerifiedChains)
	if err != nil {
		return nil, Identity{}, err
	}
	return info.State.VerifiedChains[0][0], id, nil
}

// identityFromState takes the identity from the leaf of the first verified
// chain. Unverified peer certificates are never consulted.
func identityFromState(chains [][]*x509.Certificate) (Identity, error) {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return Identity{}, fmt.Errorf("%w: peer presented no verified certificate", ErrNoIdentity)
	}
	return IdentityFromCert(chains[0][0])
}
