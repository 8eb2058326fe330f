package authz

import (
	"fmt"
	"slices"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// UseRefusal says why a key's use policy refuses an operation. The zero
// value allows it.
type UseRefusal uint8

const (
	// UseAllowed: the use policy allows the operation.
	UseAllowed UseRefusal = iota
	// UseOpNotAllowed: the operation is not among the policy's operations.
	UseOpNotAllowed
	// UseNotYetValid: now is before the policy's not_before.
	UseNotYetValid
	// UseExpired: now is at or after the policy's not_after.
	UseExpired
)

// CheckUse enforces a key's use policy for one operation at now. It is a
// pure function of its arguments, so every replica that applies a read at
// the same point of the log, with the same request time, decides alike. On
// refusal it returns a reason for the caller.
func CheckUse(rec *cofferv1.KeyRecord, op Op, now time.Time) (UseRefusal, string) {
	u := rec.GetUsePolicy()
	if u == nil {
		return UseAllowed, ""
	}
	if ops := u.GetOperations(); len(ops) > 0 && !slices.Contains(ops, string(op)) {
		return UseOpNotAllowed, fmt.Sprintf("the use policy of key %s does not allow %s (allowed: %v)", rec.GetGkid(), op, ops)
	}
	if nb := u.GetNotBefore(); nb != nil && now.Before(nb.AsTime()) {
		return UseNotYetValid, fmt.Sprintf("key %s may be used from %s", rec.GetGkid(), nb.AsTime().UTC().Format(time.RFC3339))
	}
	if na := u.GetNotAfter(); na != nil && !now.Before(na.AsTime()) {
		return UseExpired, fmt.Sprintf("key %s could be used until %s", rec.GetGkid(), na.AsTime().UTC().Format(time.RFC3339))
	}
	return UseAllowed, ""
}
