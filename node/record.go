package node

import (
	"crypto/sha256"
	"encoding/binary"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// recordAAD is the associated data under which a key's material is sealed.
// It covers every field of the record except the wrapped material itself:
// the path it is stored under (the GKID), policy, resource, owner, algorithm,
// state, creation time, KEK version, revision, use and cache policy, and the
// escrow copies. Opening the material therefore verifies the whole record in
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
