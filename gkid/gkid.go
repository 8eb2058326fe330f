// Package gkid defines Coffer's Global Key IDs.
//
// A GKID names one key across every Coffer cluster and site. It has the form
// "k1-" + cluster + "-" + random, where:
//
//   - "k1" is the format version.
//   - cluster is the cluster id: 10 characters of lowercase base32 (RFC 4648
//     alphabet, no padding), 50 random bits chosen once when the cluster is
//     initialised. It tells which cluster minted the key.
//   - random is 26 characters of lowercase base32: 128 bits from the
//     keystore's RNG (the HSM's when one is configured), drawn by the leader
//     for each key. Collisions are negligible (birthday bound 2^64 per
//     cluster) and the leader refuses one that exists anyway.
//
// A GKID is 40 characters, URL-safe, and carries no secret: the random part is
// independent of the key material, and nothing about the key's policy,
// resource or owner can be read from it.
package gkid

import (
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
)

// Length is the exact length of a GKID.
const Length = 40

// ClusterIDLength is the length of a cluster id.
const ClusterIDLength = 10

// RandomBytes is how many random bytes New needs.
const RandomBytes = 16

// ClusterIDRandomBytes is how many random bytes NewClusterID needs.
const ClusterIDRandomBytes = 7

// ErrMalformed reports a string that is not a GKID or cluster id.
var ErrMalformed = errors.New("gkid: malformed")

var enc = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewClusterID forms a cluster id from ClusterIDRandomBytes random bytes.
func NewClusterID(random []byte) (string, error) {
	if len(random) != ClusterIDRandomBytes {
		return "", fmt.Errorf("%w: cluster id needs %d random bytes, got %d", ErrMalformed, ClusterIDRandomBytes, len(random))
	}
	return enc.EncodeToString(random)[:ClusterIDLength], nil
}

// New forms a GKID from a cluster id and RandomBytes random bytes.
func New(clusterID string, random []byte) (string, error) {
	if err := ValidateClusterID(clusterID); err != nil {
		return "", err
	}
	if len(random) != RandomBytes {
		return "", fmt.Errorf("%w: gkid needs %d random bytes, got %d", ErrMalformed, RandomBytes, len(random))
	}
	return "k1-" + clusterID + "-" + enc.EncodeToString(random), nil
}

// Validate reports whether s is a well-formed GKID.
func Validate(s string) error {
	if len(s) != Length {
		return fmt.Errorf("%w: gkid must be %d characters, got %d", ErrMalformed, Length, len(s))
	}
	if !strings.HasPrefix(s, "k1-") || s[13] != '-' {
		return fmt.Errorf("%w: gkid must look like k1-<10 chars>-<26 chars>", ErrMalformed)
	}
	if err := ValidateClusterID(s[3:13]); err != nil {
		return err
	}
	if !isBase32(s[14:]) {
		return fmt.Errorf("%w: gkid has characters outside a-z2-7", ErrMalformed)
	}
	return nil
}

// ClusterOf returns the cluster id part of a valid GKID.
func ClusterOf(s string) (string, error) {
	if err := Validate(s); err != nil {
		return "", err
	}
	return s[3:13], nil
}

// ValidateClusterID reports whether s is a well-formed cluster id.
func ValidateClusterID(s string) error {
	if len(s) != ClusterIDLength || !isBase32(s) {
		return fmt.Errorf("%w: cluster id must be %d characters of a-z2-7", ErrMalformed, ClusterIDLength)
	}
	return nil
}

func isBase32(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}
