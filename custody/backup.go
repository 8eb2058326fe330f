package custody

import (
	"errors"
	"fmt"

	"github.com/coffer-kms/coffer/hsmwrap"
)

// A backup's seal: a fresh KEK generated in the keystore (kept wrapped under
// the master key in the backup's header) seals the backup's digest, with the
// header's other fields as associated data. A cluster with the same master
// key unwraps the KEK and opens the seal; any other cannot. The KEK's slot
// is fixed (backupSealKEK) and used by one seal or open at a time.
var backupSealKEK = hsmwrap.KEKID{Policy: "coffer.backup-seal", Version: 1}

// SealBackup seals a backup's digest with aad (the header's other fields)
// under a fresh KEK and returns that KEK wrapped under the master key, and
// the seal.
func (b *Barrier) SealBackup(digest, aad []byte) (wrappedKEK, seal []byte, err error) {
	b.backupMu.Lock()
	defer b.backupMu.Unlock()
	wrapped, err := b.ks.GenerateKEK(backupSealKEK)
	if err != nil {
		b.keystoreFailed(err)
		return nil, nil, fmt.Errorf("seal the backup: %w", err)
	}
	if err := b.ks.LoadKEK(backupSealKEK, wrapped); err != nil {
		b.keystoreFailed(err)
		return nil, nil, fmt.Errorf("seal the backup: %w", err)
	}
	if seal, err = b.ks.Seal(backupSealKEK, digest, aad); err != nil {
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
	b.backupMu.Lock()
	defer b.backupMu.Unlock()
	if err := b.ks.LoadKEK(backupSealKEK, wrappedKEK); err != nil {
		if isIntegrity(err) || errors.Is(err, hsmwrap.ErrInvalidArgument) {
			return nil, fmt.Errorf("%w: the backup was not sealed by a cluster that shares this cluster's master key (a foreign backup, or a damaged seal)", ErrBadSeal)
		}
		b.keystoreFailed(err)
		return nil, err
	}
	digest, err := b.ks.Open(backupSealKEK, seal, aad)
	if err != nil {
		if isIntegrity(err) {
			return nil, fmt.Errorf("%w: the backup fails its seal: its header was changed", ErrBadSeal)
		}
		b.keystoreFailed(err)
		return nil, err
	}
	return digest, nil
}
