package fsm

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// timeLog applies audit batches to an FSM and remembers every entry's time,
// to check queries against a plain filter over the whole log.
type timeLog struct {
	t     *testing.T
	f     *FSM
	index uint64
	times map[uint64]int64 // seq -> time
	seq   uint64
}

func newTimeLog(t *testing.T) *timeLog {
	return &timeLog{t: t, f: mustOpen(t), times: map[uint64]int64{}}
}

func (l *timeLog) apply(d []byte) Result {
	l.t.Helper()
	l.index++
	return l.f.Apply(logs(l.index, d)[0]).(Result)
}

// batch links one entry per time given.
func (l *timeLog) batch(times ...int64) {
	l.t.Helper()
	c := &cofferv1.AuditBatchCommand{}
	for _, at := range times {
		c.Entries = append(c.Entries, writeEntry("n1", at, fmt.Sprintf("req-%d", l.seq+uint64(len(c.Entries))+1)))
	}
	d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, c)
	if err != nil {
		l.t.Fatal(err)
	}
	if r := l.apply(d); r.Err != nil {
		l.t.Fatal(r.Err)
	}
	for _, at := range times {
		l.seq++
		l.times[l.seq] = at
	}
}

// checkpoint commits a checkpoint of the current head, asking it to start
// the time index when start is set.
func (l *timeLog) checkpoint(start bool) []byte {
	l.t.Helper()
	seq, head, err := l.f.AuditHead()
	if err != nil {
		l.t.Fatal(err)
	}
	d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_CHECKPOINT, &cofferv1.AuditCheckpointCommand{
		Checkpoint: &cofferv1.AuditCheckpoint{Seq: seq, Head: head, TimeUnixNano: 1, Signer: "n1",
			Signature: []byte("signature"), PublicKey: []byte("public key")},
		StartTimeIndex: start})
	if err != nil {
		l.t.Fatal(err)
	}
	return d
}

// query follows every page of a since query and returns the seqs found and
// the entries scanned (decoded) on the way.
func (l *timeLog) query(since int64) ([]uint64, error) {
	var got []uint64
	after := uint64(0)
	for {
		entries, last, err := l.f.AuditEntries(after, 7, AuditFilter{SinceUnixNano: since})
		if err != nil {
			return got, err
		}
		for _, e := range entries {
			got = append(got, e.GetSeq())
		}
		if last <= after {
			return got, nil
		}
		after = last
	}
}

// want filters the remembered entries from seq first on.
func (l *timeLog) want(since int64, first uint64) []uint64 {
	var out []uint64
	for s := first; s <= l.seq; s++ {
		if l.times[s] >= since {
			out = append(out, s)
		}
	}
	return out
}

func TestFSM_AuditTimeIndex(t *testing.T) {
	l := newTimeLog(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	sec := int64(time.Second)
	// Entries from before the index started are scanned as they are.
	for i := 0; i < 10; i++ {
		l.batch(base+int64(i)*sec, base+int64(i)*sec+1)
	}
	if l.f.AuditTimeIndexStarted() {
		t.Fatal("index started without a checkpoint asking for it")
	}
	// A version 1 checkpoint with the field set does not start it.
	if r := l.apply(withVersion(t, l.checkpoint(true), 1)); r.Err != nil {
		t.Fatal(r.Err)
	}
	if l.f.AuditTimeIndexStarted() {
		t.Fatal("a version 1 checkpoint started the index")
	}
	cp := l.checkpoint(true)
	if v := commandOf(t, cp).GetVersion(); v != 4 {
		t.Fatalf("a checkpoint starting the index is written as version %d, want 4", v)
	}
	if r := l.apply(cp); r.Err != nil {
		t.Fatal(r.Err)
	}
	if !l.f.AuditTimeIndexStarted() {
		t.Fatal("index not started")
	}
	startSeq := l.seq + 1
	// Mostly rising times, 100 ms apart, with a node whose clock is an hour
	// late every 37th entry, one 30 s early every 101st, and one a day
	// early once.
	rng := rand.New(rand.NewSource(5))
	at := base + 100*sec
	var pending []int64
	for i := 0; i < 3000; i++ {
		at += 100 * int64(time.Millisecond)
		e := at
		switch {
		case i%37 == 0:
			e = at - 3600*sec
		case i%101 == 0:
			e = at + 30*sec
		case i == 2500:
			e = at + 86400*sec
		}
		pending = append(pending, e)
		if len(pending) == 1+rng.Intn(60) || i == 2999 {
			l.batch(pending...)
			pending = nil
		}
	}
	sinces := []int64{0, base, base + 5*sec, at, at + sec, at + 30*sec, at + 86400*sec, at + 86401*sec}
	for since := base + 100*sec; since < at; since += 7 * sec {
		sinces = append(sinces, since)
	}
	for _, since := range sinces {
		got, err := l.query(since)
		if err != nil {
			t.Fatal(err)
		}
		if want := l.want(since, 1); !slices.Equal(got, want) {
			t.Fatalf("since %d: got %d entries, want %d", since-base, len(got), len(want))
		}
	}

	// The index lets the query skip entries rather than read them: damage
	// an indexed entry well before a late since time; a query from there
	// does not touch it, a full one does.
	damaged := startSeq + 500
	if err := l.f.db.Set(auditKey(damaged), []byte("\xff\xff not protobuf"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	since := base + 250*sec // entry startSeq+1500 or so
	got, err := l.query(since)
	if err != nil {
		t.Fatalf("a query from a later time read a skipped entry: %v", err)
	}
	if want := l.want(since, 1); !slices.Equal(got, want) {
		t.Fatalf("since +250s: got %d entries, want %d", len(got), len(want))
	}
	if _, err := l.query(0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a full query over a damaged entry: %v, want ErrCorrupt", err)
	}
	// The damaged entry's time was an hour late or not: either way a
	// query for an earlier time must read it.
	if _, err := l.query(base + 110*sec); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a query from before the damaged entry: %v, want ErrCorrupt", err)
	}
}

func TestFSM_AuditTimeIndexAfterPrune(t *testing.T) {
	l := newTimeLog(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	if r := l.apply(l.checkpoint(true)); !errors.Is(r.Err, ErrInvalidCommand) {
		t.Fatalf("a checkpoint of an empty log: %v", r.Err)
	}
	if !l.f.AuditTimeIndexStarted() {
		t.Fatal("the index starts even when the checkpoint itself is refused, alike on every replica")
	}
	for i := 0; i < 200; i++ {
		l.batch(base+int64(i)*int64(time.Second), base+int64(i)*int64(time.Second)+1)
	}
	if r := l.apply(l.checkpoint(false)); r.Err != nil {
		t.Fatal(r.Err)
	}
	keys := func() int {
		n := 0
		it, err := l.f.db.NewIter(&pebble.IterOptions{LowerBound: prefixAuditTime, UpperBound: prefixEnd(prefixAuditTime)})
		if err != nil {
			t.Fatal(err)
		}
		defer it.Close()
		for ok := it.First(); ok; ok = it.Next() {
			n++
		}
		return n
	}
	if n := keys(); n < 150 {
		t.Fatalf("%d index keys for 200 seconds of entries", n)
	}
	// Link more, then prune up to the checkpoint at 400.
	for i := 200; i < 300; i++ {
		l.batch(base + int64(i)*int64(time.Second))
	}
	before := keys()
	prune, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_PRUNE, &cofferv1.AuditPruneCommand{UpToSeq: 400})
	if err != nil {
		t.Fatal(err)
	}
	if r := l.apply(prune); r.Err != nil {
		t.Fatal(r.Err)
	}
	if after := keys(); after > before-190 || after < 90 {
		t.Fatalf("%d index keys after pruning (%d before): the pruned range's keys stay, or later ones went", after, before)
	}
	for _, since := range []int64{0, base, base + 150*int64(time.Second), base + 250*int64(time.Second), base + 400*int64(time.Second)} {
		got, err := l.query(since)
		if err != nil {
			t.Fatal(err)
		}
		if want := l.want(since, 401); !slices.Equal(got, want) {
			t.Fatalf("since +%ds after prune: got %d entries, want %d", (since-base)/int64(time.Second), len(got), len(want))
		}
	}
}
