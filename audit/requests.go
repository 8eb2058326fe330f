package audit

import (
	"crypto/sha256"
	"crypto/x509"
	"time"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/msgsig"
	"github.com/coffer-kms/coffer/transport"
)

// KindBadRequest: an entry's request statement is not the signature of
// the client the entry names, by a certificate the auditor gave
// (VerifyOptions.ClientCerts), for the request the entry records.
const KindBadRequest = "bad-request-signature"

// requestChecks holds the client certificates of VerifyOptions.ClientCerts
// and what was found.
type requestChecks struct {
	certs     map[[sha256.Size]byte]*x509.Certificate
	verified  uint64
	unchecked uint64
}

func newRequestChecks(certs []*x509.Certificate) requestChecks {
	rc := requestChecks{certs: make(map[[sha256.Size]byte]*x509.Certificate, len(certs))}
	for _, c := range certs {
		rc.certs[sha256.Sum256(c.Raw)] = c
	}
	return rc
}

// checkRequest verifies the signed request statement e keeps, if any,
// against the client certificates given: the signature verifies under the
// certificate the statement names, the certificate names the entry's
// caller, and the statement names the entry's request id and key and was
// made within msgsig.MaxSkew (and a minute) of the entry's time. A
// statement whose certificate was not given is counted, not judged.
func (v *Verifier) checkRequest(e *cofferv1.AuditEntry) error {
	if len(e.GetRequestStatement()) == 0 {
		return nil
	}
	seq := e.GetSeq()
	var st cofferv1.RequestStatement
	if err := proto.Unmarshal(e.GetRequestStatement(), &st); err != nil {
		return v.fail(seq, KindBadRequest, "the request statement does not decode: %v", err)
	}
	var h [sha256.Size]byte
	copy(h[:], st.GetCertificateSha256())
	cert, ok := v.requests.certs[h]
	if !ok {
		v.requests.unchecked++
		return nil
	}
	if _, err := msgsig.VerifyStatement(e.GetRequestStatement(), e.GetRequestSignature(), cert); err != nil {
		return v.fail(seq, KindBadRequest, "%v", err)
	}
	id, err := transport.IdentityFromCert(cert)
	if err != nil {
		return v.fail(seq, KindBadRequest, "the signing certificate: %v", err)
	}
	switch {
	case id.String() != e.GetCaller():
		return v.fail(seq, KindBadRequest, "signed by %s, recorded as asked by %s", id, e.GetCaller())
	case Clip(st.GetRequestId(), MaxFieldLen) != e.GetRequestId():
		return v.fail(seq, KindBadRequest, "signed for request %q, recorded as request %q", st.GetRequestId(), e.GetRequestId())
	case st.GetGkid() != "" && st.GetGkid() != e.GetGkid():
		return v.fail(seq, KindBadRequest, "signed for key %s, recorded for key %s", st.GetGkid(), e.GetGkid())
	case skew(st.GetTimeUnixNano(), e.GetTimeUnixNano()) > statementSlack:
		return v.fail(seq, KindBadRequest, "signed at %s, recorded at %s: further apart than a node accepts (%s)",
			time.Unix(0, st.GetTimeUnixNano()).UTC().Format(time.RFC3339), time.Unix(0, e.GetTimeUnixNano()).UTC().Format(time.RFC3339), msgsig.MaxSkew)
	}
	v.requests.verified++
	return nil
}

// statementSlack is how far a statement's time may be from its entry's:
// the skew a node accepts between the statement and its clock when it
// checks, plus a minute for the time between the entry's start and that
// check.
const statementSlack = msgsig.MaxSkew + time.Minute

// skew is the distance between two times in Unix nanoseconds.
func skew(a, b int64) time.Duration {
	if a > b {
		return time.Duration(a - b)
	}
	return time.Duration(b - a)
}
