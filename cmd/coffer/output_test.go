package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

func TestParseAlgorithm(t *testing.T) {
	for in, want := range map[string]cofferv1.Algorithm{
		"":                  cofferv1.Algorithm_ALGORITHM_UNSPECIFIED,
		"aes-128":           cofferv1.Algorithm_ALGORITHM_AES_128,
		"aes-192":           cofferv1.Algorithm_ALGORITHM_AES_192,
		"AES-256":           cofferv1.Algorithm_ALGORITHM_AES_256,
		" hmac-sha256 ":     cofferv1.Algorithm_ALGORITHM_HMAC_SHA256,
		"ALGORITHM_AES_256": cofferv1.Algorithm_ALGORITHM_AES_256,
	} {
		got, err := parseAlgorithm(in)
		if err != nil || got != want {
			t.Errorf("parseAlgorithm(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"aes", "aes256", "des", "ALGORITHM_UNSPECIFIED", "hmac-sha512"} {
		if _, err := parseAlgorithm(in); err == nil || !strings.Contains(err.Error(), "aes-128, aes-192, aes-256, hmac-sha256") {
			t.Errorf("parseAlgorithm(%q) = %v, want an error listing the names", in, err)
		}
	}
	for _, a := range algorithmNames {
		if got, _ := parseAlgorithm(algorithmName(a.alg)); got != a.alg {
			t.Errorf("round trip of %v gives %v", a.alg, got)
		}
	}
}

func TestParseConsistencyAndOutput(t *testing.T) {
	for in, want := range map[string]cofferv1.Consistency{
		"":             cofferv1.Consistency_CONSISTENCY_UNSPECIFIED,
		"linearizable": cofferv1.Consistency_CONSISTENCY_LINEARIZABLE,
		"Stale":        cofferv1.Consistency_CONSISTENCY_STALE,
	} {
		if got, err := parseConsistency(in); err != nil || got != want {
			t.Errorf("parseConsistency(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := parseConsistency("eventual"); err == nil {
		t.Error("parseConsistency accepted eventual")
	}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	var cons consistencyFlag
	addConsistencyFlag(fs, &cons, "")
	if cons.v != cofferv1.Consistency_CONSISTENCY_LINEARIZABLE || fs.Lookup("consistency").DefValue != "linearizable" {
		t.Errorf("--consistency defaults to %v (shown as %q)", cons.v, fs.Lookup("consistency").DefValue)
	}
	if err := fs.Parse([]string{"--consistency", "stale"}); err != nil || cons.v != cofferv1.Consistency_CONSISTENCY_STALE {
		t.Errorf("--consistency stale: %v, %v", cons.v, err)
	}
	if err := fs.Parse([]string{"--consistency", "eventual"}); err == nil || cons.v != cofferv1.Consistency_CONSISTENCY_STALE {
		t.Errorf("--consistency eventual: %v, %v", cons.v, err)
	}
	if f, err := parseOutput("JSON"); err != nil || f != formatJSON {
		t.Errorf("parseOutput(JSON) = %q, %v", f, err)
	}
	if _, err := parseOutput("yaml"); err == nil {
		t.Error("parseOutput accepted yaml")
	}
}

func TestEnumWords(t *testing.T) {
	for role, want := range map[cofferv1.NodeRole]string{
		cofferv1.NodeRole_NODE_ROLE_LEADER:      "leader",
		cofferv1.NodeRole_NODE_ROLE_FOLLOWER:    "follower",
		cofferv1.NodeRole_NODE_ROLE_CANDIDATE:   "candidate",
		cofferv1.NodeRole_NODE_ROLE_SHUTDOWN:    "shutdown",
		cofferv1.NodeRole_NODE_ROLE_UNREACHABLE: "unreachable",
		cofferv1.NodeRole_NODE_ROLE_UNSPECIFIED: "unknown",
	} {
		if got := roleName(role); got != want {
			t.Errorf("roleName(%v) = %q, want %q", role, got, want)
		}
	}
	if got := stateName(cofferv1.KeyState_KEY_STATE_ACTIVE); got != "active" {
		t.Errorf("stateName = %q", got)
	}
}

var testCreated = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func testMetadata(gkid string) *cofferv1.KeyMetadata {
	return &cofferv1.KeyMetadata{
		Gkid: gkid, Policy: "pay", Resource: "db/orders", Owner: "alice",
		Algorithm: cofferv1.Algorithm_ALGORITHM_AES_256, State: cofferv1.KeyState_KEY_STATE_ACTIVE,
		CreatedAt: timestamppb.New(testCreated), KekVersion: 2, Revision: 7,
		UsePolicy: &cofferv1.KeyUsePolicy{Operations: []string{"get", "encrypt"},
			NotAfter: timestamppb.New(testCreated.Add(24 * time.Hour))},
		CachePolicy: &cofferv1.KeyCachePolicy{Cacheable: true, Ttl: durationpb.New(time.Minute), MaxKeys: 10},
	}
}

func TestWriteMetadataText(t *testing.T) {
	var buf bytes.Buffer
	if err := writeMetadataText(&buf, testMetadata("gk1")); err != nil {
		t.Fatal(err)
	}
	want := `gkid:         gk1
policy:       pay
resource:     db/orders
owner:        alice
algorithm:    aes-256
state:        active
created:      2026-03-04T05:06:07Z
kek version:  2
revision:     7
use policy:   operations=get,encrypt not_after=2026-03-05T05:06:07Z
cache policy: cacheable=true ttl=1m0s max_keys=10
`
	if buf.String() != want {
		t.Errorf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestWriteKeyText(t *testing.T) {
	var buf bytes.Buffer
	resp := &cofferv1.GetKeyResponse{Key: &cofferv1.KeyMetadata{Gkid: "gk1"}, Material: []byte{0, 1, 2, 0xff}}
	if err := writeKeyText(&buf, resp); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"material:     AAEC/w==", "use policy:   operations=any", "cache policy: cacheable=false"} {
		if !strings.Contains(buf.String(), want+"\n") {
			t.Errorf("output lacks %q:\n%s", want, buf.String())
		}
	}
}

func TestWriteProto_GetKeyJSON(t *testing.T) {
	var buf bytes.Buffer
	resp := &cofferv1.GetKeyResponse{Key: testMetadata("gk1"), Material: []byte{0, 1, 2, 0xff}}
	if err := writeProto(&buf, resp); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Material string         `json:"material"`
		Key      map[string]any `json:"key"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("invalid JSON %q: %v", buf.String(), err)
	}
	if got.Material != "AAEC/w==" {
		t.Errorf("material = %q", got.Material)
	}
	for field, want := range map[string]any{
		"gkid": "gk1", "kek_version": float64(2), "revision": "7", "algorithm": "ALGORITHM_AES_256",
		"created_at": "2026-03-04T05:06:07Z",
	} {
		if got.Key[field] != want {
			t.Errorf("key.%s = %#v, want %#v", field, got.Key[field], want)
		}
	}
	if _, ok := got.Key["use_policy"].(map[string]any)["not_after"]; !ok {
		t.Errorf("use_policy lacks not_after: %v", got.Key["use_policy"])
	}
}

func TestKeyTable(t *testing.T) {
	var buf bytes.Buffer
	tbl := &keyTable{w: &buf}
	if err := tbl.writePage([]*cofferv1.KeyMetadata{testMetadata("gk1")}); err != nil {
		t.Fatal(err)
	}
	if err := tbl.writePage([]*cofferv1.KeyMetadata{testMetadata("gk2")}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "GKID") {
		t.Fatalf("table:\n%s", buf.String())
	}
	if got := strings.Fields(lines[2]); strings.Join(got, " ") != "gk2 pay db/orders aes-256 active 2026-03-04T05:06:07Z" {
		t.Errorf("row = %q", got)
	}
}

func TestKeyListJSON(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pages [][]*cofferv1.KeyMetadata
		next  string
		want  []string
	}{
		{"empty", [][]*cofferv1.KeyMetadata{nil}, "", nil},
		{"one page with token", [][]*cofferv1.KeyMetadata{{testMetadata("a"), testMetadata("b")}}, "tok", []string{"a", "b"}},
		{"several pages", [][]*cofferv1.KeyMetadata{{testMetadata("a")}, nil, {testMetadata("b"), testMetadata("c")}}, "", []string{"a", "b", "c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := newKeyListJSON(&buf)
			for _, p := range tc.pages {
				if err := l.writePage(p); err != nil {
					t.Fatal(err)
				}
			}
			if err := l.finish(tc.next); err != nil {
				t.Fatal(err)
			}
			var got struct {
				Keys          []struct{ Gkid string }
				NextPageToken *string `json:"next_page_token"`
			}
			if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
				t.Fatalf("invalid JSON %q: %v", buf.String(), err)
			}
			if got.Keys == nil || got.NextPageToken == nil || *got.NextPageToken != tc.next {
				t.Fatalf("missing fields in %s", buf.String())
			}
			var gkids []string
			for _, k := range got.Keys {
				gkids = append(gkids, k.Gkid)
			}
			if strings.Join(gkids, ",") != strings.Join(tc.want, ",") {
				t.Errorf("keys = %v, want %v", gkids, tc.want)
			}
		})
	}
}

func testClusterStatus() *cofferv1.ClusterStatusResponse {
	return &cofferv1.ClusterStatusResponse{ClusterId: "c-1", ReporterId: "n1", Nodes: []*cofferv1.NodeStatus{
		{Id: "n1", Site: "east", Address: "10.0.0.1:7400", RaftAddress: "10.0.0.1:7401",
			Role: cofferv1.NodeRole_NODE_ROLE_LEADER, Term: 3, LastLogIndex: 40, AppliedIndex: 39,
			AuditSeq: 117, CommandVersion: 4, LeaderId: "n1", Healthy: true, Voter: true,
			PinnedCertSha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Suffrage: "voter"},
		{Id: "n2", Address: "10.0.0.2:7400", Role: cofferv1.NodeRole_NODE_ROLE_UNREACHABLE,
			Error: "dial: connection\nrefused", Suffrage: "non-voter", LastContactMs: -1},
	}, SiteLoss: []*cofferv1.SiteLoss{{Site: "east", Voters: 2, Survives: false}},
		LayoutWarning: "the cluster does not survive the loss of site east", Authoritative: true}
}

func TestWriteClusterTable(t *testing.T) {
	var buf bytes.Buffer
	if err := writeClusterTable(&buf, testClusterStatus(), false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("table:\n%s", buf.String())
	}
	for i, want := range []string{
		"ID SITE ADDRESS ROLE SUFFRAGE TERM LAST-INDEX APPLIED CONTACT AUDIT-SEQ CERT-PIN HEALTH",
		"n1 east 10.0.0.1:7400 leader voter 3 40 39 - 117 0123456789abcdef ok",
		"n2 - 10.0.0.2:7400 unreachable non-voter 0 0 0 never 0 - unhealthy: dial: connection refused",
		"",
		"voters by site: east 2 (its loss loses the quorum)",
		"WARNING: the cluster does not survive the loss of site east",
	} {
		if got := strings.Join(strings.Fields(lines[i]), " "); got != want {
			t.Errorf("line %d = %q, want %q", i, got, want)
		}
	}
}

// Without a leader the table says so, and shows whom each node follows.
func TestWriteClusterTable_NotAuthoritative(t *testing.T) {
	st := testClusterStatus()
	st.Authoritative = false
	st.Nodes[0].Role, st.Nodes[0].LeaderId = cofferv1.NodeRole_NODE_ROLE_CANDIDATE, ""
	var buf bytes.Buffer
	if err := writeClusterTable(&buf, st, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "NOT AUTHORITATIVE: n1 knows no leader") || !strings.Contains(buf.String(), "n1 follows - (term 3") {
		t.Fatalf("table:\n%s", buf.String())
	}
}

// With --digest the table shows each node's digest index and the short
// digest ("-" for a node that reported none); -o json the whole digest.
func TestClusterStatus_Digest(t *testing.T) {
	st := testClusterStatus()
	sum := bytes.Repeat([]byte{0xab, 0x01}, 16)
	st.Nodes[0].StateDigest, st.Nodes[0].StateDigestIndex = sum, 39
	var buf bytes.Buffer
	if err := writeClusterTable(&buf, st, true); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(buf.String(), "\n")
	for i, want := range []string{
		"ID SITE ADDRESS ROLE SUFFRAGE TERM LAST-INDEX APPLIED CONTACT AUDIT-SEQ CERT-PIN DIGEST-INDEX DIGEST HEALTH",
		"n1 east 10.0.0.1:7400 leader voter 3 40 39 - 117 0123456789abcdef 39 ab01ab01ab01ab01 ok",
		"n2 - 10.0.0.2:7400 unreachable non-voter 0 0 0 never 0 - - - unhealthy: dial: connection refused",
	} {
		if got := strings.Join(strings.Fields(lines[i]), " "); got != want {
			t.Errorf("line %d = %q, want %q", i, got, want)
		}
	}
	buf.Reset()
	if err := writeJSON(&buf, clusterStatusJSON(st)); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Nodes []map[string]any `json:"nodes"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if d := got.Nodes[0]["state_digest"]; d != strings.Repeat("ab01", 16) || got.Nodes[0]["state_digest_index"] != float64(39) {
		t.Errorf("nodes[0] digest %v at %v", d, got.Nodes[0]["state_digest_index"])
	}
	if _, ok := got.Nodes[1]["state_digest"]; ok {
		t.Errorf("nodes[1] has a digest: %v", got.Nodes[1])
	}
}

func TestClusterStatusJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := writeJSON(&buf, clusterStatusJSON(testClusterStatus())); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("invalid JSON: %v", err)
	}
	if got["cluster_id"] != "c-1" {
		t.Errorf("cluster_id = %v", got["cluster_id"])
	}
	nodes := got["nodes"].([]any)
	if len(nodes) != 2 {
		t.Fatalf("nodes = %v", nodes)
	}
	n1 := nodes[0].(map[string]any)
	want := map[string]any{
		"id": "n1", "site": "east", "address": "10.0.0.1:7400", "raft_address": "10.0.0.1:7401",
		"role": "leader", "term": float64(3), "last_log_index": float64(40), "applied_index": float64(39),
		"audit_seq": float64(117), "command_version": float64(4), "leader_id": "n1", "healthy": true, "error": "", "voter": true,
		"pinned_cert_sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"suffrage":           "voter", "last_contact_ms": float64(0), "drained": false,
	}
	if len(n1) != len(want) {
		t.Errorf("node fields = %v, want %v", n1, want)
	}
	for k, v := range want {
		if n1[k] != v {
			t.Errorf("nodes[0].%s = %#v, want %#v", k, n1[k], v)
		}
	}
	if r := nodes[1].(map[string]any)["role"]; r != "unreachable" {
		t.Errorf("nodes[1].role = %v", r)
	}
}
