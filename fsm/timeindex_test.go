package fsm

import (
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"

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

// query follows every page of a since query and returns the seqs found.
func (l *timeLog) query(since int64) ([]uint64, error) { return l.window(since, 0) }

// window follows every page of a query from since to until.
func (l *timeLog) window(since, until int64) ([]uint64, error) {
	var got []uint64
	after := uint64(0)
	for {
		entries, last, err := l.f.AuditEntries(after, 7, AuditFilter{SinceUnixNano: since, UntilUnixNano: until})
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

func seqsOf(entries []*cofferv1.AuditEntry) []uint64 {
	out := make([]uint64, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.GetSeq())
	}
	return out
}

// want filters the remembered entries from seq first on.
func (l *timeLog) want(since int64, first uint64) []uint64 { return l.wantWindow(since, 0, first) }

func (l *timeLog) wantWindow(since, until int64, first uint64) []uint64 {
	var out []uint64
	for s := first; s <= l.seq; s++ {
		if l.times[s] >= since && (until == 0 || l.times[s] < until) {
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

	for i, since := range sinces {
		until := sinces[(i*7+3)%len(sinces)]
		for _, u := range []int64{until, since + 20*sec, base + 3600*sec} {
			got, err := l.window(since, u)
			if err != nil {
				t.Fatal(err)
			}
			want := l.wantWindow(since, u, 1)
			if !slices.Equal(got, want) {
				t.Fatalf("since %d until %d: got %d entries, want %d", since-base, u-base, len(got), len(want))
			}
			// The newest matches, read backwards, are the end of the same list.
			for _, n := range []int{1, 7, 1000} {
				newest, head, err := l.f.NewestAuditEntries(0, n, AuditFilter{SinceUnixNano: since, UntilUnixNano: u})
				if err != nil || head != l.seq {
					t.Fatalf("newest %d since %d until %d: head %d, %v", n, since-base, u-base, head, err)
				}
				if w := want[max(0, len(want)-n):]; !slices.Equal(seqsOf(newest), w) {
					t.Fatalf("newest %d since %d until %d: got %v, want %v", n, since-base, u-base, seqsOf(newest), w)
				}
			}
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
	if _, _, err := l.f.NewestAuditEntries(0, 5, AuditFilter{SinceUnixNano: since}); err != nil {
		t.Fatalf("the newest entries from a later time read a skipped entry: %v", err)
	}
	if _, _, err := l.f.NewestAuditEntries(0, 1000000, AuditFilter{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a backward scan over a damaged entry: %v, want ErrCorrupt", err)
	}
	// The damaged entry's time was an hour late or not: either way a
	// query for an earlier time must read it.
	if _, err := l.query(base + 110*sec); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a query from before the damaged entry: %v, want ErrCorrupt", err)
	}
	// Entries an hour late are linked all along, so a window that ends
	// before the damaged entry still reads on past it: one of them could
	// fall in the window.
	if _, err := l.window(base+100*sec, base+120*sec); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a window that late entries may fall in: %v, want ErrCorrupt", err)
	}
	// A window before every indexed entry stops where the index starts.
	got, err = l.window(0, base-7200*sec)
	if err != nil || len(got) != 0 {
		t.Fatalf("a window before every entry: %d entries, %v", len(got), err)
	}
}

// TestFSM_AuditTimeIndexUntil: on a log whose clocks agree, a query with an
// until time stops reading where every later entry is too late.
func TestFSM_AuditTimeIndexUntil(t *testing.T) {
	l := newTimeLog(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	sec := int64(time.Second)
	l.batch(base)
	if r := l.apply(l.checkpoint(true)); r.Err != nil {
		t.Fatal(r.Err)
	}
	for i := 1; i < 1000; i += 10 {
		var times []int64
		for j := i; j < i+10; j++ {
			times = append(times, base+int64(j)*sec/4)
		}
		l.batch(times...)
	}
	damaged := uint64(800)
	if err := l.f.db.Set(auditKey(damaged), []byte("\xff\xff not protobuf"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	for _, w := range [][2]int64{{base + 25*sec, base + 75*sec}, {0, base + 150*sec}, {base + 199*sec, base + 199*sec + sec/2}} {
		got, err := l.window(w[0], w[1])
		if err != nil {
			t.Fatalf("window %v: read past its end: %v", w, err)
		}
		if want := l.wantWindow(w[0], w[1], 1); !slices.Equal(got, want) || len(want) == 0 {
			t.Fatalf("window %v: got %d entries, want %d", w, len(got), len(want))
		}
	}
	// The last page reports the head as scanned, so a caller following
	// pages stops there.
	_, last, err := l.f.AuditEntries(0, 1000, AuditFilter{UntilUnixNano: base + 10*sec})
	if err != nil || last != l.seq {
		t.Fatalf("until query: last %d, %v; want the head %d", last, err, l.seq)
	}
	// Windows that reach the damaged entry (time +200 s) read it.
	for _, w := range [][2]int64{{base + 150*sec, base + 201*sec}, {0, 0}, {base + 200*sec, 0}} {
		if _, err := l.window(w[0], w[1]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("window %v over the damaged entry: %v, want ErrCorrupt", w, err)
		}
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

// TestFSM_NewestAuditEntries: the newest matches at or below a seq, in seq
// order, however far back the scan must go for them.
func TestFSM_NewestAuditEntries(t *testing.T) {
	l := newTimeLog(t)
	for i := 0; i < 50; i++ {
		c := &cofferv1.AuditBatchCommand{}
		for j := 0; j < 10; j++ {
			e := writeEntry("n1", int64(1+i*10+j), fmt.Sprintf("req-%d-%d", i, j))
			if (i*10+j)%45 == 0 {
				e.Caller = "client:rare"
				e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED
			}
			c.Entries = append(c.Entries, e)
		}
		d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, c)
		if err != nil {
			t.Fatal(err)
		}
		if r := l.apply(d); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	// seqs 1, 46, 91, ..., 496 are the rare caller's.
	rare := AuditFilter{Caller: "client:rare", Outcome: cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED}
	for _, tc := range []struct {
		upTo uint64
		n    int
		flt  AuditFilter
		want []uint64
	}{
		{0, 3, rare, []uint64{406, 451, 496}},
		{495, 2, rare, []uint64{406, 451}},
		{0, 100, rare, []uint64{1, 46, 91, 136, 181, 226, 271, 316, 361, 406, 451, 496}},
		{0, 3, AuditFilter{}, []uint64{498, 499, 500}},
		{2, 5, AuditFilter{}, []uint64{1, 2}},
		{9999, 1, AuditFilter{}, []uint64{500}},
		{0, 0, AuditFilter{}, nil},
		{0, 3, AuditFilter{Caller: "client:nobody"}, nil},
	} {
		got, head, err := l.f.NewestAuditEntries(tc.upTo, tc.n, tc.flt)
		if err != nil || head != 500 {
			t.Fatalf("up to %d, n %d: head %d, %v", tc.upTo, tc.n, head, err)
		}
		if !slices.Equal(seqsOf(got), tc.want) {
			t.Fatalf("up to %d, n %d, %+v: got %v, want %v", tc.upTo, tc.n, tc.flt, seqsOf(got), tc.want)
		}
	}
}

// TestFSM_CheckpointBeforeAndPruneCount: an age-based prune goes up to the
// last checkpoint before the first signed at or after the time, even when a
// signer's clock ran behind; Pruned counts what each prune deleted.
func TestFSM_CheckpointBeforeAndPruneCount(t *testing.T) {
	l := newTimeLog(t)
	if _, err := l.f.CheckpointBefore(100); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("no checkpoints: %v, want ErrNoCheckpoint", err)
	}
	// Checkpoints at seqs 2, 4, 6, 8, signed at 10, 20, 15 (a clock behind)
	// and 30.
	for _, at := range []int64{10, 20, 15, 30} {
		l.batch(1, 2)
		d := l.checkpoint(false)
		c := commandOf(t, d)
		var cc cofferv1.AuditCheckpointCommand
		if err := proto.Unmarshal(c.GetPayload(), &cc); err != nil {
			t.Fatal(err)
		}
		cc.Checkpoint.TimeUnixNano = at
		d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_CHECKPOINT, &cc)
		if err != nil {
			t.Fatal(err)
		}
		if r := l.apply(d); r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	for _, tc := range []struct {
		before int64
		seq    uint64
	}{{11, 2}, {18, 2}, {20, 2}, {21, 6}, {25, 6}, {31, 8}} {
		cp, err := l.f.CheckpointBefore(tc.before)
		if err != nil || cp.GetSeq() != tc.seq {
			t.Fatalf("before %d: checkpoint %d, %v; want seq %d", tc.before, cp.GetSeq(), err, tc.seq)
		}
	}
	if _, err := l.f.CheckpointBefore(10); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("before the oldest: %v, want ErrNoCheckpoint", err)
	}
	prune := func(upTo uint64) Result {
		t.Helper()
		d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_PRUNE, &cofferv1.AuditPruneCommand{UpToSeq: upTo})
		if err != nil {
			t.Fatal(err)
		}
		r := l.apply(d)
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		return r
	}
	for _, step := range []struct{ upTo, pruned, first uint64 }{{3, 2, 3}, {3, 0, 3}, {7, 4, 7}, {6, 0, 7}} {
		r := prune(step.upTo)
		if r.Pruned != step.pruned || r.Marker.GetFirstSeq() != step.first {
			t.Fatalf("prune up to %d: pruned %d, first %d; want %d, %d", step.upTo, r.Pruned, r.Marker.GetFirstSeq(), step.pruned, step.first)
		}
	}
	// The pruned checkpoints are gone: the oldest left is seq 6's (time 15).
	if cp, err := l.f.CheckpointBefore(16); err != nil || cp.GetSeq() != 6 {
		t.Fatalf("after pruning: checkpoint %d, %v; want 6", cp.GetSeq(), err)
	}
}
