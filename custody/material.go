package custody

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/hsmwrap"
)

// SealKey seals a new key record's material under its policy's current KEK
// and sets rec.WrappedMaterial. It sets rec.KekVersion to the policy's
// current version first, since the associated data covers it; every other
// field of rec must already hold its stored value (see recordAAD). pol must
// be the verified committed policy that rec names.
func (b *Barrier) SealKey(pol *cofferv1.PolicyRecord, rec *cofferv1.KeyRecord, material []byte) error {
	if err := b.Ready(); err != nil {
		return err
	}
	if rec.GetPolicy() != pol.GetName() {
		return fmt.Errorf("barrier: key %s names policy %q, not %q", rec.GetGkid(), rec.GetPolicy(), pol.GetName())
	}
	rec.KekVersion = pol.GetKekVersion()
	id := hsmwrap.KEKID{Policy: pol.GetName(), Version: rec.GetKekVersion()}
	if err := b.keks.ensure(b.ks, id, pol); err != nil {
		return err
	}
	out, err := b.ks.Seal(id, material, recordAAD(rec))
	b.keystoreFailed(err)
	if err != nil {
		return fmt.Errorf("seal key %s: %w", rec.GetGkid(), err)
	}
	rec.WrappedMaterial = out
	return nil
}

// OpenKey verifies a stored key record and returns its material: the
// material opens only under associated data covering every other field and
// the GKID, so a changed, swapped or moved record fails with ErrIntegrity
// (counted and logged). The policy the record names is read from state and
// verified (VerifiedPolicy). The caller wipes the material.
func (b *Barrier) OpenKey(rec *cofferv1.KeyRecord) ([]byte, error) {
	if err := b.Ready(); err != nil {
		return nil, err
	}
	id := hsmwrap.KEKID{Policy: rec.GetPolicy(), Version: rec.GetKekVersion()}
	// The policy (cached) names the committed wrapped KEK; the cache loads
	// it once per wrapped copy.
	pol, err := b.VerifiedPolicy(rec.GetPolicy())
	if err != nil {
		return nil, fmt.Errorf("%w: key %s names policy %q: %v", ErrIntegrity, rec.GetGkid(), rec.GetPolicy(), err)
	}
	if err := b.keks.ensure(b.ks, id, pol); err != nil {
		return nil, err
	}
	m, err := b.ks.Open(id, rec.GetWrappedMaterial(), recordAAD(rec))
	b.keystoreFailed(err)
	if isIntegrity(err) {
		metricIntegrityFailures.Inc()
		b.logger.Error("stored key record failed its integrity check; refusing to serve it", "gkid", rec.GetGkid())
		return nil, fmt.Errorf("%w: key %s: %w", ErrIntegrity, rec.GetGkid(), err)
	}
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", rec.GetGkid(), err)
	}
	return m, nil
}

// SealVersion seals material as the older version v of rec (a rotation
// keeps the newest version's material this way) under the policy's current
// KEK, and sets v.KekVersion and v.WrappedMaterial. rec's GKID and policy
// must hold their stored values; pol is the verified committed policy.
func (b *Barrier) SealVersion(pol *cofferv1.PolicyRecord, rec *cofferv1.KeyRecord, v *cofferv1.KeyVersionRecord, material []byte) error {
	if err := b.Ready(); err != nil {
		return err
	}
	if rec.GetPolicy() != pol.GetName() {
		return fmt.Errorf("barrier: key %s names policy %q, not %q", rec.GetGkid(), rec.GetPolicy(), pol.GetName())
	}
	v.KekVersion = pol.GetKekVersion()
	id := hsmwrap.KEKID{Policy: pol.GetName(), Version: v.GetKekVersion()}
	if err := b.keks.ensure(b.ks, id, pol); err != nil {
		return err
	}
	out, err := b.ks.Seal(id, material, versionAAD(rec, v))
	b.keystoreFailed(err)
	if err != nil {
		return fmt.Errorf("seal version %d of key %s: %w", v.GetVersion(), rec.GetGkid(), err)
	}
	v.WrappedMaterial = out
	return nil
}

// OpenKeyVersion returns the material of version n of rec (0 or the newest
// version: OpenKey). An older version opens only after the whole record
// verified (its associated data covers the version's wrapped bytes), so a
// version moved in from another record, or a record changed around it,
// fails with ErrIntegrity. A version the record does not hold, or holds
// retired, is ErrNoVersion. The caller wipes the material.
func (b *Barrier) OpenKeyVersion(rec *cofferv1.KeyRecord, n uint32) ([]byte, error) {
	if n == 0 || n == max(rec.GetVersion(), 1) {
		return b.OpenKey(rec)
	}
	var v *cofferv1.KeyVersionRecord
	for _, x := range rec.GetVersions() {
		if x.GetVersion() == n {
			v = x
		}
	}
	if v == nil || len(v.GetWrappedMaterial()) == 0 {
		return nil, fmt.Errorf("%w: key %s has no version %d", ErrNoVersion, rec.GetGkid(), n)
	}
	if err := b.VerifyKey(rec); err != nil {
		return nil, err
	}
	id := hsmwrap.KEKID{Policy: rec.GetPolicy(), Version: v.GetKekVersion()}
	pol, err := b.VerifiedPolicy(rec.GetPolicy())
	if err != nil {
		return nil, fmt.Errorf("%w: key %s names policy %q: %v", ErrIntegrity, rec.GetGkid(), rec.GetPolicy(), err)
	}
	if err := b.keks.ensure(b.ks, id, pol); err != nil {
		return nil, err
	}
	m, err := b.ks.Open(id, v.GetWrappedMaterial(), versionAAD(rec, v))
	b.keystoreFailed(err)
	if isIntegrity(err) {
		metricIntegrityFailures.Inc()
		b.logger.Error("an older version of a stored key failed its integrity check; refusing to serve it", "gkid", rec.GetGkid(), "version", n)
		return nil, fmt.Errorf("%w: key %s version %d: %w", ErrIntegrity, rec.GetGkid(), n, err)
	}
	if err != nil {
		return nil, fmt.Errorf("key %s version %d: %w", rec.GetGkid(), n, err)
	}
	return m, nil
}

// VerifyKey checks a stored key record as OpenKey does, without returning
// its material, which is wiped at once.
func (b *Barrier) VerifyKey(rec *cofferv1.KeyRecord) error {
	m, err := b.OpenKey(rec)
	clear(m)
	return err
}

// recordAAD is the associated data under which a key's material is sealed.
// It covers every field of the record except the wrapped material itself:
// the path it is stored under (the GKID), policy, resource, owner, algorithm,
// state, creation time, KEK version, revision, use and cache policy, the
// escrow copies, and the life-cycle times and compromise mark. Opening the material therefore verifies the whole record in
// the same keystore operation: a record with any field changed, a wrapped
// blob moved to another record, or a record moved to another GKID fails with
// an integrity error.
//
// The encoding is explicit (not protobuf's), so it stays stable across
// schema versions: a domain prefix, then each field in a fixed order, strings
// and bytes length-prefixed (uvarint), integers as 8 bytes big-endian.
func recordAAD(rec *cofferv1.KeyRecord) []byte {
	e := aadEncoder{b: make([]byte, 0, 256)}
	e.b = append(e.b, "coffer-key-record-v2\x00"...)
	e.str(rec.GetGkid())
	e.str(rec.GetPolicy())
	e.str(rec.GetResource())
	e.str(rec.GetOwner())
	e.u64(uint64(rec.GetAlgorithm()))
	e.u64(uint64(rec.GetState()))
	e.u64(uint64(rec.GetCreatedUnixNano()))
	e.u64(uint64(rec.GetKekVersion()))
	e.u64(rec.GetRevision())
	up := rec.GetUsePolicy()
	e.u64(uint64(len(up.GetOperations())))
	for _, op := range up.GetOperations() {
		e.str(op)
	}
	e.u64(uint64(up.GetNotBefore().AsTime().UnixNano()))
	e.u64(boolU64(up.GetNotBefore() != nil))
	e.u64(uint64(up.GetNotAfter().AsTime().UnixNano()))
	e.u64(boolU64(up.GetNotAfter() != nil))
	cp := rec.GetCachePolicy()
	e.u64(boolU64(cp.GetCacheable()))
	e.u64(uint64(cp.GetTtl().AsDuration()))
	e.u64(uint64(cp.GetMaxKeys()))
	e.u64(uint64(len(rec.GetEscrow())))
	for _, c := range rec.GetEscrow() {
		e.str(c.GetKeyId())
		e.str(c.GetScheme())
		sum := sha256.Sum256(c.GetCiphertext())
		e.bytes(sum[:])
	}
	// The life-cycle fields came after this encoding: they are encoded only
	// when one is set, so a record that never had them verifies as it was
	// sealed, and one that has them cannot lose or change them unnoticed.
	if rec.GetActivateAtUnixNano() != 0 || rec.GetStateChangedUnixNano() != 0 || rec.GetCompromised() {
		e.str("life")
		e.u64(uint64(rec.GetActivateAtUnixNano()))
		e.u64(uint64(rec.GetStateChangedUnixNano()))
		e.u64(boolU64(rec.GetCompromised()))
	}
	// So are the version fields (rotation): the newest version's number and
	// time, and each older version, its wrapped material by its hash.
	if rec.GetVersion() > 1 || rec.GetVersionCreatedUnixNano() != 0 || len(rec.GetVersions()) > 0 {
		e.str("vers")
		e.u64(uint64(rec.GetVersion()))
		e.u64(uint64(rec.GetVersionCreatedUnixNano()))
		e.u64(uint64(len(rec.GetVersions())))
		for _, v := range rec.GetVersions() {
			e.u64(uint64(v.GetVersion()))
			e.u64(uint64(v.GetCreatedUnixNano()))
			e.u64(uint64(v.GetKekVersion()))
			sum := sha256.Sum256(v.GetWrappedMaterial())
			e.bytes(sum[:])
			e.u64(uint64(v.GetRetiredUnixNano()))
			e.u64(uint64(v.GetEscrowPurgeUnixNano()))
			e.u64(uint64(len(v.GetEscrow())))
			for _, c := range v.GetEscrow() {
				e.str(c.GetKeyId())
				e.str(c.GetScheme())
				sum := sha256.Sum256(c.GetCiphertext())
				e.bytes(sum[:])
			}
		}
	}
	// A destroyed key's escrow purge time has no material to guard it; it
	// is covered for a record that has material all the same.
	if t := rec.GetEscrowPurgeUnixNano(); t != 0 {
		e.str("purge")
		e.u64(uint64(t))
	}
	return e.b
}

// versionAAD is the associated data under which an older version's material
// is sealed: the GKID, policy and the version's own fields. The record's
// associated data covers the version's wrapped bytes (by hash), so a
// version opens only after the record holding it verified (OpenKeyVersion).
func versionAAD(rec *cofferv1.KeyRecord, v *cofferv1.KeyVersionRecord) []byte {
	e := aadEncoder{b: make([]byte, 0, 128)}
	e.b = append(e.b, "coffer-key-version-v1\x00"...)
	e.str(rec.GetGkid())
	e.str(rec.GetPolicy())
	e.u64(uint64(v.GetVersion()))
	e.u64(uint64(v.GetCreatedUnixNano()))
	e.u64(uint64(v.GetKekVersion()))
	return e.b
}

type aadEncoder struct{ b []byte }

func (e *aadEncoder) str(s string) {
	e.b = binary.AppendUvarint(e.b, uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *aadEncoder) bytes(p []byte) {
	e.b = binary.AppendUvarint(e.b, uint64(len(p)))
	e.b = append(e.b, p...)
}

func (e *aadEncoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }

func boolU64(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
