package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/internal/testenv"
	"github.com/coffer-kms/coffer/transport"
)

// testAuditKey returns a deterministic Ed25519 node key.
func testAuditKey(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
}

// writeTrustedKey writes key's public half as a PEM file and returns its
// path.
func writeTrustedKey(t *testing.T, dir, name string, key ed25519.PrivateKey) string {
	t.Helper()
	pemBytes, err := audit.MarshalPublicKeyPEM(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// testCheckpoint is a checkpoint to sign after entry seq.
type testCheckpoint struct {
	seq    uint64
	signer string
	key    ed25519.PrivateKey
}

// testEntry returns the unlinked entry seq of the test logs; tweak, if set,
// may change it (a different history).
func testEntry(seq uint64, tweak func(*cofferv1.AuditEntry)) *cofferv1.AuditEntry {
	e := &cofferv1.AuditEntry{
		TimeUnixNano: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano() + int64(seq)*int64(time.Second),
		Node:         "n1",
		Caller:       "client:app",
		Operation:    "get",
		Gkid:         fmt.Sprintf("k%d", seq),
		Resource:     "payments/db",
		Outcome:      cofferv1.AuditOutcome_AUDIT_OUTCOME_GRANTED,
		RequestId:    fmt.Sprintf("req-%d", seq),
	}
	if seq%3 == 0 {
		e.Caller = "client:ops"
		e.Outcome = cofferv1.AuditOutcome_AUDIT_OUTCOME_DENIED
		e.Reason = "no grant for get on payments/db"
	}
	if tweak != nil {
		tweak(e)
	}
	return e
}

// buildExport returns the export of entries 1..n, linked with audit.Link,
// with the given checkpoints signed with audit.Sign after their entries.
func buildExport(t *testing.T, n uint64, cps []testCheckpoint, tweak func(*cofferv1.AuditEntry)) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := audit.NewWriter(&buf)
	prev := audit.GenesisHash()
	for seq := uint64(1); seq <= n; seq++ {
		e := testEntry(seq, tweak)
		audit.Link(prev, seq, e)
		prev = e.GetHash()
		if err := w.WriteEntry(e); err != nil {
			t.Fatal(err)
		}
		for _, c := range cps {
			if c.seq != seq {
				continue
			}
			cp := &cofferv1.AuditCheckpoint{Seq: seq, Head: e.GetHash(), TimeUnixNano: e.GetTimeUnixNano() + 1, Signer: c.signer}
			if err := audit.Sign(cp, c.key); err != nil {
				t.Fatal(err)
			}
			if err := w.WriteCheckpoint(cp); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func writeTestFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// editLine applies strings.Replace(old, new) to the line of entry seq.
func editLine(t *testing.T, export []byte, seq uint64, old, new string) []byte {
	t.Helper()
	lines := strings.SplitAfter(string(export), "\n")
	prefix := fmt.Sprintf(`{"type":"entry","seq":%d,`, seq)
	for i, l := range lines {
		if strings.HasPrefix(l, prefix) {
			if !strings.Contains(l, old) {
				t.Fatalf("entry %d has no %q: %s", seq, old, l)
			}
			lines[i] = strings.Replace(l, old, new, 1)
			return []byte(strings.Join(lines, ""))
		}
	}
	t.Fatalf("no entry %d in the export", seq)
	return nil
}

func TestCLI_AuditUsageErrors(t *testing.T) {
	dir := t.TempDir()
	exp := writeTestFile(t, dir, "export.jsonl", nil)
	key := writeTrustedKey(t, dir, "n1.pub", testAuditKey(1))
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"head bad consistency", []string{"audit", "head", "--consistency", "eventual"}, "consistency"},
		{"head extra argument", []string{"audit", "head", "now"}, "none"},
		{"query bad since", []string{"audit", "query", "--since", "yesterday"}, "--since"},
		{"query negative since", []string{"audit", "query", "--since", "-1h"}, "--since"},
		{"query zero days", []string{"audit", "query", "--since", "0d"}, "--since"},
		{"query bad until", []string{"audit", "query", "--until", "2024-13-01T00:00:00Z"}, "--until"},
		{"query since after until", []string{"audit", "query", "--since", "1h", "--until", "2h"}, "must be before --until"},
		{"query client and caller", []string{"audit", "query", "--client", "app", "--caller", "client:app"}, "not both"},
		{"query bad client", []string{"audit", "query", "--client", "a:b"}, "--client"},
		{"query blank caller", []string{"audit", "query", "--caller", " "}, "--caller"},
		{"query bad outcome", []string{"audit", "query", "--outcome", "maybe"}, "--outcome"},
		{"query big limit", []string{"audit", "query", "--limit", "5000"}, "--limit"},
		{"query bad after", []string{"audit", "query", "--after", "-1"}, "--after"},
		{"query argument", []string{"audit", "query", "x"}, "takes 0 argument"},
		{"tail negative", []string{"audit", "tail", "-n", "-1"}, "-n must be"},
		{"tail too many", []string{"audit", "tail", "-n", "5000"}, "-n must be"},
		{"tail fast interval", []string{"audit", "tail", "-f", "--interval", "1ms"}, "--interval"},
		{"tail slow interval", []string{"audit", "tail", "-f", "--interval", "1h"}, "--interval"},
		{"tail bad outcome", []string{"audit", "tail", "-f", "--outcome", "maybe"}, "--outcome"},
		{"tail client and caller", []string{"audit", "tail", "--client", "a", "--caller", "client:a"}, "not both"},
		{"export csv", []string{"audit", "export", "--format", "csv"}, "only jsonl"},
		{"export argument", []string{"audit", "export", "out.jsonl"}, "takes 0 argument"},
		{"verify without key", []string{"audit", "verify", "--file", exp}, "--trusted-key is required"},
		{"verify blank key", []string{"audit", "verify", "--file", exp, "--trusted-key", ""}, "--trusted-key is blank"},
		{"verify without source", []string{"audit", "verify", "--trusted-key", key}, "exactly one of --file or --data-dir"},
		{"verify two sources", []string{"audit", "verify", "--file", exp, "--data-dir", dir, "--trusted-key", key}, "exactly one"},
		{"prune without a bound", []string{"audit", "prune"}, "--up-to SEQ (1 or more) or --before TIME is required"},
		{"prune with two bounds", []string{"audit", "prune", "--up-to", "4", "--before", "90d"}, "not both"},
		{"prune before a bad time", []string{"audit", "prune", "--before", "last tuesday"}, "--before"},
		{"unknown audit command", []string{"audit", "delete"}, "unknown command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := runCLI(t, nil, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d (stderr %q)", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("stderr %q, want it to contain %q", stderr, tc.wantErr)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
}

func TestCell(t *testing.T) {
	for in, want := range map[string]string{
		"":                   "-",
		"plain text":         "plain text",
		"two\nlines\there":   "two lines here",
		"red\x1b[31mALERT":   `red\u001b[31mALERT`,
		"rtl\u202eexe.txt":   `rtl\u202eexe.txt`,
		"naïve résumé":       "naïve résumé",
		"bell\a and nul\x00": `bell\u0007 and nul\u0000`,
	} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %q, want %q", in, got, want)
		}
	}
}

// auditLog is an in-memory AuditService over a linked, signed chain.
type auditLog struct {
	cofferv1.UnimplementedAuditServiceServer

	key ed25519.PrivateKey

	mu      sync.Mutex
	entries []*cofferv1.AuditEntry
	cps     map[uint64]*cofferv1.AuditCheckpoint
	queries []*cofferv1.AuditQueryRequest
	prunes  []uint64
	// streaming makes Follow work (else it is Unimplemented, as on an old
	// node); dropOnce ends the first stream after its first message, as a
	// failing node would; follows records each stream's after_seq.
	streaming, dropOnce bool
	// downAfterDrop makes every stream after the dropped one fail with
	// "no leader", as a cluster that lost its leader for good; down is set
	// once that has begun.
	downAfterDrop, down bool
	follows             []uint64
	pruneReqs           []*cofferv1.AuditPruneRequest
	// oldQuery answers queries as a node older than newest: it ignores it.
	oldQuery   bool
	followReqs []*cofferv1.AuditFollowRequest
}

// Follow sends the entries after after_seq, then new ones as add appends
// them, until the caller goes away.
func (l *auditLog) Follow(req *cofferv1.AuditFollowRequest, stream cofferv1.AuditService_FollowServer) error {
	l.mu.Lock()
	if !l.streaming {
		l.mu.Unlock()
		return status.Error(codes.Unimplemented, "unknown method Follow")
	}
	if l.down {
		l.mu.Unlock()
		return status.Error(codes.Unavailable, "no leader")
	}
	after := req.GetAfterSeq()
	if req.GetFromNewest() {
		after = uint64(len(l.entries))
		if newest := l.newest(int(req.GetNewest()), req); len(newest) > 0 {
			after = newest[0].GetSeq() - 1
		}
	}
	l.follows = append(l.follows, after)
	l.followReqs = append(l.followReqs, req)
	l.mu.Unlock()
	for {
		l.mu.Lock()
		var out []*cofferv1.AuditEntry
		for _, e := range l.entries {
			if e.GetSeq() > after && matches(e, req) {
				out = append(out, e)
			}
		}
		if n := len(l.entries); n > 0 && len(out) == 0 {
			after = max(after, uint64(n)) // scanned, none matched
		}
		drop := l.dropOnce && len(out) > 0
		if drop {
			l.dropOnce = false
			l.down = l.downAfterDrop
		}
		head := uint64(len(l.entries))
		l.mu.Unlock()
		if len(out) > 0 {
			if err := stream.Send(&cofferv1.AuditFollowResponse{Entries: out, HeadSeq: head}); err != nil {
				return err
			}
			after = out[len(out)-1].GetSeq()
		}
		if drop {
			return status.Error(codes.Unavailable, "node stopping")
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// add appends entries up to seq n, signing a checkpoint after every entry
// whose seq is in cpAt.
func (l *auditLog) add(n uint64, cpAt ...uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := audit.GenesisHash()
	if len(l.entries) > 0 {
		prev = l.entries[len(l.entries)-1].GetHash()
	}
	for seq := uint64(len(l.entries)) + 1; seq <= n; seq++ {
		e := testEntry(seq, nil)
		audit.Link(prev, seq, e)
		prev = e.GetHash()
		l.entries = append(l.entries, e)
		for _, c := range cpAt {
			if c == seq {
				cp := &cofferv1.AuditCheckpoint{Seq: seq, Head: e.GetHash(), TimeUnixNano: e.GetTimeUnixNano(), Signer: "n1"}
				if err := audit.Sign(cp, l.key); err != nil {
					panic(err)
				}
				l.cps[seq] = cp
			}
		}
	}
}

// matches applies a query's or a follow's filters to e.
func matches(e *cofferv1.AuditEntry, req interface {
	GetCaller() string
	GetOutcome() string
	GetOperation() string
	GetGkid() string
}) bool {
	return (req.GetCaller() == "" || e.GetCaller() == req.GetCaller()) &&
		(req.GetOutcome() == "" || outcomeName(e.GetOutcome()) == req.GetOutcome()) &&
		(req.GetOperation() == "" || e.GetOperation() == req.GetOperation()) &&
		(req.GetGkid() == "" || e.GetGkid() == req.GetGkid())
}

// Query follows fsm.AuditEntries: entries after after_seq matching the
// filters, at most limit, and the last seq scanned.
func (l *auditLog) Query(_ context.Context, req *cofferv1.AuditQueryRequest) (*cofferv1.AuditQueryResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.queries = append(l.queries, req)
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 100
	}
	if limit > maxAuditPage {
		return nil, status.Error(codes.InvalidArgument, "limit must be at most 1000")
	}
	if n := req.GetNewest(); n > 0 && !l.oldQuery {
		head := uint64(len(l.entries))
		return &cofferv1.AuditQueryResponse{Entries: l.newest(int(n), req), LastSeq: head, HeadSeq: head}, nil
	}
	resp := &cofferv1.AuditQueryResponse{LastSeq: req.GetAfterSeq(), HeadSeq: uint64(len(l.entries))}
	for _, e := range l.entries {
		if e.GetSeq() <= req.GetAfterSeq() {
			continue
		}
		resp.LastSeq = e.GetSeq()
		if matches(e, req) {
			resp.Entries = append(resp.Entries, e)
		}
		if len(resp.Entries) >= limit {
			break
		}
	}
	return resp, nil
}

// newest returns the newest n entries that match req, in seq order, as
// fsm.NewestAuditEntries does. Call with l.mu held.
func (l *auditLog) newest(n int, req interface {
	GetCaller() string
	GetOutcome() string
	GetOperation() string
	GetGkid() string
}) []*cofferv1.AuditEntry {
	var out []*cofferv1.AuditEntry
	for i := len(l.entries) - 1; i >= 0 && len(out) < n; i-- {
		if matches(l.entries[i], req) {
			out = append(out, l.entries[i])
		}
	}
	slices.Reverse(out)
	return out
}

type chunkSender struct {
	stream cofferv1.AuditService_ExportServer
}

func (c chunkSender) Write(p []byte) (int, error) {
	if err := c.stream.Send(&cofferv1.AuditExportChunk{Data: append([]byte(nil), p...)}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (l *auditLog) Export(req *cofferv1.AuditExportRequest, stream cofferv1.AuditService_ExportServer) error {
	l.mu.Lock()
	entries, cps := l.entries, l.cps
	l.mu.Unlock()
	w := audit.NewWriter(chunkSender{stream})
	for _, e := range entries {
		if e.GetSeq() <= req.GetAfterSeq() {
			continue
		}
		if err := w.WriteEntry(e); err != nil {
			return err
		}
		if cp, ok := cps[e.GetSeq()]; ok {
			if err := w.WriteCheckpoint(cp); err != nil {
				return err
			}
		}
	}
	return w.Flush()
}

func (l *auditLog) Prune(_ context.Context, req *cofferv1.AuditPruneRequest) (*cofferv1.AuditPruneResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.prunes = append(l.prunes, req.GetUpToSeq())
	l.pruneReqs = append(l.pruneReqs, req)
	upTo := req.GetUpToSeq()
	if req.GetBefore() != nil {
		// As fsm.CheckpointBefore: oldest first, up to the first signed at
		// or after the time.
		seqs := slices.Sorted(maps.Keys(l.cps))
		for _, seq := range seqs {
			if l.cps[seq].GetTimeUnixNano() >= req.GetBefore().AsTime().UnixNano() {
				break
			}
			upTo = seq
		}
		if upTo == 0 {
			return &cofferv1.AuditPruneResponse{}, nil
		}
	}
	for seq := upTo; seq > 0; seq-- {
		if cp, ok := l.cps[seq]; ok {
			m, err := audit.NewPruneMarker(cp)
			if err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
			return &cofferv1.AuditPruneResponse{Marker: m, Pruned: m.GetFirstSeq() - 1}, nil
		}
	}
	return nil, status.Errorf(codes.FailedPrecondition, "no checkpoint at or below %d", upTo)
}

func (l *auditLog) lastQuery() *cofferv1.AuditQueryRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.queries[len(l.queries)-1]
}

// mustAuditNode starts an auditLog of n entries (checkpoints at cpAt) over
// mTLS and returns it with the environment that reaches it.
func mustAuditNode(t *testing.T, n uint64, cpAt ...uint64) (*auditLog, envMap) {
	t.Helper()
	pki := newTestPKI(t, "audit-test-ca")
	caFile, issue := pki.caFile, pki.issue
	serverTLS, err := issue(transport.Identity{Kind: transport.KindNode, Name: "n1"}).ServerTLS()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &auditLog{key: testAuditKey(1), cps: map[uint64]*cofferv1.AuditCheckpoint{}}
	l.add(n, cpAt...)
	gs := grpc.NewServer(testenv.ServerOptions(t, serverTLS)...)
	cofferv1.RegisterAuditServiceServer(gs, l)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	cli := issue(transport.Identity{Kind: transport.KindClient, Name: "cli"})
	return l, envMap{envAddr: lis.Addr().String(), envCA: caFile, envCert: cli.CertFile, envKey: cli.KeyFile}
}

// tableSeqs returns the SEQ column of an audit table, header excluded.
func tableSeqs(t *testing.T, out string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "SEQ ") {
		t.Fatalf("no table header:\n%s", out)
	}
	var seqs []string
	for _, l := range lines[1:] {
		if l == "SEQ" || strings.HasPrefix(l, "SEQ ") {
			continue
		}
		seqs = append(seqs, strings.Fields(l)[0])
	}
	return seqs
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
