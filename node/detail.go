package node

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"sync"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
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

// newAuditHMACKey draws the key and seals it for ClusterInfo.
func (n *Node) newAuditHMACKey(cluster *cofferv1.ClusterInfo) ([]byte, error) {
	if err := n.loadIntegrityKey(cluster); err != nil {
		return nil, err
	}
	k, err := n.ks.Random(32)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	return n.ks.Seal(integrityKEK(cluster), k, []byte(auditHMACAAD))
}

// auditHMACKey returns the unsealed key, or nil if the cluster has none.
func (n *Node) auditHMACKey() ([]byte, error) {
	n.hmacKey.mu.Lock()
	defer n.hmacKey.mu.Unlock()
	cluster, err := n.fsm.Cluster()
	if err != nil {
		return nil, err
	}
	if n.hmacKey.key != nil && bytes.Equal(n.hmacKey.sealed, cluster.GetAuditHmacKey()) {
		return n.hmacKey.key, nil
	}
	if len(cluster.GetAuditHmacKey()) == 0 {
		return nil, nil
	}
	if err := n.loadIntegrityKey(cluster); err != nil {
		return nil, err
	}
	k, err := n.ks.Open(integrityKEK(cluster), cluster.GetAuditHmacKey(), []byte(auditHMACAAD))
	if err != nil {
		n.keystoreFailed(err)
		return nil, fmt.Errorf("unseal the audit hmac key: %w", err)
	}
	n.hmacKey.key, n.hmacKey.sealed = k, cluster.GetAuditHmacKey()
	return k, nil
}

// materialDetail is the detail_hmac of an entry that creates a key.
func (n *Node) materialDetail(material []byte) ([]byte, error) {
	k, err := n.auditHMACKey()
	if err != nil || k == nil {
		return nil, err
	}
	return audit.DetailHMAC(k, "material", string(material)), nil
}

// maxMatchMaterial bounds the candidate material of one Match.
const maxMatchMaterial = MaxMaterialLen

// Match tells whether entry seq recorded the given key material.
func (s *auditService) Match(ctx context.Context, req *cofferv1.AuditMatchRequest) (*cofferv1.AuditMatchResponse, error) {
	c, err := authenticate(ctx)
	if err != nil {
		return nil, err
	}
	if req.GetSeq() == 0 || len(req.GetMaterial()) == 0 || len(req.GetMaterial()) > maxMatchMaterial {
		return nil, fmt.Errorf("%w: seq and 1..%d bytes of material are required", ErrInvalidArgument, maxMatchMaterial)
	}
	if err := s.n.linearize(ctx, cofferv1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
		return nil, err
	}
	if err := s.n.authorize(c, authz.OpAuditRead, ""); err != nil {
		return nil, err
	}
	var entry *cofferv1.AuditEntry
	if err := s.n.fsm.ScanAudit(req.GetSeq()-1, func(e *cofferv1.AuditEntry) error {
		if e.GetSeq() == req.GetSeq() {
			entry = e
		}
		return errStop
	}); err != nil && !errors.Is(err, errStop) {
		return nil, err
	}
	if entry == nil {
		return nil, fmt.Errorf("%w: audit entry %d (pruned or not yet written)", ErrNotFound, req.GetSeq())
	}
	if len(entry.GetDetailHmac()) == 0 {
		return nil, fmt.Errorf("%w: audit entry %d records no key material", fsm.ErrInvalidCommand, req.GetSeq())
	}
	want, err := s.n.materialDetail(req.GetMaterial())
	if err != nil {
		return nil, err
	}
	return &cofferv1.AuditMatchResponse{Match: want != nil && hmac.Equal(want, entry.GetDetailHmac())}, nil
}

var errStop = errors.New("stop")
