package node

import (
	"crypto/hpke"
	"fmt"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/keyseal"
)

// Key material sealed for the one client that asked (keyseal): a get or a
// data key request that carries a SealTo gets the material sealed with HPKE
// to that public key, bound to the operation, the key and version, the
// request id this node recorded in the request's audit entry and the
// caller's identity, instead of in the clear inside TLS. The seal is made
// after the use was granted and its entry committed, like any release.

// sealTarget checks a request's SealTo before anything is decided: nil when
// there is none.
func sealTarget(st *cofferv1.SealTo) (hpke.PublicKey, error) {
	if st == nil {
		return nil, nil
	}
	if st.GetKemId() > 0xffff {
		return nil, fmt.Errorf("%w: seal_to: KEM id %d is not an HPKE KEM id", ErrInvalidArgument, st.GetKemId())
	}
	pk, err := keyseal.PublicKey(uint16(st.GetKemId()), st.GetPublicKey())
	if err != nil {
		return nil, fmt.Errorf("%w: seal_to: %v", ErrInvalidArgument, err)
	}
	return pk, nil
}

// seal seals material released by op on key gkid, version v, for request r.
func seal(pk hpke.PublicKey, r *request, op authz.Op, gkid string, v uint32, material []byte) ([]byte, error) {
	b := keyseal.Binding{Operation: string(op), GKID: gkid, Version: v, RequestID: r.entry.GetRequestId(), Client: r.caller.String()}
	out, err := keyseal.Seal(pk, b, material)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInternal, err)
	}
	metricSealed.WithLabelValues(string(op)).Inc()
	return out, nil
}
