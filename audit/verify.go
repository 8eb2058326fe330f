package audit

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"sort"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// Kinds of VerifyError.
const (
	// KindGap: an entry is missing; Seq is the first missing one.
	KindGap = "gap"
	// KindReorder: entries are out of order; Seq is the entry that is not
	// where it should be (the one expected at that position).
	KindReorder = "reorder"
	// KindDuplicate: a sequence number appears again; Seq is that number.
	KindDuplicate = "duplicate"
	// KindBadLink: an entry's prev_hash is not the hash of the entry before
	// it (or the genesis hash, or the marker's prev_hash).
	KindBadLink = "bad-link"
	// KindBadHash: an entry's hash does not recompute (an edited field).
	KindBadHash = "bad-hash"
	// KindBadCheckpoint: a checkpoint is malformed, covers an entry not yet
	// seen or outside the window, or its head differs from the chain.
	KindBadCheckpoint = "bad-checkpoint"
	// KindBadSignature: a checkpoint signature does not verify.
	KindBadSignature = "bad-signature"
	// KindUntrustedKey: a checkpoint is signed by a key outside the
	// trusted set (or one that does not parse).
	KindUntrustedKey = "untrusted-key"
	// KindBadMarker: a prune marker is malformed, inconsistent with its
	// checkpoint, or not the first item.
	KindBadMarker = "bad-marker"
	// KindUncoveredTail: with StrictTail, entries after the last checkpoint;
	// Seq is the first of them.
	KindUncoveredTail = "uncovered-tail"
	// KindPinned: the chain contradicts a checkpoint the auditor kept from an
	// earlier export (VerifyOptions.Pinned); Seq is the pinned seq.
	KindPinned = "pinned"
	// KindTruncated: the log ends before a pinned checkpoint's seq; Seq is
	// the first missing entry.
	KindTruncated = "truncated"
)

// VerifyError reports the first problem the Verifier found. It unwraps to
// ErrChain and, for the key, signature and marker kinds, also to
// ErrUntrustedKey, ErrBadSignature or ErrInvalidMarker.
type VerifyError struct {
	// Seq is the first bad sequence number (see the Kind constants for what
	// it names in each case; for checkpoint kinds, the checkpoint's seq).
	Seq uint64
	// Kind is one of the Kind constants.
	Kind string
	// Detail says what differs, in words.
	Detail string
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("audit: seq %d: %s: %s", e.Seq, e.Kind, e.Detail)
}

// Unwrap lets errors.Is match ErrChain and the kind's own sentinel.
func (e *VerifyError) Unwrap() []error {
	switch e.Kind {
	case KindUntrustedKey:
		return []error{ErrChain, ErrUntrustedKey}
	case KindBadSignature:
		return []error{ErrChain, ErrBadSignature}
	case KindBadMarker:
		return []error{ErrChain, ErrInvalidMarker}
	}
	return []error{ErrChain}
}

// Defaults and bounds of VerifyOptions.
const (
	// DefaultWindow is how many of the most recent entry hashes a Verifier
	// keeps for matching checkpoints: 65,536 (2 MiB).
	DefaultWindow = 1 << 16
	// MaxWindow bounds Window: 16,777,216 hashes (512 MiB).
	MaxWindow = 1 << 24
	// DefaultMaxLineLen is the longest export line a Reader accepts:
	// 128 KiB, twice the longest line a valid entry can produce (every
	// string field at MaxFieldLen bytes, each byte escaped as \u00XX).
	DefaultMaxLineLen = 128 << 10
	// MaxMaxLineLen bounds MaxLineLen.
	MaxMaxLineLen = 64 << 20
	// MaxPinned bounds len(VerifyOptions.Pinned).
	MaxPinned = 1 << 20
)

// VerifyOptions tune a Verifier and VerifyJSONL. Zero fields take their
// defaults.
type VerifyOptions struct {
	// StrictTail makes Finish fail (KindUncoveredTail) when entries follow
	// the last checkpoint. Without it they are counted in
	// Report.Uncovered. An auditor that wants the whole log signed waits for
	// the next checkpoint before exporting, or uses StrictTail.
	StrictTail bool
	// Window is how many of the most recent entry hashes the Verifier
	// remembers (DefaultWindow if 0). A checkpoint must appear in the stream
	// before more than Window entries follow the entry it covers;
	// otherwise it is KindBadCheckpoint. Memory is about 32 bytes per slot.
	Window int
	// MaxLineLen is the longest line VerifyJSONL accepts
	// (DefaultMaxLineLen if 0).
	MaxLineLen int
	// Pinned are checkpoints the auditor kept from earlier exports. The
	// chain must reproduce each one's head at its seq (KindPinned), and must
	// reach the highest pinned seq (KindTruncated). Pinned checkpoints
	// before a prune marker's first_seq-1 cannot be checked and are ignored.
	// Their signatures are not checked again: they were verified when they
	// were kept. This is what stops a rewrite of history signed with a
	// stolen key (see DESIGN.md). At most MaxPinned.
	Pinned []*cofferv1.AuditCheckpoint
	// ClientCerts are client certificates the auditor holds: every entry
	// that keeps a client's signed request statement made with one of
	// them must verify (KindBadRequest), which shows, without the
	// cluster, that the client asked for what the entry records.
	ClientCerts []*x509.Certificate
}

// DefaultVerifyOptions returns the defaults: StrictTail off, DefaultWindow,
// DefaultMaxLineLen.
func DefaultVerifyOptions() VerifyOptions {
	return VerifyOptions{Window: DefaultWindow, MaxLineLen: DefaultMaxLineLen}
}

// Validate checks the bounds: 0 <= Window <= MaxWindow, 0 <= MaxLineLen <=
// MaxMaxLineLen, at most MaxPinned pinned checkpoints, each with seq >= 1
// and a HashLen head, no two disagreeing about the same seq.
func (o VerifyOptions) Validate() error {
	if o.Window < 0 || o.Window > MaxWindow {
		return fmt.Errorf("%w: window %d outside 0..%d", ErrInvalidOptions, o.Window, MaxWindow)
	}
	if o.MaxLineLen < 0 || o.MaxLineLen > MaxMaxLineLen {
		return fmt.Errorf("%w: max line length %d outside 0..%d", ErrInvalidOptions, o.MaxLineLen, MaxMaxLineLen)
	}
	if len(o.Pinned) > MaxPinned {
		return fmt.Errorf("%w: %d pinned checkpoints, limit %d", ErrInvalidOptions, len(o.Pinned), MaxPinned)
	}
	seen := make(map[uint64][]byte, len(o.Pinned))
	for _, cp := range o.Pinned {
		if cp.GetSeq() == 0 || len(cp.GetHead()) != HashLen {
			return fmt.Errorf("%w: pinned checkpoint %d has no valid seq and head", ErrInvalidOptions, cp.GetSeq())
		}
		if h, ok := seen[cp.GetSeq()]; ok && !bytes.Equal(h, cp.GetHead()) {
			return fmt.Errorf("%w: two pinned checkpoints for seq %d disagree", ErrInvalidOptions, cp.GetSeq())
		}
		seen[cp.GetSeq()] = cp.GetHead()
	}
	return nil
}

func (o VerifyOptions) withDefaults() VerifyOptions {
	if o.Window == 0 {
		o.Window = DefaultWindow
	}
	if o.MaxLineLen == 0 {
		o.MaxLineLen = DefaultMaxLineLen
	}
	return o
}

// Report summarises a verified stream. Finish fills it even when it
// returns an error, with what was verified up to the error.
type Report struct {
	// Entries is how many entries verified.
	Entries uint64
	// FirstSeq and LastSeq are the first and last verified entries' seq
	// (0 when there are none).
	FirstSeq, LastSeq uint64
	// Head is the hash of LastSeq (the marker's prev_hash, or the genesis
	// hash, when there are no entries).
	Head []byte
	// PrunedBefore is the marker's first_seq, or 0 without a marker.
	PrunedBefore uint64
	// Checkpoints is how many checkpoints verified, the marker's included.
	Checkpoints int
	// CoveredSeq is the highest seq a verified checkpoint covers: every
	// entry up to it is vouched for by a trusted signature.
	CoveredSeq uint64
	// Uncovered is how many entries follow CoveredSeq: hash-linked but not
	// signed.
	Uncovered uint64
	// Signers lists the fingerprints (KeyFingerprint) of the keys that
	// signed verified checkpoints, sorted.
	Signers []string
	// RequestsVerified is how many entries keep a signed request
	// statement that verified against VerifyOptions.ClientCerts;
	// RequestsUnchecked how many keep one made with a certificate not
	// given.
	RequestsVerified, RequestsUnchecked uint64
}

// Verifier checks an exported audit log, item by item, in the order the
// state machine applied them. Feed it AddMarker (optional, first),
// AddEntry and AddCheckpoint in stream order, then call Finish.
//
// The rules, in the order they are checked:
//
//  1. A marker, if any, comes first. It must pass VerifyMarker: its
//     checkpoint covers first_seq-1 with head == prev_hash and is signed by
//     a trusted key. The chain then starts at first_seq with prev_hash as
//     its previous hash, and everything up to first_seq-1 counts as covered.
//     Without a marker the chain starts at 1 with GenesisHash.
//  2. Entries carry consecutive sequence numbers from the start: a number
//     already seen is KindDuplicate; a missing one is KindGap; an entry that
//     is ahead of its place followed by one that belongs before it is
//     KindReorder. Telling a gap from a reorder needs the next item, so
//     those two are reported by the call after the entry that is ahead (or
//     by Finish).
//  3. Each entry's prev_hash equals the previous hash (KindBadLink), and
//     its hash equals ChainHash (KindBadHash).
//  4. A checkpoint passes ValidateCheckpoint, covers an entry already seen
//     and still in the window (the last Window entries, or the marker's
//     seq), its head equals that entry's hash (KindBadCheckpoint), its key
//     is trusted (KindUntrustedKey) and its signature verifies
//     (KindBadSignature). Checkpoints come after the entries they cover,
//     not necessarily right after.
//  5. An entry (or the marker's prev_hash) at the seq of a pinned
//     checkpoint must have the pinned head (KindPinned).
//  6. Finish fails with KindTruncated if the log ends before the highest
//     pinned seq, and reports the entries after the highest covered seq as
//     Report.Uncovered, or fails with KindUncoveredTail under StrictTail.
//
// Memory is bounded: the last Window hashes (32 bytes each), one held-back
// entry, the pinned heads, and one fingerprint per trusted key. After the first error every
// call returns that error.
//
// A Verifier is not safe for concurrent use.
type Verifier struct {
	trusted TrustedKeys
	opts    VerifyOptions

	started  bool
	finished bool
	err      *VerifyError

	anchorSeq  uint64 // seq whose hash is anchorHash: 0 (genesis) or first_seq-1
	anchorHash [HashLen]byte
	hasMarker  bool

	next     uint64        // seq the next entry must have
	lastHash [HashLen]byte // hash of next-1 (anchorHash before any entry)
	held     *cofferv1.AuditEntry

	entries  uint64
	firstSeq uint64

	ring     [][HashLen]byte // ring[(seq-ringBase)%window] is the hash of seq
	ringBase uint64

	checkpoints int
	covered     uint64
	signers     map[string]struct{}
	requests    requestChecks

	pinned    map[uint64][HashLen]byte
	maxPinned uint64
}

// NewVerifier returns a Verifier that accepts checkpoints signed by keys in
// trusted.
func NewVerifier(trusted TrustedKeys, opts VerifyOptions) (*Verifier, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	v := &Verifier{
		trusted: trusted,
		opts:    opts.withDefaults(),
		next:    1,
		signers: make(map[string]struct{}),
		pinned:  make(map[uint64][HashLen]byte, len(opts.Pinned)),
	}
	v.requests = newRequestChecks(opts.ClientCerts)
	for _, cp := range opts.Pinned {
		var h [HashLen]byte
		copy(h[:], cp.GetHead())
		v.pinned[cp.GetSeq()] = h
		v.maxPinned = max(v.maxPinned, cp.GetSeq())
	}
	return v, nil
}

// checkPinned compares the hash of seq with a pinned head, if there is one.
func (v *Verifier) checkPinned(seq uint64, h [HashLen]byte) error {
	if p, ok := v.pinned[seq]; ok && p != h {
		return v.fail(seq, KindPinned, "hash %x, but a kept checkpoint says %x: history was rewritten", h[:], p[:])
	}
	return nil
}

var errFinished = errors.New("audit: verifier already finished")

func (v *Verifier) fail(seq uint64, kind, format string, args ...any) error {
	v.err = &VerifyError{Seq: seq, Kind: kind, Detail: fmt.Sprintf(format, args...)}
	return v.err
}

// blocked returns the error a call must return before doing anything: the
// sticky error, the finished state, or a held-back entry that the current
// item proves to be a gap.
func (v *Verifier) blocked() error {
	if v.err != nil {
		return v.err
	}
	if v.finished {
		return errFinished
	}
	return nil
}

func (v *Verifier) gapFromHeld() error {
	h := v.held
	v.held = nil
	return v.fail(v.next, KindGap, "entry %d is missing: the next entry is %d", v.next, h.GetSeq())
}

// AddMarker starts the stream at a prune marker. It must be the first item.
func (v *Verifier) AddMarker(m *cofferv1.AuditPruneMarker) error {
	if err := v.blocked(); err != nil {
		return err
	}
	if v.started {
		return v.fail(m.GetFirstSeq(), KindBadMarker, "a prune marker must be the first item")
	}
	v.started = true
	if err := ValidateMarker(m); err != nil {
		return v.fail(m.GetFirstSeq(), KindBadMarker, "%v", err)
	}
	cp := m.GetCheckpoint()
	if err := v.checkSignature(cp); err != nil {
		return err
	}
	var anchor [HashLen]byte
	copy(anchor[:], m.GetPrevHash())
	if err := v.checkPinned(cp.GetSeq(), anchor); err != nil {
		return err
	}
	v.hasMarker = true
	v.anchorSeq = cp.GetSeq()
	copy(v.anchorHash[:], m.GetPrevHash())
	v.lastHash = v.anchorHash
	v.next = m.GetFirstSeq()
	v.covered = cp.GetSeq()
	v.checkpoints++
	return nil
}

// AddEntry checks the next entry of the chain.
func (v *Verifier) AddEntry(e *cofferv1.AuditEntry) error {
	if err := v.blocked(); err != nil {
		return err
	}
	if e == nil {
		return fmt.Errorf("audit: nil entry")
	}
	v.started = true
	seq := e.GetSeq()
	if v.held != nil {
		h := v.held
		if seq < h.GetSeq() {
			v.held = nil
			return v.fail(v.next, KindReorder, "entry %d comes after entry %d", seq, h.GetSeq())
		}
		return v.gapFromHeld()
	}
	switch {
	case seq > v.next:
		// A gap, or the first of two swapped entries: the next item tells.
		v.held = e
		return nil
	case seq < v.next:
		return v.fail(seq, KindDuplicate, "entry %d appears again after entry %d", seq, v.next-1)
	}
	if !bytes.Equal(e.GetPrevHash(), v.lastHash[:]) {
		return v.fail(seq, KindBadLink, "prev_hash %x, want %x (the hash of entry %d)", e.GetPrevHash(), v.lastHash[:], seq-1)
	}
	sum := chainSum(e)
	if !bytes.Equal(e.GetHash(), sum[:]) {
		return v.fail(seq, KindBadHash, "hash %x, recomputed %x: the entry was altered", e.GetHash(), sum[:])
	}
	if err := v.checkPinned(seq, sum); err != nil {
		return err
	}
	if err := v.checkRequest(e); err != nil {
		return err
	}
	v.remember(seq, sum)
	v.lastHash = sum
	if v.entries == 0 {
		v.firstSeq = seq
	}
	v.entries++
	v.next = seq + 1
	return nil
}

func (v *Verifier) remember(seq uint64, h [HashLen]byte) {
	if len(v.ring) == 0 {
		v.ringBase = seq
	}
	i := (seq - v.ringBase) % uint64(v.opts.Window)
	if i == uint64(len(v.ring)) {
		v.ring = append(v.ring, h)
	} else {
		v.ring[i] = h
	}
}

// hashAt returns the hash of entry seq if it is still known.
func (v *Verifier) hashAt(seq uint64) ([HashLen]byte, bool) {
	if v.hasMarker && seq == v.anchorSeq {
		return v.anchorHash, true
	}
	if v.entries == 0 || seq < v.ringBase || seq >= v.next || v.next-seq > uint64(v.opts.Window) {
		return [HashLen]byte{}, false
	}
	return v.ring[(seq-v.ringBase)%uint64(v.opts.Window)], true
}

// AddCheckpoint checks a checkpoint against the entries seen so far and
// the trusted keys.
func (v *Verifier) AddCheckpoint(cp *cofferv1.AuditCheckpoint) error {
	if err := v.blocked(); err != nil {
		return err
	}
	if v.held != nil {
		return v.gapFromHeld()
	}
	v.started = true
	seq := cp.GetSeq()
	if err := ValidateCheckpoint(cp); err != nil {
		return v.fail(seq, KindBadCheckpoint, "%v", err)
	}
	last := v.next - 1
	if seq > last {
		return v.fail(seq, KindBadCheckpoint, "checkpoint covers entry %d, but the last entry so far is %d", seq, last)
	}
	h, ok := v.hashAt(seq)
	if !ok {
		first := v.anchorSeq + 1
		if v.hasMarker {
			first = v.anchorSeq
		}
		if seq < first {
			return v.fail(seq, KindBadCheckpoint, "checkpoint covers entry %d, before the start of the log (%d)", seq, first)
		}
		return v.fail(seq, KindBadCheckpoint, "checkpoint covers entry %d, more than %d entries behind the last entry %d (the verification window)", seq, v.opts.Window, last)
	}
	if !bytes.Equal(cp.GetHead(), h[:]) {
		return v.fail(seq, KindBadCheckpoint, "head %x, but entry %d has hash %x", cp.GetHead(), seq, h[:])
	}
	if err := v.checkSignature(cp); err != nil {
		return err
	}
	v.checkpoints++
	if seq > v.covered {
		v.covered = seq
	}
	return nil
}

func (v *Verifier) checkSignature(cp *cofferv1.AuditCheckpoint) error {
	err := VerifyCheckpoint(cp, v.trusted)
	switch {
	case err == nil:
		v.signers[KeyFingerprint(cp.GetPublicKey())] = struct{}{}
		return nil
	case errors.Is(err, ErrUntrustedKey), errors.Is(err, ErrUnsupportedKey):
		return v.fail(cp.GetSeq(), KindUntrustedKey, "checkpoint by %q: %v", cp.GetSigner(), err)
	case errors.Is(err, ErrBadSignature):
		return v.fail(cp.GetSeq(), KindBadSignature, "checkpoint by %q: %v", cp.GetSigner(), err)
	default:
		return v.fail(cp.GetSeq(), KindBadCheckpoint, "%v", err)
	}
}

// Add feeds one item read from an export.
func (v *Verifier) Add(it Item) error {
	switch {
	case it.Entry != nil:
		return v.AddEntry(it.Entry)
	case it.Checkpoint != nil:
		return v.AddCheckpoint(it.Checkpoint)
	case it.Marker != nil:
		return v.AddMarker(it.Marker)
	}
	return fmt.Errorf("audit: empty item")
}

// Finish ends the stream and returns the report, with the first error found
// (a *VerifyError), if any. Calls after Finish return an error.
func (v *Verifier) Finish() (Report, error) {
	if v.err == nil && !v.finished && v.held != nil {
		v.gapFromHeld()
	}
	v.finished = true
	r := v.report()
	if v.err != nil {
		return r, v.err
	}
	if end := v.next - 1; v.maxPinned > end {
		v.fail(end+1, KindTruncated, "the log ends at %d, but a kept checkpoint covers %d", end, v.maxPinned)
		return r, v.err
	}
	if v.opts.StrictTail && r.Uncovered > 0 {
		return r, &VerifyError{Seq: v.covered + 1, Kind: KindUncoveredTail,
			Detail: fmt.Sprintf("entries %d..%d are not covered by a checkpoint", v.covered+1, r.LastSeq)}
	}
	return r, nil
}

func (v *Verifier) report() Report {
	r := Report{
		Entries:     v.entries,
		Head:        bytes.Clone(v.lastHash[:]),
		Checkpoints: v.checkpoints,
		CoveredSeq:  v.covered,

		RequestsVerified:  v.requests.verified,
		RequestsUnchecked: v.requests.unchecked,
	}
	if v.entries > 0 {
		r.FirstSeq = v.firstSeq
		r.LastSeq = v.next - 1
		if r.LastSeq > v.covered {
			r.Uncovered = r.LastSeq - v.covered
		}
	}
	if v.hasMarker {
		r.PrunedBefore = v.anchorSeq + 1
	}
	for s := range v.signers {
		r.Signers = append(r.Signers, s)
	}
	sort.Strings(r.Signers)
	return r
}
