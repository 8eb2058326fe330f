package client

import (
	"errors"
	"fmt"
	"slices"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// ErrKeyUse reports that a key's use policy forbids a use: an operation the
// policy does not list, or a time outside its validity window.
var ErrKeyUse = errors.New("client: the key's use policy forbids this use")

// CheckUse enforces a key's use policy locally, the way every node enforces
// it before releasing the key. The server returns the policy with every
// key; an application that holds key material (for instance to encrypt with
// it later) should call CheckUse before each use, since a key may expire
// while held. op is an operation name ("get", "encrypt", "decrypt", ...).
func CheckUse(md *cofferv1.KeyMetadata, op string, now time.Time) error {
	u := md.GetUsePolicy()
	if u == nil {
		return nil
	}
	if ops := u.GetOperations(); len(ops) > 0 && !slices.Contains(ops, op) {
		return fmt.Errorf("%w: key %s may be used for %v, not %s", ErrKeyUse, md.GetGkid(), ops, op)
	}
	if nb := u.GetNotBefore(); nb != nil && now.Before(nb.AsTime()) {
		return fmt.Errorf("%w: key %s is not valid before %s", ErrKeyUse, md.GetGkid(), nb.AsTime().UTC().Format(time.RFC3339))
	}
	if na := u.GetNotAfter(); na != nil && !now.Before(na.AsTime()) {
		return fmt.Errorf("%w: key %s expired at %s", ErrKeyUse, md.GetGkid(), na.AsTime().UTC().Format(time.RFC3339))
	}
	return nil
}
