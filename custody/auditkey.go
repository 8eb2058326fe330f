package custody

import (
	"bytes"
	"fmt"
	"sync"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
)

// Audit entries never hold key material. An entry that creates a key
// (generate, put) holds detail_hmac = audit.DetailHMAC(k, "material", M)
// instead, where k is the cluster's audit HMAC key. The first leader draws
// k from the keystore's RNG and replicates it only sealed under the record
// integrity key (ClusterInfo.audit_hmac_key); nodes unseal it in the
// keystore when they first need it. The log alone therefore reveals nothing
// about the material, while an auditor can ask the cluster (AuditService.
// Match, with audit.read) whether an entry recorded a given key.

const auditHMACAAD = "coffer-audit-hmac-key-v1"

type hmacKey struct {
	mu  sync.Mutex
	key []byte
	// sealed is the sealed key it was opened from: a restore that replaces
	// the cluster record replaces it.
	sealed []byte
}

// InitCluster generates the keys of a new cluster record: the record
// integrity key (a KEK wrapped under the master key, in
// info.IntegrityKek) and the audit HMAC key (drawn from the keystore's RNG
// and sealed under the integrity key, in info.AuditHmacKey). info's cluster
// id must be set: it names the integrity key. Nothing is kept: the keys are
// loaded from the committed record when first used.
func (b *Barrier) InitCluster(info *cofferv1.ClusterInfo) error {
	if info.GetClusterId() == "" {
		return fmt.Errorf("%w: the cluster record has no id", ErrConfig)
	}
	wrapped, err := b.ks.GenerateKEK(integrityKEK(info))
	if err != nil {
		b.keystoreFailed(err)
		return fmt.Errorf("generate the record integrity key: %w", err)
	}
	info.IntegrityKek = wrapped
	sealed, err := b.newAuditHMACKey(info)
	if err != nil {
		return fmt.Errorf("generate the audit hmac key: %w", err)
	}
	info.AuditHmacKey = sealed
	return nil
}

// newAuditHMACKey draws the key and seals it for ClusterInfo.
func (b *Barrier) newAuditHMACKey(cluster *cofferv1.ClusterInfo) ([]byte, error) {
	if err := b.loadIntegrityKey(cluster); err != nil {
		return nil, err
	}
	k, err := b.Random(32)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	out, err := b.ks.Seal(integrityKEK(cluster), k, []byte(auditHMACAAD))
	b.keystoreFailed(err)
	return out, err
}

// auditHMACKey returns the unsealed key of the committed cluster, or nil if
// it has none.
func (b *Barrier) auditHMACKey() ([]byte, error) {
	b.hmacKey.mu.Lock()
	defer b.hmacKey.mu.Unlock()
	cluster, err := b.cluster()
	if err != nil {
		return nil, err
	}
	if b.hmacKey.key != nil && bytes.Equal(b.hmacKey.sealed, cluster.GetAuditHmacKey()) {
		return b.hmacKey.key, nil
	}
	if len(cluster.GetAuditHmacKey()) == 0 {
		return nil, nil
	}
	if err := b.loadIntegrityKey(cluster); err != nil {
		return nil, err
	}
	k, err := b.ks.Open(integrityKEK(cluster), cluster.GetAuditHmacKey(), []byte(auditHMACAAD))
	if err != nil {
		b.keystoreFailed(err)
		return nil, fmt.Errorf("unseal the audit hmac key: %w", err)
	}
	b.hmacKey.key, b.hmacKey.sealed = k, cluster.GetAuditHmacKey()
	return k, nil
}

// MaterialDetail is the detail_hmac of an audit entry that creates a key
// with this material (audit.DetailHMAC under the committed cluster's audit
// HMAC key), or nil if the cluster has no such key.
func (b *Barrier) MaterialDetail(material []byte) ([]byte, error) {
	k, err := b.auditHMACKey()
	if err != nil || k == nil {
		return nil, err
	}
	return audit.DetailHMAC(k, "material", string(material)), nil
}
