package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
)

// Encryption counters. Every granted encryption (encrypt, datakey) draws a
// random nonce under one version of a key, and one version may draw at most
// authz.NonceBound: Apply counts them, per key and version, in the batch
// that links their audit entries, so counting costs no Raft round of its
// own and every replica holds the same counts. A use decided in Apply is
// counted when it is granted (decideRead, which also refuses one past the
// limit); one decided on a node's own state (a stale read) when its granted
// entry is applied. The counts are state like the rest (snapshots, backups,
// the state digest); they are not secret and carry no integrity tag: a
// changed count can only move when a key is refused or rotated.

// encryptionsKey is the key of the count of key gkid's version v:
// u/<gkid>\x00<4-byte big-endian version>.
func encryptionsKey(gkid string, v uint32) []byte {
	k := make([]byte, 0, len(prefixEncryptions)+len(gkid)+5)
	k = append(k, prefixEncryptions...)
	k = append(k, gkid...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, v)
}

func readEncryptions(r reader, gkid string, v uint32) (uint64, error) {
	b, err := get(r, encryptionsKey(gkid, v))
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("%w: encryption count of key %s version %d is %d bytes", ErrCorrupt, gkid, v, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

// encKey names one version of one key.
type encKey struct {
	gkid string
	v    uint32
}

// Encryptions returns how many encryptions version v of key gkid has done,
// as of the applied state (through the record cache).
func (f *FSM) Encryptions(gkid string, v uint32) (uint64, error) {
	k := encKey{gkid, v}
	if n, ok := f.cache.count(k); ok {
		return n, nil
	}
	gen := f.cache.countGeneration()
	n, err := readEncryptions(f.db, gkid, v)
	if err == nil {
		f.cache.putCount(gen, k, n)
	}
	return n, err
}

// encryptions is the count as of this point of the batch: one this batch
// wrote, else the committed one. A count that cannot be read stops the
// replica, as any unreadable state does in Apply.
func (a *applyCtx) encryptions(gkid string, v uint32) uint64 {
	k := encKey{gkid, v}
	if n, ok := a.counts[k]; ok {
		return n
	}
	if n, ok := a.f.cache.count(k); ok {
		return n
	}
	n, err := readEncryptions(a.b, gkid, v)
	if err != nil {
		panic(err.Error())
	}
	return n
}

// countEncryption adds one encryption under version v of key gkid, whose
// count was n (written with the batch: writeCounts).
func (a *applyCtx) countEncryption(gkid string, v uint32, n uint64) {
	if a.counts == nil {
		a.counts = map[encKey]uint64{}
	}
	a.counts[encKey{gkid, v}] = n + 1
}

// writeCounts writes the counts the batch changed, once each, before the
// commit.
func (a *applyCtx) writeCounts() {
	for k, n := range a.counts {
		mustSetRaw(a.b, encryptionsKey(k.gkid, k.v), binary.BigEndian.AppendUint64(nil, n))
	}
}

// countDecidedEncryption counts a granted encryption that a node decided on
// its own state: under the version its entry names, else the key's newest.
// A key that is gone or unreadable counts nothing.
func (a *applyCtx) countDecidedEncryption(e *cofferv1.AuditEntry) {
	v := e.GetKeyVersion()
	if v == 0 {
		rec, err := a.key(e.GetGkid())
		if err != nil {
			return
		}
		v = authz.NewestVersion(rec)
	}
	a.countEncryption(e.GetGkid(), v, a.encryptions(e.GetGkid(), v))
}
