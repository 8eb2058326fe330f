package audit

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"google.golang.org/protobuf/proto"
)

func TestJSONL_Format(t *testing.T) {
	e := proposal(6)
	Link(GenesisHash(), 1, e)
	line := itemLine(t, Item{Entry: e})
	for _, want := range []string{
		`{"type":"entry","seq":1,"time":"2023-11-14T22:13:20.129456789Z","time_unix_nano":"1700000000129456789",`,
		`"outcome":"denied"`, `"consistency":"unspecified"`,
		`"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000"`,
		`"reason":"no grant for resource \"payments\" <&>"`,
	} {
		if !strings.Contains(line, want) {
			t.Errorf("line lacks %s:\n%s", want, line)
		}
	}
}

func TestJSONL_RoundTripOddValues(t *testing.T) {
	e := &cofferv1.AuditEntry{
		Seq:          ^uint64(0),
		TimeUnixNano: -1,
		Node:         "ünïcode \u2028 \t\n\"\\",
		Caller:       "client:x",
		Operation:    "get",
		Outcome:      cofferv1.AuditOutcome(-7), // a value this version does not know
		Consistency:  cofferv1.Consistency(42),
		Hash:         []byte{0},
	}
	cp := &cofferv1.AuditCheckpoint{Seq: 1, TimeUnixNano: -1 << 63, Signer: "s"}
	m := &cofferv1.AuditPruneMarker{FirstSeq: 2, PrevHash: []byte{1, 2}}
	lines := exportLines(t, []Item{{Entry: e}, {Checkpoint: cp}, {Marker: m}})
	r := NewReader(strings.NewReader(joinLines(lines)))
	var got []Item
	for {
		it, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, it)
	}
	if len(got) != 3 || !proto.Equal(got[0].Entry, e) || !proto.Equal(got[1].Checkpoint, cp) || !proto.Equal(got[2].Marker, m) {
		t.Fatalf("round trip differs:\n%v\n%v", lines, got)
	}
	if !strings.Contains(lines[0], `"outcome":"-7"`) || !strings.Contains(lines[0], `"consistency":"42"`) {
		t.Fatalf("unknown enum values: %s", lines[0])
	}
}

func TestJSONL_ReaderRefuses(t *testing.T) {
	e := proposal(1)
	Link(GenesisHash(), 1, e)
	good := itemLine(t, Item{Entry: e})
	if _, err := ParseLine([]byte(good)); err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"duplicate field":      strings.Replace(good, `"node":`, `"caller":"client:x","node":`, 1),
		"case-folded field":    strings.Replace(good, `"node":`, `"NODE":`, 1),
		"case-folded twin":     strings.Replace(good, `{"type":"entry",`, `{"type":"entry","Caller":"client:x",`, 1),
		"unknown field":        strings.Replace(good, `"node":`, `"extra":1,"node":`, 1),
		"checkpoint field":     strings.Replace(good, `"node":`, `"signature":"","node":`, 1),
		"nested value":         strings.Replace(good, `"node":"node-2"`, `"node":{"a":1}`, 1),
		"array value":          strings.Replace(good, `"node":"node-2"`, `"node":["a"]`, 1),
		"trailing data":        good + `{}`,
		"no type":              strings.Replace(good, `"type":"entry",`, ``, 1),
		"unknown type":         strings.Replace(good, `"type":"entry"`, `"type":"other"`, 1),
		"type not a string":    strings.Replace(good, `"type":"entry"`, `"type":1`, 1),
		"not hex":              strings.Replace(good, `"prev_hash":"00`, `"prev_hash":"zz`, 1),
		"odd hex":              strings.Replace(good, `"prev_hash":"00`, `"prev_hash":"0`, 1),
		"time mismatch":        strings.Replace(good, `"time":"2023-11-14T22:13:20.124456789Z"`, `"time":"2023-11-14T22:13:20.124456788Z"`, 1),
		"time not rfc3339":     strings.Replace(good, `"time":"2023-11-14T22:13:20.124456789Z"`, `"time":"yesterday"`, 1),
		"nanos as number":      strings.Replace(good, `"time_unix_nano":"1700000000124456789"`, `"time_unix_nano":1700000000124456789`, 1),
		"nanos not decimal":    strings.Replace(good, `"time_unix_nano":"1700000000124456789"`, `"time_unix_nano":"1.7e18"`, 1),
		"seq as string":        strings.Replace(good, `"seq":1`, `"seq":"1"`, 1),
		"negative seq":         strings.Replace(good, `"seq":1`, `"seq":-1`, 1),
		"fractional seq":       strings.Replace(good, `"seq":1`, `"seq":1.5`, 1),
		"unknown outcome word": strings.Replace(good, `"outcome":"granted"`, `"outcome":"allowed"`, 1),
		"not an object":        `[1,2]`,
		"not json":             `type=entry`,
	}
	for name, line := range cases {
		if line == good {
			t.Fatalf("%s: the edit did not apply", name)
		}
		if _, err := ParseLine([]byte(line)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed\n%s", name, err, line)
		}
	}
	// A marker's checkpoint is checked the same way.
	m := &cofferv1.AuditPruneMarker{FirstSeq: 2, PrevHash: GenesisHash(), Checkpoint: &cofferv1.AuditCheckpoint{Seq: 1}}
	ml := itemLine(t, Item{Marker: m})
	for name, line := range map[string]string{
		"unknown nested field": strings.Replace(ml, `"signer":`, `"x":1,"signer":`, 1),
		"nested type":          strings.Replace(ml, `"checkpoint":{`, `"checkpoint":{"type":"checkpoint",`, 1),
		"duplicate nested":     strings.Replace(ml, `"signer":`, `"seq":1,"signer":`, 1),
		"deeper nesting":       strings.Replace(ml, `"signer":""`, `"signer":{}`, 1),
	} {
		if _, err := ParseLine([]byte(line)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v\n%s", name, err, line)
		}
	}
}

func TestJSONL_ReaderLines(t *testing.T) {
	e := proposal(1)
	Link(GenesisHash(), 1, e)
	good := itemLine(t, Item{Entry: e})

	// Blank lines are skipped, CRLF accepted, a last line without newline read.
	r := NewReader(strings.NewReader("\n" + good + "\r\n\n" + good))
	for _, wantLine := range []int{2, 4} {
		it, err := r.Next()
		if err != nil || it.Line != wantLine || !proto.Equal(it.Entry, e) {
			t.Fatalf("got %v line %d, %v; want line %d", it.Entry, it.Line, err, wantLine)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}

	// The limit: a line of exactly the limit passes, one byte more fails,
	// and the error sticks.
	r = NewReaderSize(strings.NewReader(good+"\n"), len(good))
	if _, err := r.Next(); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	r = NewReaderSize(strings.NewReader(good+"\n"+good+"\n"), len(good)-1)
	if _, err := r.Next(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := r.Next(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("not sticky: %v", err)
	}
	huge := strings.Repeat("x", 3*len(good))
	r = NewReaderSize(strings.NewReader(huge), len(good))
	if _, err := r.Next(); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("far over the limit: %v", err)
	}

	// A malformed line names its number.
	r = NewReader(strings.NewReader(good + "\nnope\n"))
	r.Next()
	if _, err := r.Next(); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("malformed: %v", err)
	}
}

// The longest entry Validate admits fits the default line limit even when
// every byte needs escaping.
func TestJSONL_DefaultLimitFitsLargestEntry(t *testing.T) {
	worst := strings.Repeat("\x01", MaxFieldLen)
	e := &cofferv1.AuditEntry{
		TimeUnixNano: -1 << 63, Node: worst, Caller: worst, Operation: worst, Gkid: worst, Resource: worst,
		Policy: worst, Client: worst, Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_FAILED, Reason: worst,
		RequestId: worst, DetailHmac: make([]byte, HashLen),
	}
	if err := Validate(e); err != nil {
		t.Fatal(err)
	}
	Link(GenesisHash(), ^uint64(0), e)
	line := itemLine(t, Item{Entry: e})
	if len(line) > DefaultMaxLineLen/2 {
		t.Fatalf("worst-case line is %d bytes, limit %d", len(line), DefaultMaxLineLen)
	}
	it, err := ParseLine([]byte(line))
	if err != nil || !proto.Equal(it.Entry, e) {
		t.Fatalf("%v", err)
	}
}

func TestJSONL_WriterRefusesInvalidUTF8(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WriteEntry(&cofferv1.AuditEntry{Reason: "\xff"}); err == nil {
		t.Fatal("entry with invalid UTF-8 written")
	}
	if err := w.WriteCheckpoint(&cofferv1.AuditCheckpoint{Signer: "\xff"}); err == nil {
		t.Fatal("checkpoint with invalid UTF-8 written")
	}
	if err := w.Write(Item{}); err == nil {
		t.Fatal("empty item written")
	}
}
