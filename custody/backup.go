package custody

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/coffer-kms/coffer/hsmwrap"
)

// A backup's seal: a fresh KEK generated in the keystore (kept wrapped under
// the master key in the backup's header) seals the backup's digest, with the
// header's other fields as associated data. A cluster with the same master
// key unwraps the KEK and opens the seal; any other cannot.
//
// Each backup's KEK has its own id, derived from the header (backupKEK): the
// keystore binds a wrapped KEK to its id, and loading an id that is already
// loaded keeps the key it holds, so one shared id would seal a node's second
// backup under its first backup's KEK, and open only the first backup a node
// ever saw. The header names the node, the cluster, the index and the time
// it was taken, so two backups never share an id, and opening one backup
// again finds its own KEK.
func backupKEK(aad []byte) hsmwrap.KEKID {
	sum := sha256.Sum256(aad)
	return hsmwrap.KEKID{Policy: "coffer.backup-seal/" + hex.EncodeToString(sum[:16]), Version: 1}
}

// SealBackup seals a backup's digest with aad (the header's other fields)
// under a fresh KEK and returns that KEK wrapped under the master key, and
// the seal.
func (b *Barrier) SealBackup(digest, aad []byte) (wrappedKEK, seal []byte, err error) {
	id := backupKEK(aad)
	wrapped, err := b.ks.GenerateKEK(id)
	if err != nil {
		b.keystoreFailed(err)
		return nil, nil, fmt.Errorf("seal the backup: %w", err)
	}
	if err := b.ks.LoadKEK(id, wrapped); err != nil {
		b.keystoreFailed(err)
		return nil, nil, fmt.Errorf("seal the backup: %w", err)
	}
	if seal, err = b.ks.Seal(id, digest, aad); err != nil {
		b.keystoreFailed(err)
		return nil, nil, fmt.Errorf("seal the backup: %w", err)
	}
	return wrapped, seal, nil
}

// OpenBackup opens a seal made by SealBackup and returns the digest it
// seals. A KEK that does not unwrap under this keystore's master key (a
// foreign or damaged backup) or a seal that does not open under aad (a
// changed header) fails with ErrBadSeal; device errors pass through.
func (b *Barrier) OpenBackup(wrappedKEK, seal, aad []byte) ([]byte, error) {
	id := backupKEK(aad)
	if err := b.ks.LoadKEK(id, wrappedKEK); err != nil {
		if isIntegrity(err) || errors.Is(err, hsmwrap.ErrInvalidArgument) {
			return nil, fmt.Errorf("%w: the backup fails its seal: it was not sealed by a cluster that shares this cluster's master key, or its header was changed", ErrBadSeal)
		}
		b.keystoreFailed(err)
		return nil, err
	}
	digest, err := b.ks.Open(id, seal, aad)
	if err != nil {
		if isIntegrity(err) {
			return nil, fmt.Errorf("%w: the backup fails its seal: its header was changed", ErrBadSeal)
		}
		b.keystoreFailed(err)
		return nil, err
	}
	return digest, nil
}
