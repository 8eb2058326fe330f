package fsm

import (
	"errors"
	"fmt"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"google.golang.org/grpc/codes"
)

// Decided reads.
//
// A linearizable use of a key (get, describe, and the data encryption
// service's encrypt, decrypt, datakey) is decided by Apply, at the point
// of the log where its audit entry lands, instead of by the serving node
// before it commits the entry. The node proposes the entry with the caller
// and the request time; Apply looks up the key, checks the caller's grants,
// the key's state and kind and its use policy against the state at that point, and writes the
// outcome into the entry before linking it into the chain. Every replica
// decides alike, because every input is in the log or in the state the log
// built. The serving node releases the read only once that entry is
// committed and granted, so one Raft round both commits the audit entry and
// orders the read after every write acknowledged before it arrived (see
// node.decidedKey for when it also waits to apply the entry itself).
//
// Apply decides on the committed records as they are stored. The serving
// node still checks the key record's integrity (the keystore opens it) and
// its own verified authorisation snapshot before it releases anything.

// ReadResult is Apply's decision on one decided read.
type ReadResult struct {
	Refusal cofferv1.ReadRefusal
	// Detail is what the caller is told after the refusal's own words.
	Detail string
	// Seq is the sequence number of the read's audit entry.
	Seq uint64
	// Revision is the revision of the key record Apply decided on (0: no
	// such key): a reader holding that revision holds the record of the
	// decision.
	Revision uint64
	// KeyVersion is the version of the key's material a granted use is for:
	// the version it named, else the newest at the decision. The reader
	// uses exactly that version (Apply counted an encryption against it).
	KeyVersion uint32
}

// refusals gives each refusal its outcome, the status code the caller gets
// and the words its message starts with. It is the one table of them: Apply
// records the reason from it, and the node answers the caller with the
// same code and message (ReadResult.Err), so the two cannot drift apart.
var refusals = map[cofferv1.ReadRefusal]struct {
	outcome  cofferv1.AuditOutcome
	code     codes.Code
	sentinel error
	words    string
}{
	cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED:       {cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED, codes.OK, nil, ""},
	cofferv1.ReadRefusal_READ_REFUSAL_NOT_FOUND:         {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, codes.NotFound, ErrNotFound, "not found"},
	cofferv1.ReadRefusal_READ_REFUSAL_CORRUPT:           {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, codes.DataLoss, ErrCorrupt, "stored state is corrupt"},
	cofferv1.ReadRefusal_READ_REFUSAL_UNAUTHENTICATED:   {cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED, codes.Unauthenticated, nil, "unauthenticated"},
	cofferv1.ReadRefusal_READ_REFUSAL_PERMISSION_DENIED: {cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED, codes.PermissionDenied, nil, "permission denied"},
	cofferv1.ReadRefusal_READ_REFUSAL_NOT_YET_VALID:     {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, codes.FailedPrecondition, nil, "key is not valid yet"},
	cofferv1.ReadRefusal_READ_REFUSAL_EXPIRED:           {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, codes.FailedPrecondition, nil, "key has expired"},
	cofferv1.ReadRefusal_READ_REFUSAL_UNSUITABLE:        {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, codes.FailedPrecondition, nil, "key cannot be used for this"},
	cofferv1.ReadRefusal_READ_REFUSAL_KEY_STATE:         {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, codes.FailedPrecondition, nil, "key state does not allow this"},
	cofferv1.ReadRefusal_READ_REFUSAL_KEY_VERSION:       {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, codes.FailedPrecondition, nil, "key version is not usable"},
	cofferv1.ReadRefusal_READ_REFUSAL_USES_EXHAUSTED:    {cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, codes.FailedPrecondition, nil, "key version has done all its encryptions"},
}

// RefusalError is a refused read as its caller gets it: the status code and
// the message Apply's audit entry records after that code. The node's
// status mapping passes Code and Message through unchanged.
type RefusalError struct {
	Refusal cofferv1.ReadRefusal
	Code    codes.Code
	Message string
}

func (e *RefusalError) Error() string { return e.Message }

// Unwrap returns the package's sentinel for the refusal (ErrNotFound,
// ErrCorrupt), if it has one.
func (e *RefusalError) Unwrap() error { return refusals[e.Refusal].sentinel }

// Err is the refusal as an error (*RefusalError); nil for a granted read.
func (r ReadResult) Err() error {
	if r.Refusal == cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED {
		return nil
	}
	info, ok := refusals[r.Refusal]
	if !ok {
		info = refusals[cofferv1.ReadRefusal_READ_REFUSAL_CORRUPT]
	}
	return &RefusalError{Refusal: r.Refusal, Code: info.code, Message: info.words + ": " + r.Detail}
}

// refusalReason is the reason an audit entry records for a refused read:
// the code and message its caller gets, as the request path records every
// refusal.
func refusalReason(r ReadResult) string {
	var re *RefusalError
	if !errors.As(r.Err(), &re) {
		return ""
	}
	return clipReason(re.Code.String() + ": " + re.Message)
}

// CryptoVersion is the command version of an AUDIT_BATCH that asks Apply to
// decide a use of a key by the data encryption service (encrypt, decrypt,
// datakey), and of SET_KEY_STATE. A replica whose build predates it would
// refuse the whole batch and diverge, so it stops on it instead (see
// CommandVersion): every member runs a build with the service and the key
// life cycle before a caller uses them.
const CryptoVersion = 6

// IsDecidedRead reports whether op is a use of one key by its GKID that
// Apply can decide: a key read (get, describe) or a use by the data
// encryption service.
func IsDecidedRead(op string) bool {
	return decidedReadVersion(&cofferv1.AuditEntry{Operation: op}) != 0
}

// decidedReadVersion is the command version from which Apply decides the
// read e records; 0 if it never does. A get naming a version of the key
// needs the version checks (CryptoVersion).
func decidedReadVersion(e *cofferv1.AuditEntry) uint32 {
	switch authz.Op(e.GetOperation()) {
	case authz.OpGet, authz.OpDescribe:
		if e.GetKeyVersion() != 0 {
			return CryptoVersion
		}
		return 2
	case authz.OpEncrypt, authz.OpDecrypt, authz.OpDataKey:
		return CryptoVersion
	}
	return 0
}

// countsEncryption reports whether Apply counts e, not decided in Apply, as
// an encryption under its key (countEncryptions): a granted encrypt or
// datakey decided on a node's own state.
func countsEncryption(e *cofferv1.AuditEntry) bool {
	return authz.Op(e.GetOperation()).Encrypts() && e.GetOutcome() == cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED && e.GetGkid() != ""
}

// batchVersion is the command version an audit batch needs for its
// decided reads, the encryptions it counts and the key versions its
// entries name.
func batchVersion(entries []*cofferv1.AuditEntry, decide []*cofferv1.ReadDecision) uint32 {
	var v uint32
	for _, d := range decide {
		if i := d.GetEntry(); int(i) < len(entries) {
			v = max(v, decidedReadVersion(entries[i]))
		}
	}
	for _, e := range entries {
		// A replica of an older build would not count the encryption, or
		// would hash the entry without its key version.
		if countsEncryption(e) || e.GetKeyVersion() != 0 {
			v = max(v, CryptoVersion)
		}
	}
	return v
}

// ValidateBatch checks the decide and fallback lists of an audit batch:
// each names a distinct entry, decided reads are key reads with a GKID, and
// no entry is both.
func ValidateBatch(entries []*cofferv1.AuditEntry, decide []*cofferv1.ReadDecision, fallback []uint32) error {
	seen := make(map[uint32]bool, len(decide)+len(fallback))
	for _, d := range decide {
		i := d.GetEntry()
		if int(i) >= len(entries) || seen[i] {
			return fmt.Errorf("%w: read decision names entry %d of %d (or names it twice)", ErrInvalidCommand, i, len(entries))
		}
		seen[i] = true
		if e := entries[i]; !IsDecidedRead(e.GetOperation()) || e.GetGkid() == "" {
			return fmt.Errorf("%w: entry %d (%q) is not a key read", ErrInvalidCommand, i, e.GetOperation())
		}
	}
	for _, i := range fallback {
		if int(i) >= len(entries) || seen[i] {
			return fmt.Errorf("%w: fallback names entry %d of %d (or names it twice, or a decided read)", ErrInvalidCommand, i, len(entries))
		}
		seen[i] = true
	}
	return nil
}

// decideRead decides the read that e records, at this point of the batch,
// and writes the outcome into e.
func (a *applyCtx) decideRead(e *cofferv1.AuditEntry, serial string) ReadResult {
	r, compromised := a.decide(e, serial)
	e.Outcome, e.Reason = refusals[r.Refusal].outcome, refusalReason(r)
	if compromised && r.Refusal == cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED {
		e.Reason = authz.CompromisedKey
	}
	return r
}

// decide decides the read e records, and reports whether its key was
// marked compromised.
func (a *applyCtx) decide(e *cofferv1.AuditEntry, serial string) (ReadResult, bool) {
	id := e.GetGkid()
	rec, err := a.key(id)
	switch {
	case errors.Is(err, ErrNotFound):
		rec = nil
	case err != nil:
		return ReadResult{Refusal: cofferv1.ReadRefusal_READ_REFUSAL_CORRUPT, Detail: "stored record of key " + id + " does not decode"}, false
	case rec.GetGkid() != id:
		return ReadResult{Refusal: cofferv1.ReadRefusal_READ_REFUSAL_CORRUPT, Detail: fmt.Sprintf("record stored under %s names %s", id, rec.GetGkid())}, false
	default:
		e.Resource, e.Policy = rec.GetResource(), rec.GetPolicy()
	}
	op := authz.Op(e.GetOperation())
	req := authz.Request{Identity: e.GetCaller(), CertSerial: serial, Op: op, KeyVersion: e.GetKeyVersion()}
	if rec != nil && op.Encrypts() {
		// The newest version: a decided encryption names none.
		req.Encryptions = a.encryptions(id, authz.NewestVersion(rec))
	}
	refusal, detail := a.decisionSnapshot().DecideKeyRead(req, id, rec, time.Unix(0, e.GetTimeUnixNano()))
	r := ReadResult{Refusal: refusal, Detail: detail, Revision: rec.GetRevision()}
	if refusal == cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED && op.UsesMaterial() {
		r.KeyVersion = e.GetKeyVersion()
		if r.KeyVersion == 0 {
			r.KeyVersion = authz.NewestVersion(rec)
		}
		if a.version >= CryptoVersion {
			// The entry names the version used; a batch written for older
			// replicas (a plain get) leaves its entries as they wrote them.
			e.KeyVersion = r.KeyVersion
		}
		if op.Encrypts() {
			a.countEncryption(id, r.KeyVersion, req.Encryptions)
		}
	}
	return r, rec.GetCompromised()
}

// decisionSnapshot is the authorisation snapshot as of this point of the
// batch, built from the records as stored (see FSM.decisions).
func (a *applyCtx) decisionSnapshot() *authz.Snapshot {
	if !a.accessChanged {
		return a.f.decisions.Load()
	}
	if a.batchDecisions == nil {
		a.batchDecisions = a.f.buildSnapshot(a.b, false)
	}
	return a.batchDecisions
}
