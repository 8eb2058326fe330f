package client

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func TestCheckUse(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	md := func(u *cofferv1.KeyUsePolicy) *cofferv1.KeyMetadata {
		return &cofferv1.KeyMetadata{Gkid: "k", UsePolicy: u}
	}
	cases := []struct {
		name string
		md   *cofferv1.KeyMetadata
		op   string
		ok   bool
	}{
		{"no policy", md(nil), "get", true},
		{"any operation", md(&cofferv1.KeyUsePolicy{}), "encrypt", true},
		{"listed operation", md(&cofferv1.KeyUsePolicy{Operations: []string{"get", "encrypt"}}), "encrypt", true},
		{"unlisted operation", md(&cofferv1.KeyUsePolicy{Operations: []string{"get"}}), "decrypt", false},
		{"inside window", md(&cofferv1.KeyUsePolicy{NotBefore: timestamppb.New(now.Add(-time.Hour)), NotAfter: timestamppb.New(now.Add(time.Hour))}), "get", true},
		{"not yet valid", md(&cofferv1.KeyUsePolicy{NotBefore: timestamppb.New(now.Add(time.Minute))}), "get", false},
		{"expired", md(&cofferv1.KeyUsePolicy{NotAfter: timestamppb.New(now)}), "get", false},
	}
	for _, c := range cases {
		err := CheckUse(c.md, c.op, now)
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, ErrKeyUse)) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}
