package authz

import (
	"strconv"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/ciphertext"
)

// Key versions. A key's material has versions: rotation adds one, new
// encryptions use the newest, older ones still decrypt until retired. Each
// encryption under a version draws a random 96-bit AES-GCM nonce, and NIST
// SP 800-38D (8.3) bounds those to 2^32 per key: the state machine counts
// granted encryptions per version, DecideKeyRead refuses past the limit,
// and the leader rotates keys before they reach it.

// NonceBound is the number of random nonces one version may draw.
const NonceBound = ciphertext.MaxEncryptionsPerKey

// encryptionMargin is kept free below NonceBound: encryptions decided on a
// node's own state (stale reads) are counted when their entries are
// applied, so a few may pass the limit; far fewer than this.
const encryptionMargin = 1 << 24

// AutoRotateAt is the count at which the leader rotates a key whose use
// policy sets no lower rotate_after_encryptions.
const AutoRotateAt = NonceBound - 1<<28

// NewestVersion is the version of rec's wrapped material: 1 for a key
// never rotated.
func NewestVersion(rec *cofferv1.KeyRecord) uint32 { return max(rec.GetVersion(), 1) }

// NewestVersionCreated is when rec's newest version was created.
func NewestVersionCreated(rec *cofferv1.KeyRecord) time.Time {
	if t := rec.GetVersionCreatedUnixNano(); t != 0 {
		return time.Unix(0, t)
	}
	return time.Unix(0, rec.GetCreatedUnixNano())
}

// OlderVersion returns rec's older version v, nil if it has none.
func OlderVersion(rec *cofferv1.KeyRecord, v uint32) *cofferv1.KeyVersionRecord {
	for _, x := range rec.GetVersions() {
		if x.GetVersion() == v {
			return x
		}
	}
	return nil
}

// EncryptionLimit is how many encryptions one version of rec may do: its use
// policy's max_encryptions, and never more than the nonce bound less a
// margin.
func EncryptionLimit(rec *cofferv1.KeyRecord) uint64 {
	limit := NonceBound - encryptionMargin
	if m := rec.GetUsePolicy().GetMaxEncryptions(); m != 0 && m < limit {
		limit = m
	}
	return limit
}

// RotationDue reports whether the leader should rotate rec now, after
// encryptions uses of its newest version, and why: its use policy's
// rotation period or count, or the nonce bound coming near. Only an active
// key is rotated.
func RotationDue(rec *cofferv1.KeyRecord, encryptions uint64, now time.Time) (bool, string) {
	if KeyStateAt(rec, now) != cofferv1.KeyState_KEY_STATE_ACTIVE {
		return false, ""
	}
	up := rec.GetUsePolicy()
	if p := up.GetRotationPeriod(); p != nil && p.AsDuration() > 0 && !now.Before(NewestVersionCreated(rec).Add(p.AsDuration())) {
		return true, "version " + strconv.FormatUint(uint64(NewestVersion(rec)), 10) + " is older than the rotation period " + p.AsDuration().String()
	}
	at := AutoRotateAt
	if n := up.GetRotateAfterEncryptions(); n != 0 && n < at {
		at = n
	}
	if m := up.GetMaxEncryptions(); m != 0 && m < at {
		// Rotate before the hard limit refuses encryptions.
		at = m
	}
	if encryptions >= at {
		return true, "version " + strconv.FormatUint(uint64(NewestVersion(rec)), 10) + " did " + strconv.FormatUint(encryptions, 10) + " encryptions"
	}
	return false, ""
}

// versionRefusal checks the version a use names against rec: the newest,
// or an older one not retired. It returns the refusal's words, or "".
func versionRefusal(rec *cofferv1.KeyRecord, gkid string, v uint32) string {
	newest := NewestVersion(rec)
	if v == 0 || v == newest {
		return ""
	}
	if o := OlderVersion(rec, v); o != nil {
		if o.GetRetiredUnixNano() != 0 {
			return "version " + strconv.FormatUint(uint64(v), 10) + " of key " + display(gkid, 64) + " was retired; its material is gone"
		}
		return ""
	}
	return "key " + display(gkid, 64) + " has no version " + strconv.FormatUint(uint64(v), 10) + "; its newest is " + strconv.FormatUint(uint64(newest), 10)
}
