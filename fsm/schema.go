package fsm

import (
	"crypto/sha256"
	"encoding/binary"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// Key layout in Pebble. Every key starts with a one-byte table tag and a '/'.
//
//	m/applied                    8-byte big-endian applied index || 8-byte term
//	m/cluster                    ClusterInfo
//	m/restoring                  present only while Restore runs
//	p/<policy>                   PolicyRecord
//	k/<gkid>                     KeyRecord
//	u/<gkid>\x00<4-byte version>  8-byte big-endian count of encryptions under that version (encryptions.go)
//	x/p/<policy>\x00<gkid>       empty: keys by policy
//	x/r/<resource>\x00<gkid>     empty: keys by resource
//	q/<owner>\x00<request id>    gkid: idempotency of create requests
//	c/<client name>              ClientRecord
//	a/<rule id>                  AclRule
//	r/<certificate serial>       RevokedCertificate
//	n/<node id>                  NodeRecord: the certificate pinned for a member
//	m/audit                      audit chain head: 8-byte seq || 32-byte hash
//	l/<8-byte big-endian seq>    AuditEntry, linked into the chain
//	o/<8-byte big-endian seq>    AuditCheckpoint covering the entry at seq
//	m/audit_marker               AuditPruneMarker for the pruned prefix
//	m/diverged                   present once a checkpoint disagreed with this replica's chain
//	w/<8-byte time>/<16 bytes>   empty: a change's audit entry was linked (see changeKey)
//	m/audit_time                 time index state: first indexed seq || running max time || last key's time || earliest time since that key
//	t/<8-byte time>/<8-byte seq> earliest time since the key before: entries from the first indexed seq up to seq-1 are no later than time
//	m/cache_policy               ClientCachePolicy: the cluster default for client key caches (cachepolicy.go)
//	m/cache_generation           8-byte big-endian cache generation, raised by FLUSH_CACHES
var (
	keyApplied   = []byte("m/applied")
	keyCluster   = []byte("m/cluster")
	keyRestoring = []byte("m/restoring")

	prefixPolicy      = []byte("p/")
	prefixKey         = []byte("k/")
	prefixEncryptions = []byte("u/")
	prefixByPolicy    = []byte("x/p/")
	prefixByRes       = []byte("x/r/")
	prefixRequest     = []byte("q/")
	prefixClient      = []byte("c/")
	prefixRule        = []byte("a/")
	prefixRevoked     = []byte("r/")
	prefixNode        = []byte("n/")
	prefixAudit       = []byte("l/")
	keyAuditHead      = []byte("m/audit")
	prefixCheckpoint  = []byte("o/")
	keyAuditMarker    = []byte("m/audit_marker")
	prefixChanged     = []byte("w/")
	keyDiverged       = []byte("m/diverged")
	keyAuditTime      = []byte("m/audit_time")
	prefixAuditTime   = []byte("t/")

	keyCachePolicy     = []byte("m/cache_policy")
	keyCacheGeneration = []byte("m/cache_generation")
)

func auditKey(seq uint64) []byte {
	k := make([]byte, 0, len(prefixAudit)+8)
	k = append(k, prefixAudit...)
	return binary.BigEndian.AppendUint64(k, seq)
}

// auditTimeKey is the time index key saying that every indexed entry before
// seq has a time no later than maxTime (see timeIndex).
func auditTimeKey(maxTime, seq uint64) []byte {
	k := make([]byte, 0, len(prefixAuditTime)+16)
	k = append(k, prefixAuditTime...)
	k = binary.BigEndian.AppendUint64(k, maxTime)
	return binary.BigEndian.AppendUint64(k, seq)
}

func concat(parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func policyKey(name string) []byte { return concat(prefixPolicy, []byte(name)) }
func keyKey(gkid string) []byte    { return concat(prefixKey, []byte(gkid)) }

func byPolicyPrefix(policy string) []byte {
	return concat(prefixByPolicy, []byte(policy), []byte{0})
}

func byResourcePrefix(resource string) []byte {
	return concat(prefixByRes, []byte(resource), []byte{0})
}

func clientKey(name string) []byte    { return concat(prefixClient, []byte(name)) }
func ruleKey(id string) []byte        { return concat(prefixRule, []byte(id)) }
func revokedKey(serial string) []byte { return concat(prefixRevoked, []byte(serial)) }
func nodeKey(id string) []byte        { return concat(prefixNode, []byte(id)) }

func requestKey(owner, requestID string) []byte {
	return concat(prefixRequest, []byte(owner), []byte{0}, []byte(requestID))
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func encodeApplied(index, term uint64) []byte {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], index)
	binary.BigEndian.PutUint64(b[8:], term)
	return b[:]
}

func decodeApplied(b []byte) (index, term uint64, ok bool) {
	if len(b) != 16 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), true
}

func checkpointKey(seq uint64) []byte {
	k := make([]byte, 0, len(prefixCheckpoint)+8)
	k = append(k, prefixCheckpoint...)
	return binary.BigEndian.AppendUint64(k, seq)
}

// changeKey names the request an audit entry records, for entries carried
// by a change: the entry's time, then a digest of its node, caller,
// operation and request id. An entry recorded for the same request after a
// failed proposal (a fallback) has the same key, so Apply can tell whether
// the change's own entry was linked already. Keys sort by time, so old ones
// are deleted by range (pruneChanged).
func changeKey(e *cofferv1.AuditEntry) []byte {
	h := sha256.New()
	for _, f := range []string{e.GetNode(), e.GetCaller(), e.GetOperation(), e.GetRequestId()} {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	k := make([]byte, 0, len(prefixChanged)+8+1+16)
	k = append(k, prefixChanged...)
	k = binary.BigEndian.AppendUint64(k, uint64(e.GetTimeUnixNano()))
	k = append(k, '/')
	return h.Sum(k)[:len(k)+16]
}

// changedBefore is the first key after every changeKey older than t.
func changedBefore(t int64) []byte {
	k := make([]byte, 0, len(prefixChanged)+8)
	k = append(k, prefixChanged...)
	return binary.BigEndian.AppendUint64(k, uint64(t))
}
