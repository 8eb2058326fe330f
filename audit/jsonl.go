package audit

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
	"unicode/utf8"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// The export format is JSON Lines (UTF-8, one object per line, "\n"
// between lines). Each object has a "type" of "entry", "checkpoint" or
// "marker" and the fields of that message under their protobuf names:
//
//	{"type":"entry","seq":1,"time":"2023-11-14T22:13:20.123456789Z","time_unix_nano":"1700000000123456789",
//	 "node":"node-1","caller":"client:app","operation":"get","gkid":"…","resource":"…","policy":"…",
//	 "client":"","outcome":"granted","reason":"","request_id":"…","consistency":"linearizable",
//	 "prev_hash":"00…","hash":"…","detail_hmac":""}
//	{"type":"checkpoint","seq":100,"head":"…","time":"…","time_unix_nano":"…","signer":"node-1",
//	 "signature":"…","public_key":"…"}
//	{"type":"marker","first_seq":301,"prev_hash":"…","checkpoint":{"seq":300,"head":"…",…}}
//
//   - Bytes are lowercase hex ("" when empty).
//   - time_unix_nano is the hashed value, a decimal string (JSON numbers
//     lose precision past 2^53 in many parsers). "time" is the same instant
//     in RFC 3339 with nine fractional digits, UTC, for people; a reader
//     refuses a line where the two disagree.
//   - seq and first_seq are JSON numbers.
//   - outcome is "unspecified", "granted", "denied" or "failed";
//     consistency "unspecified", "linearizable" or "stale". A value this
//     version does not name is written as its decimal number.
//   - Strings are the field values, JSON-escaped.
//
// A Reader refuses unknown fields, a field given twice, any other nesting
// and lines over its limit, so that what an auditor reads is exactly what is
// hashed. Missing fields are zero. Reading an export and writing it again
// gives the same items, hence the same hashes.

const (
	itemEntry      = "entry"
	itemCheckpoint = "checkpoint"
	itemMarker     = "marker"
)

// timeLayout is RFC 3339 with exactly nine fractional digits.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// Item is one line of an export: exactly one of Entry, Checkpoint and
// Marker is set.
type Item struct {
	Entry      *cofferv1.AuditEntry
	Checkpoint *cofferv1.AuditCheckpoint
	Marker     *cofferv1.AuditPruneMarker
	// Line is the 1-based line number the item was read from (0 for items
	// not read by a Reader).
	Line int
}

type jsonEntry struct {
	Type         string `json:"type"`
	Seq          uint64 `json:"seq"`
	Time         string `json:"time"`
	TimeUnixNano string `json:"time_unix_nano"`
	Node         string `json:"node"`
	Caller       string `json:"caller"`
	Operation    string `json:"operation"`
	GKID         string `json:"gkid"`
	Resource     string `json:"resource"`
	Policy       string `json:"policy"`
	Client       string `json:"client"`
	Outcome      string `json:"outcome"`
	Reason       string `json:"reason"`
	RequestID    string `json:"request_id"`
	Consistency  string `json:"consistency"`
	PrevHash     string `json:"prev_hash"`
	Hash         string `json:"hash"`
	DetailHMAC   string `json:"detail_hmac"`
	// KeyVersion is written only when set, as the chain encodes it.
	KeyVersion uint32 `json:"key_version,omitempty"`
	// RequestStatement and RequestSignature (base64) are written only
	// when set, as the chain encodes them.
	RequestStatement []byte `json:"request_statement,omitempty"`
	RequestSignature []byte `json:"request_signature,omitempty"`
}

type jsonCheckpoint struct {
	Seq          uint64 `json:"seq"`
	Head         string `json:"head"`
	Time         string `json:"time"`
	TimeUnixNano string `json:"time_unix_nano"`
	Signer       string `json:"signer"`
	Signature    string `json:"signature"`
	PublicKey    string `json:"public_key"`
}

type jsonCheckpointLine struct {
	Type string `json:"type"`
	jsonCheckpoint
}

type jsonMarker struct {
	Type       string          `json:"type"`
	FirstSeq   uint64          `json:"first_seq"`
	PrevHash   string          `json:"prev_hash"`
	Checkpoint *jsonCheckpoint `json:"checkpoint"`
}

// Allowed keys per object, for the strict shape check.
var (
	entryKeys = keySet("type", "seq", "time", "time_unix_nano", "node", "caller", "operation", "gkid",
		"resource", "policy", "client", "outcome", "reason", "request_id", "consistency",
		"prev_hash", "hash", "detail_hmac", "key_version", "request_statement", "request_signature")
	checkpointKeys     = keySet("type", "seq", "head", "time", "time_unix_nano", "signer", "signature", "public_key")
	nestedCheckpointKs = keySet("seq", "head", "time", "time_unix_nano", "signer", "signature", "public_key")
	markerKeys         = keySet("type", "first_seq", "prev_hash", "checkpoint")
)

func keySet(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

var outcomeNames = map[cofferv1.AuditOutcome]string{
	cofferv1.AuditOutcome_AUDIT_OUTCOME_UNSPECIFIED: "unspecified",
	cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED:     "granted",
	cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED:      "denied",
	cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED:      "failed",
}

var consistencyNames = map[cofferv1.Consistency]string{
	cofferv1.Consistency_CONSISTENCY_UNSPECIFIED:  "unspecified",
	cofferv1.Consistency_CONSISTENCY_LINEARIZABLE: "linearizable",
	cofferv1.Consistency_CONSISTENCY_STALE:        "stale",
}

func enumName[T ~int32](names map[T]string, v T) string {
	if s, ok := names[v]; ok {
		return s
	}
	return strconv.FormatInt(int64(v), 10)
}

func parseEnum[T ~int32](names map[T]string, field, s string) (T, error) {
	if s == "" {
		return 0, nil
	}
	for v, n := range names {
		if n == s {
			return v, nil
		}
	}
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s %q is not a known name or a number", field, s)
	}
	return T(n), nil
}

func formatTime(n int64) string { return time.Unix(0, n).UTC().Format(timeLayout) }

func parseTime(field, display, raw string) (int64, error) {
	var n int64
	if raw != "" {
		var err error
		if n, err = strconv.ParseInt(raw, 10, 64); err != nil {
			return 0, fmt.Errorf("%s %q is not a decimal int64", field, raw)
		}
	}
	if display != "" {
		t, err := time.Parse(time.RFC3339Nano, display)
		if err != nil {
			return 0, fmt.Errorf("time %q is not RFC 3339", display)
		}
		if !t.Equal(time.Unix(0, n)) {
			return 0, fmt.Errorf("time %q disagrees with %s %d", display, field, n)
		}
	}
	return n, nil
}

func parseHex(field, s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s is not hex", field)
	}
	return b, nil
}

// Writer writes an export. It buffers; call Flush at the end. A Writer is
// not safe for concurrent use.
type Writer struct {
	bw  *bufio.Writer
	enc *json.Encoder
}

// NewWriter returns a Writer to w.
func NewWriter(w io.Writer) *Writer {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	return &Writer{bw: bw, enc: enc}
}

// WriteEntry writes one entry line. It refuses strings that are not valid
// UTF-8 (JSON cannot carry them unchanged).
func (w *Writer) WriteEntry(e *cofferv1.AuditEntry) error {
	if e == nil {
		return fmt.Errorf("audit: write: nil entry")
	}
	for _, s := range []string{e.GetNode(), e.GetCaller(), e.GetOperation(), e.GetGkid(), e.GetResource(),
		e.GetPolicy(), e.GetClient(), e.GetReason(), e.GetRequestId()} {
		if !utf8.ValidString(s) {
			return fmt.Errorf("audit: write entry %d: a string field is not valid UTF-8", e.GetSeq())
		}
	}
	return w.enc.Encode(jsonEntry{
		Type:         itemEntry,
		Seq:          e.GetSeq(),
		Time:         formatTime(e.GetTimeUnixNano()),
		TimeUnixNano: strconv.FormatInt(e.GetTimeUnixNano(), 10),
		Node:         e.GetNode(),
		Caller:       e.GetCaller(),
		Operation:    e.GetOperation(),
		GKID:         e.GetGkid(),
		Resource:     e.GetResource(),
		Policy:       e.GetPolicy(),
		Client:       e.GetClient(),
		Outcome:      enumName(outcomeNames, e.GetOutcome()),
		Reason:       e.GetReason(),
		RequestID:    e.GetRequestId(),
		Consistency:  enumName(consistencyNames, e.GetConsistency()),
		PrevHash:     hex.EncodeToString(e.GetPrevHash()),
		Hash:         hex.EncodeToString(e.GetHash()),
		DetailHMAC:   hex.EncodeToString(e.GetDetailHmac()),
		KeyVersion:   e.GetKeyVersion(),

		RequestStatement: e.GetRequestStatement(),
		RequestSignature: e.GetRequestSignature(),
	})
}

func toJSONCheckpoint(cp *cofferv1.AuditCheckpoint) (jsonCheckpoint, error) {
	if !utf8.ValidString(cp.GetSigner()) {
		return jsonCheckpoint{}, fmt.Errorf("audit: write checkpoint %d: signer is not valid UTF-8", cp.GetSeq())
	}
	return jsonCheckpoint{
		Seq:          cp.GetSeq(),
		Head:         hex.EncodeToString(cp.GetHead()),
		Time:         formatTime(cp.GetTimeUnixNano()),
		TimeUnixNano: strconv.FormatInt(cp.GetTimeUnixNano(), 10),
		Signer:       cp.GetSigner(),
		Signature:    hex.EncodeToString(cp.GetSignature()),
		PublicKey:    hex.EncodeToString(cp.GetPublicKey()),
	}, nil
}

// WriteCheckpoint writes one checkpoint line.
func (w *Writer) WriteCheckpoint(cp *cofferv1.AuditCheckpoint) error {
	if cp == nil {
		return fmt.Errorf("audit: write: nil checkpoint")
	}
	j, err := toJSONCheckpoint(cp)
	if err != nil {
		return err
	}
	return w.enc.Encode(jsonCheckpointLine{Type: itemCheckpoint, jsonCheckpoint: j})
}

// WriteMarker writes one marker line (the first line of a pruned export).
func (w *Writer) WriteMarker(m *cofferv1.AuditPruneMarker) error {
	if m == nil {
		return fmt.Errorf("audit: write: nil marker")
	}
	out := jsonMarker{Type: itemMarker, FirstSeq: m.GetFirstSeq(), PrevHash: hex.EncodeToString(m.GetPrevHash())}
	if cp := m.GetCheckpoint(); cp != nil {
		j, err := toJSONCheckpoint(cp)
		if err != nil {
			return err
		}
		out.Checkpoint = &j
	}
	return w.enc.Encode(out)
}

// Write writes whichever message it holds.
func (w *Writer) Write(it Item) error {
	switch {
	case it.Entry != nil:
		return w.WriteEntry(it.Entry)
	case it.Checkpoint != nil:
		return w.WriteCheckpoint(it.Checkpoint)
	case it.Marker != nil:
		return w.WriteMarker(it.Marker)
	}
	return fmt.Errorf("audit: write: empty item")
}

// Flush writes out buffered lines.
func (w *Writer) Flush() error { return w.bw.Flush() }

// Reader reads an export line by line. A Reader is not safe for concurrent
// use.
type Reader struct {
	br     *bufio.Reader
	maxLen int
	line   int
	err    error
}

// NewReader returns a Reader with the DefaultMaxLineLen limit.
func NewReader(r io.Reader) *Reader { return NewReaderSize(r, DefaultMaxLineLen) }

// NewReaderSize returns a Reader that refuses lines longer than maxLineLen
// bytes (without the newline); maxLineLen <= 0 means DefaultMaxLineLen. Its
// buffer is maxLineLen+2 bytes.
func NewReaderSize(r io.Reader, maxLineLen int) *Reader {
	if maxLineLen <= 0 {
		maxLineLen = DefaultMaxLineLen
	}
	return &Reader{br: bufio.NewReaderSize(r, maxLineLen+2), maxLen: maxLineLen}
}

// Next returns the next item, skipping empty lines. It returns io.EOF at the
// end. Any other error wraps ErrMalformed or ErrLineTooLong (or is the
// underlying reader's) and names the line; it is returned again by every
// later call.
func (r *Reader) Next() (Item, error) {
	for r.err == nil {
		raw, err := r.br.ReadSlice('\n')
		if len(raw) > 0 {
			r.line++
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			r.err = fmt.Errorf("%w: line %d: over %d bytes", ErrLineTooLong, r.line, r.maxLen)
			return Item{}, r.err
		case err == io.EOF:
			r.err = io.EOF
		case err != nil:
			r.err = fmt.Errorf("audit: reading line %d: %w", r.line+1, err)
			return Item{}, r.err
		}
		line := bytes.TrimSuffix(bytes.TrimSuffix(raw, []byte("\n")), []byte("\r"))
		if len(line) == 0 {
			continue
		}
		if len(line) > r.maxLen {
			r.err = fmt.Errorf("%w: line %d: over %d bytes", ErrLineTooLong, r.line, r.maxLen)
			return Item{}, r.err
		}
		it, perr := ParseLine(line)
		if perr != nil {
			r.err = fmt.Errorf("line %d: %w", r.line, perr)
			return Item{}, r.err
		}
		it.Line = r.line
		return it, nil
	}
	return Item{}, r.err
}

// ParseLine parses one export line (without its newline). Errors wrap
// ErrMalformed.
func ParseLine(line []byte) (Item, error) {
	typ, err := checkShape(line)
	if err != nil {
		return Item{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	it, err := decodeLine(typ, line)
	if err != nil {
		return Item{}, fmt.Errorf("%w: %s: %v", ErrMalformed, typ, err)
	}
	return it, nil
}

func decodeLine(typ string, line []byte) (Item, error) {
	switch typ {
	case itemEntry:
		var j jsonEntry
		if err := strictUnmarshal(line, &j); err != nil {
			return Item{}, err
		}
		e, err := fromJSONEntry(&j)
		return Item{Entry: e}, err
	case itemCheckpoint:
		var j jsonCheckpointLine
		if err := strictUnmarshal(line, &j); err != nil {
			return Item{}, err
		}
		cp, err := fromJSONCheckpoint(&j.jsonCheckpoint)
		return Item{Checkpoint: cp}, err
	case itemMarker:
		var j jsonMarker
		if err := strictUnmarshal(line, &j); err != nil {
			return Item{}, err
		}
		m := &cofferv1.AuditPruneMarker{FirstSeq: j.FirstSeq}
		var err error
		if m.PrevHash, err = parseHex("prev_hash", j.PrevHash); err != nil {
			return Item{}, err
		}
		if j.Checkpoint != nil {
			if m.Checkpoint, err = fromJSONCheckpoint(j.Checkpoint); err != nil {
				return Item{}, fmt.Errorf("checkpoint: %v", err)
			}
		}
		return Item{Marker: m}, nil
	}
	return Item{}, fmt.Errorf("unknown type %q", typ)
}

func strictUnmarshal(line []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func fromJSONEntry(j *jsonEntry) (*cofferv1.AuditEntry, error) {
	e := &cofferv1.AuditEntry{
		Seq:        j.Seq,
		Node:       j.Node,
		Caller:     j.Caller,
		Operation:  j.Operation,
		Gkid:       j.GKID,
		Resource:   j.Resource,
		Policy:     j.Policy,
		Client:     j.Client,
		Reason:     j.Reason,
		RequestId:  j.RequestID,
		KeyVersion: j.KeyVersion,

		RequestStatement: j.RequestStatement,
		RequestSignature: j.RequestSignature,
	}
	var err error
	if e.TimeUnixNano, err = parseTime("time_unix_nano", j.Time, j.TimeUnixNano); err != nil {
		return nil, err
	}
	if e.Outcome, err = parseEnum(outcomeNames, "outcome", j.Outcome); err != nil {
		return nil, err
	}
	if e.Consistency, err = parseEnum(consistencyNames, "consistency", j.Consistency); err != nil {
		return nil, err
	}
	if e.PrevHash, err = parseHex("prev_hash", j.PrevHash); err != nil {
		return nil, err
	}
	if e.Hash, err = parseHex("hash", j.Hash); err != nil {
		return nil, err
	}
	if e.DetailHmac, err = parseHex("detail_hmac", j.DetailHMAC); err != nil {
		return nil, err
	}
	return e, nil
}

func fromJSONCheckpoint(j *jsonCheckpoint) (*cofferv1.AuditCheckpoint, error) {
	cp := &cofferv1.AuditCheckpoint{Seq: j.Seq, Signer: j.Signer}
	var err error
	if cp.TimeUnixNano, err = parseTime("time_unix_nano", j.Time, j.TimeUnixNano); err != nil {
		return nil, err
	}
	if cp.Head, err = parseHex("head", j.Head); err != nil {
		return nil, err
	}
	if cp.Signature, err = parseHex("signature", j.Signature); err != nil {
		return nil, err
	}
	if cp.PublicKey, err = parseHex("public_key", j.PublicKey); err != nil {
		return nil, err
	}
	return cp, nil
}

// checkShape walks the line's JSON tokens before it is decoded. It requires
// one object, field names from the type's exact set (encoding/json would
// match names case-insensitively), no name twice (encoding/json would keep
// the last, while another tool shows the first), scalar values except a
// marker's checkpoint object, and nothing after the object. It returns
// the type.
func checkShape(line []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return "", fmt.Errorf("not a JSON object")
	}
	var typ string
	var top, nested []string
	seen := map[string]bool{}
	for dec.More() {
		key, err := nextKey(dec, seen)
		if err != nil {
			return "", err
		}
		top = append(top, key)
		tok, err := dec.Token()
		if err != nil {
			return "", err
		}
		switch {
		case tok == json.Delim('{') && key == "checkpoint":
			nseen := map[string]bool{}
			for dec.More() {
				k, err := nextKey(dec, nseen)
				if err != nil {
					return "", err
				}
				nested = append(nested, k)
				t, err := dec.Token()
				if err != nil {
					return "", err
				}
				if _, ok := t.(json.Delim); ok {
					return "", fmt.Errorf("checkpoint.%s: unexpected nested value", k)
				}
			}
			if _, err := dec.Token(); err != nil {
				return "", err
			}
		case key == "type":
			s, ok := tok.(string)
			if !ok {
				return "", fmt.Errorf("type is not a string")
			}
			typ = s
		default:
			if _, ok := tok.(json.Delim); ok {
				return "", fmt.Errorf("%s: unexpected nested value", key)
			}
		}
	}
	if _, err := dec.Token(); err != nil {
		return "", err
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", fmt.Errorf("data after the object")
	}
	var allowed map[string]bool
	switch typ {
	case itemEntry:
		allowed = entryKeys
	case itemCheckpoint:
		allowed = checkpointKeys
	case itemMarker:
		allowed = markerKeys
	case "":
		return "", fmt.Errorf("no type")
	default:
		return "", fmt.Errorf("unknown type %q", typ)
	}
	for _, k := range top {
		if !allowed[k] {
			return "", fmt.Errorf("unknown field %q in a %s", k, typ)
		}
	}
	for _, k := range nested {
		if !nestedCheckpointKs[k] {
			return "", fmt.Errorf("unknown field %q in a marker's checkpoint", k)
		}
	}
	return typ, nil
}

func nextKey(dec *json.Decoder, seen map[string]bool) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", err
	}
	key, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("bad field name")
	}
	if seen[key] {
		return "", fmt.Errorf("field %q given twice", key)
	}
	seen[key] = true
	return key, nil
}

// VerifyJSONL reads an export from r and verifies it with a Verifier. It
// returns the Verifier's report and error; a line that does not parse ends
// the check with an error wrapping ErrMalformed or ErrLineTooLong (and the
// report of what verified before it).
func VerifyJSONL(r io.Reader, trusted TrustedKeys, opts VerifyOptions) (Report, error) {
	v, err := NewVerifier(trusted, opts)
	if err != nil {
		return Report{}, err
	}
	rd := NewReaderSize(r, v.opts.MaxLineLen)
	for {
		it, err := rd.Next()
		if err == io.EOF {
			return v.Finish()
		}
		if err != nil {
			rep, _ := v.Finish()
			return rep, err
		}
		if err := v.Add(it); err != nil {
			rep, _ := v.Finish()
			return rep, err
		}
	}
}
