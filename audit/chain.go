package audit

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"unicode/utf8"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// HashLen is the length of every chain hash, checkpoint head and prev_hash:
// a SHA-256 output.
const HashLen = sha256.Size

// MaxFieldLen bounds every string field of an entry (in bytes, after UTF-8
// encoding). Validate refuses a longer one, so a committed entry is at most
// about 12 KiB.
const MaxFieldLen = 1024

// EntryDomain is hashed in front of EntryDigestInput by ChainHash. It keeps an
// entry hash from ever colliding with a hash computed for another purpose.
const EntryDomain = "coffer-audit-entry-v1\x00"

// GenesisHash returns the prev_hash of entry 1: HashLen zero bytes. The
// result is a fresh slice the caller may keep or modify.
func GenesisHash() []byte { return make([]byte, HashLen) }

// Field tags of the canonical encoding. They are the protobuf field numbers
// of AuditEntry, written in this order. hash (15) is never encoded.
const (
	tagSeq         = 1
	tagTime        = 2
	tagNode        = 3
	tagCaller      = 4
	tagOperation   = 5
	tagGKID        = 6
	tagResource    = 7
	tagPolicy      = 8
	tagClient      = 9
	tagOutcome     = 10
	tagReason      = 11
	tagRequestID   = 12
	tagConsistency = 13
	tagPrevHash    = 14
	tagDetailHMAC  = 16
	tagKeyVersion  = 17
	tagStatement   = 18
	tagSignature   = 19
)

// MaxRequestStatementLen and MaxRequestSignatureLen bound the client's
// signed statement of a request and its signature kept in an entry
// (msgsig's bounds).
const (
	MaxRequestStatementLen = 4096
	MaxRequestSignatureLen = 1024
)

// fixedEntryLen is the size of EntryDigestInput with every variable-length
// field empty: two 64-bit fields, two enums and eleven length prefixes.
const fixedEntryLen = 2*(1+8) + 2*(1+4) + 11*(1+4)

// EntryDigestInput returns the canonical encoding of e: every field except
// hash, in ascending field-number order, each present even when empty:
//
//	seq, time_unix_nano        tag(1) || 8-byte big-endian (int64 as two's complement)
//	outcome, consistency       tag(1) || 4-byte big-endian (int32 as two's complement)
//	strings and bytes          tag(1) || 4-byte big-endian length || the bytes (strings as UTF-8)
//
// The tag is the protobuf field number. The order is seq(1), time(2), node(3),
// caller(4), operation(5), gkid(6), resource(7), policy(8), client(9),
// outcome(10), reason(11), request_id(12), consistency(13), prev_hash(14),
// detail_hmac(16), then key_version(17) as tag(1) || 4-byte big-endian, only
// when it is not zero (entries written before key versions had none, and
// keep their hashes), then request_statement(18) and request_signature(19)
// as bytes, only when either is set (a signed request). The encoding is injective: two entries that differ in any
// field other than hash have different encodings. It is not protobuf, whose
// wire form is not canonical across implementations. DESIGN.md has a worked
// example.
func EntryDigestInput(e *cofferv1.AuditEntry) []byte {
	return appendEntryDigestInput(make([]byte, 0, entryInputLen(e)), e)
}

func entryInputLen(e *cofferv1.AuditEntry) int {
	n := 0
	if e.GetKeyVersion() != 0 {
		n = 1 + 4
	}
	if len(e.GetRequestStatement()) != 0 || len(e.GetRequestSignature()) != 0 {
		n += 2*(1+4) + len(e.GetRequestStatement()) + len(e.GetRequestSignature())
	}
	return n + fixedEntryLen + len(e.GetNode()) + len(e.GetCaller()) + len(e.GetOperation()) +
		len(e.GetGkid()) + len(e.GetResource()) + len(e.GetPolicy()) + len(e.GetClient()) +
		len(e.GetReason()) + len(e.GetRequestId()) + len(e.GetPrevHash()) + len(e.GetDetailHmac())
}

func appendEntryDigestInput(b []byte, e *cofferv1.AuditEntry) []byte {
	b = appendU64(b, tagSeq, e.GetSeq())
	b = appendU64(b, tagTime, uint64(e.GetTimeUnixNano()))
	b = appendStr(b, tagNode, e.GetNode())
	b = appendStr(b, tagCaller, e.GetCaller())
	b = appendStr(b, tagOperation, e.GetOperation())
	b = appendStr(b, tagGKID, e.GetGkid())
	b = appendStr(b, tagResource, e.GetResource())
	b = appendStr(b, tagPolicy, e.GetPolicy())
	b = appendStr(b, tagClient, e.GetClient())
	b = appendU32(b, tagOutcome, uint32(e.GetOutcome()))
	b = appendStr(b, tagReason, e.GetReason())
	b = appendStr(b, tagRequestID, e.GetRequestId())
	b = appendU32(b, tagConsistency, uint32(e.GetConsistency()))
	b = appendBytes(b, tagPrevHash, e.GetPrevHash())
	b = appendBytes(b, tagDetailHMAC, e.GetDetailHmac())
	if v := e.GetKeyVersion(); v != 0 {
		b = appendU32(b, tagKeyVersion, v)
	}
	if len(e.GetRequestStatement()) != 0 || len(e.GetRequestSignature()) != 0 {
		b = appendBytes(b, tagStatement, e.GetRequestStatement())
		b = appendBytes(b, tagSignature, e.GetRequestSignature())
	}
	return b
}

func appendU64(b []byte, tag byte, v uint64) []byte {
	return binary.BigEndian.AppendUint64(append(b, tag), v)
}

func appendU32(b []byte, tag byte, v uint32) []byte {
	return binary.BigEndian.AppendUint32(append(b, tag), v)
}

func appendStr(b []byte, tag byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(append(b, tag), uint32(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, tag byte, v []byte) []byte {
	b = binary.BigEndian.AppendUint32(append(b, tag), uint32(len(v)))
	return append(b, v...)
}

// ChainHash returns SHA-256(EntryDomain || EntryDigestInput(e)): the value
// the entry's hash field must hold. It reads seq and prev_hash from e, so
// call it after they are set (Link does both). It is deterministic and
// allocates only its 32-byte result for entries of ordinary size.
func ChainHash(e *cofferv1.AuditEntry) []byte {
	sum := chainSum(e)
	return sum[:]
}

func chainSum(e *cofferv1.AuditEntry) [HashLen]byte {
	// A stack buffer covers every ordinary entry, a signed request's
	// statement included; a larger one spills to the heap inside append.
	var buf [1024]byte
	b := append(buf[:0], EntryDomain...)
	b = appendEntryDigestInput(b, e)
	return sha256.Sum256(b)
}

// Link makes e the entry at seq of a chain whose previous hash is prev: it
// sets e.Seq, e.PrevHash (a copy of prev) and e.Hash (ChainHash) in place.
// prev is GenesisHash() for seq 1 and the hash of entry seq-1 otherwise.
//
// Link is what the state machine calls when it applies an entry. It never
// fails and uses no clock or randomness: given the same prev, seq and
// proposal, every replica computes the same hash. It does not validate e;
// the proposal path calls Validate before the entry enters the Raft log.
func Link(prev []byte, seq uint64, e *cofferv1.AuditEntry) {
	// One allocation holds both hashes.
	buf := make([]byte, len(prev)+HashLen)
	copy(buf, prev)
	e.Seq = seq
	e.PrevHash = buf[:len(prev):len(prev)]
	sum := chainSum(e)
	e.Hash = buf[len(prev):]
	copy(e.Hash, sum[:])
}

// Validate checks an entry proposal before it is put into the Raft log:
//   - seq, prev_hash and hash are empty (the state machine assigns them);
//   - outcome is GRANTED, DENIED or FAILED;
//   - consistency is a known value;
//   - caller and operation are non-empty;
//   - every string is valid UTF-8 and at most MaxFieldLen bytes;
//   - detail_hmac is empty or exactly HashLen bytes (an HMAC-SHA256, see
//     DetailHMAC);
//   - request_statement and request_signature are both set or both empty,
//     within their bounds.
//
// Errors wrap ErrInvalidEntry and name the field.
func Validate(e *cofferv1.AuditEntry) error {
	if e == nil {
		return fmt.Errorf("%w: nil entry", ErrInvalidEntry)
	}
	if e.GetSeq() != 0 || len(e.GetPrevHash()) != 0 || len(e.GetHash()) != 0 {
		return fmt.Errorf("%w: seq, prev_hash and hash are assigned when the entry is applied and must be empty in a proposal", ErrInvalidEntry)
	}
	switch e.GetOutcome() {
	case cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED,
		cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED:
	default:
		return fmt.Errorf("%w: outcome %d is not granted, denied or failed", ErrInvalidEntry, int32(e.GetOutcome()))
	}
	switch e.GetConsistency() {
	case cofferv1.Consistency_CONSISTENCY_UNSPECIFIED, cofferv1.Consistency_CONSISTENCY_LINEARIZABLE,
		cofferv1.Consistency_CONSISTENCY_STALE:
	default:
		return fmt.Errorf("%w: unknown consistency %d", ErrInvalidEntry, int32(e.GetConsistency()))
	}
	if e.GetCaller() == "" {
		return fmt.Errorf("%w: caller is empty", ErrInvalidEntry)
	}
	if e.GetOperation() == "" {
		return fmt.Errorf("%w: operation is empty", ErrInvalidEntry)
	}
	for _, f := range []struct{ name, v string }{
		{"node", e.GetNode()}, {"caller", e.GetCaller()}, {"operation", e.GetOperation()},
		{"gkid", e.GetGkid()}, {"resource", e.GetResource()}, {"policy", e.GetPolicy()},
		{"client", e.GetClient()}, {"reason", e.GetReason()}, {"request_id", e.GetRequestId()},
	} {
		if err := checkString(f.name, f.v); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidEntry, err)
		}
	}
	if n := len(e.GetDetailHmac()); n != 0 && n != HashLen {
		return fmt.Errorf("%w: detail_hmac is %d bytes, want 0 or %d", ErrInvalidEntry, n, HashLen)
	}
	st, sig := len(e.GetRequestStatement()), len(e.GetRequestSignature())
	if st > MaxRequestStatementLen || sig > MaxRequestSignatureLen || (st == 0) != (sig == 0) {
		return fmt.Errorf("%w: request statement of %d bytes and signature of %d bytes: both or neither, at most %d and %d", ErrInvalidEntry, st, sig, MaxRequestStatementLen, MaxRequestSignatureLen)
	}
	return nil
}

// Clip shortens s to at most n bytes without splitting a UTF-8 sequence, so
// that a clipped field stays valid (ValidateEntry refuses invalid UTF-8, and
// protobuf will not marshal it).
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func checkString(name, v string) error {
	if len(v) > MaxFieldLen {
		return fmt.Errorf("%s is %d bytes, limit %d", name, len(v), MaxFieldLen)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("%s is not valid UTF-8", name)
	}
	return nil
}
