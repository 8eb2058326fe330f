package authz

import (
	"strconv"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// DecideKeyRead is the one decision on a use of one key by its GKID (get,
// describe, and the data encryption service's encrypt, decrypt and
// datakey): the state machine's Apply makes it for a linearizable request
// at its place in the log, and a node makes it on its own state for a stale
// one. rec is the stored record, nil if there is no key gkid; at is the
// request's time, for the key's use policy (operations that use the
// material: Op.UsesMaterial).
//
// In order: the caller (certificate, registration, activity: Decide's steps
// 1 to 5), whether it exists, the caller's grant on the key's resource, the
// key's life-cycle state at time at (KeyStateAt: every operation while
// active, decrypt too while deactivated or compromised, describe always), and
// for an operation that uses the material whether the key can do it (the
// data encryption service needs an AES key), the key's use policy, the
// version it names (req.KeyVersion: the newest, or an older one not
// retired) and, for an operation that encrypts, the newest version's
// encryption count (req.Encryptions against EncryptionLimit). A caller that may not read the key is not
// told whether it exists, nor its resource: a missing key and a key the
// caller holds no grant for get the same PERMISSION_DENIED and the same
// words. Only a caller granted op on every resource ("**"), who could read
// the key wherever it were, is told NOT_FOUND.
func (s *Snapshot) DecideKeyRead(req Request, gkid string, rec *cofferv1.KeyRecord, at time.Time) (cofferv1.ReadRefusal, string) {
	c, d := s.caller(req.Identity, req.CertSerial)
	if c == nil {
		if d.Code == Unauthenticated {
			return cofferv1.ReadRefusal_READ_REFUSAL_UNAUTHENTICATED, d.Reason
		}
		return cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, d.Reason
	}
	if rec == nil {
		everywhere := req
		everywhere.Resource = ""
		if c.decide(everywhere).Allowed {
			return cofferv1.ReadRefusal_READ_REFUSAL_NOT_FOUND, "key " + gkid
		}
		return cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, hiddenKey(req, gkid)
	}
	req.Resource = rec.GetResource()
	if !c.decide(req).Allowed {
		return cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, hiddenKey(req, gkid)
	}
	if st := KeyStateAt(rec, at); !stateAllows(st, req.Op) {
		return cofferv1.ReadRefusal_READ_REFUSAL_KEY_STATE, "key " + display(gkid, 64) + " is " + StateName(st) + keyStateHint(st)
	}
	if !req.Op.UsesMaterial() {
		return cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, ""
	}
	if req.Op != OpGet && !IsAES(rec.GetAlgorithm()) {
		return cofferv1.ReadRefusal_READ_REFUSAL_UNSUITABLE, "key " + display(gkid, 64) + " is " + rec.GetAlgorithm().String() + "; " + string(req.Op) + " needs an AES key"
	}
	switch u, why := CheckUse(rec, req.Op, at); u {
	case UseAllowed:
	case UseNotYetValid:
		return cofferv1.ReadRefusal_READ_REFUSAL_NOT_YET_VALID, why
	case UseExpired:
		return cofferv1.ReadRefusal_READ_REFUSAL_EXPIRED, why
	default:
		return cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED, why
	}
	if why := versionRefusal(rec, gkid, req.KeyVersion); why != "" {
		return cofferv1.ReadRefusal_READ_REFUSAL_KEY_VERSION, why
	}
	if req.Op.Encrypts() && req.Encryptions >= EncryptionLimit(rec) {
		return cofferv1.ReadRefusal_READ_REFUSAL_USES_EXHAUSTED, "version " + strconv.FormatUint(uint64(NewestVersion(rec)), 10) + " of key " + display(gkid, 64) +
			" has done " + strconv.FormatUint(req.Encryptions, 10) + " encryptions, its limit; rotate the key (coffer key rotate)"
	}
	return cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED, ""
}

// keyStateHint says what a key in state st is still good for.
func keyStateHint(st cofferv1.KeyState) string {
	switch st {
	case cofferv1.KeyState_KEY_STATE_PRE_ACTIVE:
		return "; it is used once activated"
	case cofferv1.KeyState_KEY_STATE_DEACTIVATED, cofferv1.KeyState_KEY_STATE_COMPROMISED:
		return "; it only decrypts"
	case cofferv1.KeyState_KEY_STATE_DESTROYED:
		return "; its material is gone"
	}
	return ""
}

// IsAES reports whether a is an AES key, which the data encryption service
// encrypts with.
func IsAES(a cofferv1.Algorithm) bool {
	switch a {
	case cofferv1.Algorithm_ALGORITHM_AES_128, cofferv1.Algorithm_ALGORITHM_AES_192, cofferv1.Algorithm_ALGORITHM_AES_256:
		return true
	}
	return false
}

// hiddenKey is the one refusal of a key the caller may not read, whether it
// exists or not.
func hiddenKey(req Request, gkid string) string {
	return "key " + display(gkid, 64) + " does not exist, or " + req.Identity + " holds no grant for " + string(req.Op) + " on it"
}
