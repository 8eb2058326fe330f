package node

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
	"github.com/coffer-kms/coffer/transport"
)

// Batches of the data encryption service: many items in one request, each
// validated, decided and audited as its single call would be, with one
// audit entry per item. Every item's entry goes into one audit batch, so one
// Raft round commits and decides them all; the material of each key is
// unwrapped once per batch.

// Limits of a batch.
const (
	// maxBatchItems bounds the items of one batch.
	maxBatchItems = 1000
	// maxBatchBytes bounds the plaintext or ciphertext of one batch.
	maxBatchBytes = 2 << 20
)

// batchItems is what serveCryptoBatch needs of a batch request's items.
type batchItems[Req any] struct {
	items []Req
	// size is an item's plaintext or ciphertext, counted against
	// maxBatchBytes.
	size func(Req) int
	// consistency is an item's own consistency, which must be unset.
	consistency func(Req) cofferv1.Consistency
}

// serveCryptoBatch serves a batch of o: it returns, for each item, its
// response or its error (errs[i] set), or an error for the whole request
// when the batch itself is refused.
func serveCryptoBatch[Req any, Resp any](s *service, ctx context.Context, o *cryptoOp[Req, Resp], in batchItems[Req], cons cofferv1.Consistency) (out []Resp, errs []error, err error) {
	r := requestFrom(ctx)
	c := r.caller
	if err := validConsistency(cons); err != nil {
		return nil, nil, err
	}
	n := len(in.items)
	if n == 0 || n > maxBatchItems {
		return nil, nil, fmt.Errorf("%w: a batch holds 1 to %d items, not %d", ErrInvalidArgument, maxBatchItems, n)
	}
	total := 0
	for _, it := range in.items {
		total += in.size(it)
	}
	if total > maxBatchBytes {
		return nil, nil, fmt.Errorf("%w: the batch's items hold %d bytes, at most %d", ErrInvalidArgument, total, maxBatchBytes)
	}
	uses := make([]keyUse, n)
	for i, it := range in.items {
		uses[i] = keyUse{op: o.op, suffix: strconv.Itoa(i)}
		if ic := in.consistency(it); ic != cofferv1.Consistency_CONSISTENCY_UNSPECIFIED {
			uses[i].err = fmt.Errorf("%w: item %d sets its own consistency; set it on the batch", ErrInvalidArgument, i)
		} else {
			uses[i].gkid, uses[i].version, uses[i].err = o.target(it)
		}
	}
	if err := s.decideUses(ctx, r, cons, uses); err != nil {
		return nil, nil, err
	}
	errs = make([]error, n)
	for i, u := range uses {
		errs[i] = u.err
	}
	keys := map[keyVersion]*keyInUse{}
	defer func() {
		for _, k := range keys {
			clear(k.material)
		}
	}()
	out = make([]Resp, n)
	for i, it := range in.items {
		if errs[i] != nil {
			continue
		}
		kv := keyVersion{uses[i].gkid, uses[i].version}
		k, ok := keys[kv]
		if !ok {
			k = &keyInUse{}
			k.usableKey, k.err = s.openForUse(c, uses[i])
			keys[kv] = k
		}
		if k.err != nil {
			errs[i] = k.err
			continue
		}
		out[i], errs[i] = o.run(s, k.usableKey, it)
	}
	return out, errs, nil
}

// keyUse is one use of a key within a request: a batch item, or one side of
// a ReEncrypt. It gets its own audit entry, whose request id is the
// request's followed by "#" and suffix.
type keyUse struct {
	op     authz.Op
	suffix string
	gkid   string
	// version is the version of the key's material the use names (0: the
	// newest) and, once granted, the version it was granted for.
	version uint32
	// err is why the use is refused: set by the caller for a use that
	// failed validation (recorded, not decided), by decideUses otherwise.
	err error
}

// decideUses decides every use of a request and commits one audit entry
// per use, in one audit batch: linearizable uses by a client are decided in
// Apply (one Raft round for all), others on this node's state. It sets each
// use's err to its refusal, and waits until this node has applied the
// batch when any use was granted by Apply. An error refuses the whole
// request; once the entries are committed they are the request's (carried).
func (s *service) decideUses(ctx context.Context, r *request, cons cofferv1.Consistency, uses []keyUse) error {
	c := r.caller
	decided := cons != cofferv1.Consistency_CONSISTENCY_STALE && c.id.Kind == transport.KindClient
	var b auditBatch
	var decidedUses []int // uses whose decision is Apply's, in decide order
	now := time.Now()
	for i := range uses {
		u := &uses[i]
		e := proto.CloneOf(r.entry)
		e.Operation = string(u.op)
		e.RequestId = itemRequestID(r, u.suffix)
		e.KeyVersion = u.version
		switch {
		case u.err != nil:
			setOutcome(e, u.err)
		case decided:
			e.Gkid = u.gkid
			e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED // Apply replaces it
			b.decide = append(b.decide, &cofferv1.ReadDecision{Entry: uint32(len(b.entries)), CertSerial: c.serial})
			decidedUses = append(decidedUses, i)
		default:
			e.Gkid = u.gkid
			_, u.err = s.decideHere(c, u.op, u.gkid, e, now)
			u.version = e.GetKeyVersion()
			setOutcome(e, u.err)
		}
		b.entries = append(b.entries, e)
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
	defer cancel()
	start := time.Now()
	idx, reads, err := s.auditor.submit(actx, b)
	metricStage.WithLabelValues("audit_decide").Observe(time.Since(start).Seconds())
	if errors.Is(err, ErrOverloaded) || errors.Is(err, ErrInvalidArgument) || errors.Is(err, fsm.ErrInvalidCommand) {
		return err // not queued: finishRequest records the refusal
	}
	r.carried = true // the uses' entries are the request's
	if err != nil {
		metricAuditFailures.Inc()
		s.replica.raftLog().Error("audit entries of a request's key uses not committed; response withheld", "uses", len(uses), "err", err)
		return errAuditNotCommitted(err)
	}
	granted := false
	for j, i := range decidedUses {
		uses[i].err = s.readRefusal(uses[i].op, uses[i].gkid, reads[j])
		uses[i].version = reads[j].KeyVersion
		granted = granted || uses[i].err == nil
	}
	if granted {
		if err := s.fsm.WaitApplied(actx, idx); err != nil {
			return fmt.Errorf("%w: waiting to apply index %d: %v", ErrNoLeader, idx, err)
		}
	}
	return nil
}

// maxRequestIDField bounds an item's request id in its audit entry.
const maxRequestIDField = 1024

// keyVersion names one version of a key.
type keyVersion struct {
	gkid    string
	version uint32
}

// keyInUse is a key version a batch uses: its record and unwrapped
// material, opened once for all the batch's items.
type keyInUse struct {
	usableKey
	err error
}

// openForUse reads a key whose use was granted, checks this node's
// integrity-verified access records agree, and unwraps its material.
func (s *service) openForUse(c caller, u keyUse) (usableKey, error) {
	rec, err := s.storedKey(u.gkid)
	if err != nil {
		return usableKey{}, err
	}
	if err := s.authorize(c, u.op, rec.GetResource()); err != nil {
		s.replica.raftLog().Warn("a batch item granted in Apply is refused by this node's verified access records", "op", u.op, "gkid", u.gkid, "err", err)
		return usableKey{}, err
	}
	return s.checkedMaterial(rec, u.op, u.version)
}

// itemError is an item's error as the single call would have returned it.
func itemError(err error) *cofferv1.ItemError {
	st := status.Convert(toStatus(err))
	if st.Code() == codes.OK {
		return nil
	}
	return &cofferv1.ItemError{Code: uint32(st.Code()), Message: st.Message()}
}

func (s *service) encryptBatch(ctx context.Context, req *cofferv1.EncryptBatchRequest) (*cofferv1.EncryptBatchResponse, error) {
	out, errs, err := serveCryptoBatch(s, ctx, opEncrypt, batchItems[*cofferv1.EncryptRequest]{
		items:       req.GetItems(),
		size:        func(q *cofferv1.EncryptRequest) int { return len(q.GetPlaintext()) },
		consistency: (*cofferv1.EncryptRequest).GetConsistency,
	}, req.GetConsistency())
	if err != nil {
		return nil, err
	}
	resp := &cofferv1.EncryptBatchResponse{Results: make([]*cofferv1.EncryptBatchResult, len(out))}
	for i := range out {
		resp.Results[i] = &cofferv1.EncryptBatchResult{Response: out[i], Error: itemError(errs[i])}
	}
	return resp, nil
}

func (s *service) decryptBatch(ctx context.Context, req *cofferv1.DecryptBatchRequest) (*cofferv1.DecryptBatchResponse, error) {
	out, errs, err := serveCryptoBatch(s, ctx, opDecrypt, batchItems[*cofferv1.DecryptRequest]{
		items:       req.GetItems(),
		size:        func(q *cofferv1.DecryptRequest) int { return len(q.GetCiphertext()) },
		consistency: (*cofferv1.DecryptRequest).GetConsistency,
	}, req.GetConsistency())
	if err != nil {
		return nil, err
	}
	resp := &cofferv1.DecryptBatchResponse{Results: make([]*cofferv1.DecryptBatchResult, len(out))}
	for i := range out {
		resp.Results[i] = &cofferv1.DecryptBatchResult{Response: out[i], Error: itemError(errs[i])}
	}
	return resp, nil
}

func (s *service) generateDataKeyBatch(ctx context.Context, req *cofferv1.GenerateDataKeyBatchRequest) (*cofferv1.GenerateDataKeyBatchResponse, error) {
	pk, err := sealTarget(req.GetSealTo())
	if err != nil {
		return nil, err
	}
	for i, it := range req.GetItems() {
		if it.GetSealTo() != nil {
			return nil, fmt.Errorf("%w: item %d: seal_to goes on the batch, not on an item", ErrInvalidArgument, i)
		}
		if pk != nil && it.GetWithoutPlaintext() {
			return nil, fmt.Errorf("%w: item %d: the batch's seal_to seals data keys' plaintext; without_plaintext asks for none", ErrInvalidArgument, i)
		}
	}
	out, errs, err := serveCryptoBatch(s, ctx, opDataKey, batchItems[*cofferv1.GenerateDataKeyRequest]{
		items:       req.GetItems(),
		size:        func(*cofferv1.GenerateDataKeyRequest) int { return 32 },
		consistency: (*cofferv1.GenerateDataKeyRequest).GetConsistency,
	}, req.GetConsistency())
	if err != nil {
		return nil, err
	}
	resp := &cofferv1.GenerateDataKeyBatchResponse{Results: make([]*cofferv1.GenerateDataKeyBatchResult, len(out))}
	r := requestFrom(ctx)
	for i := range out {
		if pk != nil && errs[i] == nil {
			// Each item's data key is bound to the item's own request id,
			// as its audit entry records it.
			item := &request{caller: r.caller, entry: &cofferv1.AuditEntry{RequestId: itemRequestID(r, strconv.Itoa(i))}}
			sealed, err := seal(pk, item, authz.OpDataKey, out[i].GetGkid(), out[i].GetKeyVersion(), out[i].GetPlaintext())
			clear(out[i].GetPlaintext())
			out[i].Plaintext = nil
			if out[i].SealedPlaintext, errs[i] = sealed, err; err != nil {
				out[i] = nil
			}
		}
		resp.Results[i] = &cofferv1.GenerateDataKeyBatchResult{Response: out[i], Error: itemError(errs[i])}
	}
	return resp, nil
}

// itemRequestID is the request id of one use of a request (a batch item,
// one side of a ReEncrypt), as its audit entry records it.
func itemRequestID(r *request, suffix string) string {
	return clip(r.entry.GetRequestId()+"#"+suffix, maxRequestIDField)
}
