package audit

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"io"
)

// DetailDomain is the first input of every DetailHMAC.
const DetailDomain = "coffer-audit-detail-v1\x00"

// DetailKeyLen is the recommended length of the audit HMAC key: 32 random
// bytes.
const DetailKeyLen = 32

// DetailHMAC returns the value for an entry's detail_hmac field:
//
//	HMAC-SHA256(key, DetailDomain || for each value: len(value) (4-byte big-endian) || value)
//
// Use it for request details that may be sensitive (an e-mail address in a
// resource name, a card number a caller asked about) and that an auditor
// may later need to confirm. The length prefixes make the input unambiguous:
// ("ab", "c") and ("a", "bc") give different results, and so does a
// different number of values.
//
// The key is one cluster-wide secret (DetailKeyLen random bytes), held like
// the other keys of the cluster and never written to the log. The log alone
// reveals nothing about the values. Whoever holds the key (an auditor it was
// given to, say) can test a guess: compute DetailHMAC(key, guess...) and
// compare (MatchDetail). For values with little entropy (a four-digit PIN, a
// yes/no flag) such guessing is an exhaustive search, so the key is as
// sensitive as the values it covers. Rotating it makes later entries
// incomparable with earlier ones; the chain is unaffected because it hashes
// detail_hmac as opaque bytes.
func DetailHMAC(key []byte, values ...string) []byte {
	m := hmac.New(sha256.New, key)
	io.WriteString(m, DetailDomain)
	var l [4]byte
	for _, v := range values {
		binary.BigEndian.PutUint32(l[:], uint32(len(v)))
		m.Write(l[:])
		io.WriteString(m, v)
	}
	return m.Sum(nil)
}

// MatchDetail reports, in constant time, whether mac is DetailHMAC(key,
// values...): how an auditor who holds the key tests a guess.
func MatchDetail(key, mac []byte, values ...string) bool {
	return hmac.Equal(mac, DetailHMAC(key, values...))
}
