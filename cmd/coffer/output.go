package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// outputFormat is the --output value.
type outputFormat string

const (
	formatText outputFormat = "text"
	formatJSON outputFormat = "json"
)

func parseOutput(s string) (outputFormat, error) {
	switch f := outputFormat(strings.ToLower(strings.TrimSpace(s))); f {
	case formatText, formatJSON:
		return f, nil
	}
	return "", fmt.Errorf("unknown output format %q (want text or json)", s)
}

// algorithmNames maps the CLI's algorithm names to the API's.
var algorithmNames = []struct {
	name string
	alg  cofferv1.Algorithm
}{
	{"aes-128", cofferv1.Algorithm_ALGORITHM_AES_128},
	{"aes-192", cofferv1.Algorithm_ALGORITHM_AES_192},
	{"aes-256", cofferv1.Algorithm_ALGORITHM_AES_256},
	{"hmac-sha256", cofferv1.Algorithm_ALGORITHM_HMAC_SHA256},
}

// parseAlgorithm parses an --algorithm value; "" leaves the choice to the
// server (ALGORITHM_UNSPECIFIED). Case and the API's enum names
// (ALGORITHM_AES_256) are accepted too.
func parseAlgorithm(s string) (cofferv1.Algorithm, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return cofferv1.Algorithm_ALGORITHM_UNSPECIFIED, nil
	}
	for _, a := range algorithmNames {
		if s == a.name || s == strings.ToLower(a.alg.String()) {
			return a.alg, nil
		}
	}
	names := make([]string, len(algorithmNames))
	for i, a := range algorithmNames {
		names[i] = a.name
	}
	return 0, fmt.Errorf("unknown algorithm %q (want %s)", s, strings.Join(names, ", "))
}

// algorithmName is the CLI name of alg, or the enum name if it has none.
func algorithmName(alg cofferv1.Algorithm) string {
	for _, a := range algorithmNames {
		if a.alg == alg {
			return a.name
		}
	}
	return enumWord(alg.String(), "ALGORITHM_")
}

// consistencyFlag is the value of a --consistency flag. It is checked when
// the flags are parsed, so a bad value is a usage error (exit status 2).
type consistencyFlag struct{ v cofferv1.Consistency }

// addConsistencyFlag registers c as --consistency, linearizable by default.
func addConsistencyFlag(fs *pflag.FlagSet, c *consistencyFlag, usage string) {
	c.v = cofferv1.Consistency_CONSISTENCY_LINEARIZABLE
	fs.Var(c, "consistency", usage)
}

func (c *consistencyFlag) Set(s string) error {
	v, err := parseConsistency(s)
	if err != nil {
		return err
	}
	c.v = v
	return nil
}

func (c *consistencyFlag) String() string {
	if c == nil || c.v == cofferv1.Consistency_CONSISTENCY_UNSPECIFIED {
		return ""
	}
	return enumWord(c.v.String(), "CONSISTENCY_")
}

func (c *consistencyFlag) Type() string { return "string" }

// parseConsistency parses a --consistency value; "" is the server default.
func parseConsistency(s string) (cofferv1.Consistency, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "":
		return cofferv1.Consistency_CONSISTENCY_UNSPECIFIED, nil
	case "linearizable":
		return cofferv1.Consistency_CONSISTENCY_LINEARIZABLE, nil
	case "stale":
		return cofferv1.Consistency_CONSISTENCY_STALE, nil
	}
	return 0, fmt.Errorf("unknown consistency %q (want linearizable or stale)", s)
}

// enumWord turns an enum value name into a lowercase word:
// ("KEY_STATE_ACTIVE", "KEY_STATE_") → "active".
func enumWord(name, prefix string) string {
	w := strings.ToLower(strings.TrimPrefix(name, prefix))
	if w == "unspecified" {
		return "unknown"
	}
	return strings.ReplaceAll(w, "_", "-")
}

func stateName(s cofferv1.KeyState) string { return enumWord(s.String(), "KEY_STATE_") }

// compromisedMark flags a key once marked compromised, whatever its state
// now (a destroyed key keeps the mark).
func compromisedMark(md *cofferv1.KeyMetadata) string {
	if md.GetCompromised() && md.GetState() != cofferv1.KeyState_KEY_STATE_COMPROMISED {
		return " (compromised)"
	}
	return ""
}

func roleName(r cofferv1.NodeRole) string { return enumWord(r.String(), "NODE_ROLE_") }

// protoJSON is the JSON form of API messages: proto field names, default
// values included.
var protoJSON = protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true}

// marshalProto returns m as indented JSON with a stable layout.
func marshalProto(m proto.Message) ([]byte, error) {
	raw, err := protoJSON.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return nil, fmt.Errorf("indent JSON: %w", err)
	}
	return buf.Bytes(), nil
}

// writeProto writes m as indented JSON and a newline.
func writeProto(w io.Writer, m proto.Message) error {
	b, err := marshalProto(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// writeJSON writes v as indented JSON and a newline.
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// formatTime is RFC 3339 in UTC, or "-" when unset.
func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// formatUsePolicy summarises a use policy on one line.
func formatUsePolicy(p *cofferv1.KeyUsePolicy) string {
	ops := "any"
	if len(p.GetOperations()) > 0 {
		ops = strings.Join(p.GetOperations(), ",")
	}
	s := "operations=" + ops
	if p.GetNotBefore() != nil {
		s += " not_before=" + formatTime(p.GetNotBefore())
	}
	if p.GetNotAfter() != nil {
		s += " not_after=" + formatTime(p.GetNotAfter())
	}
	if n := p.GetMaxEncryptions(); n != 0 {
		s += fmt.Sprintf(" max_encryptions=%d", n)
	}
	if d := p.GetRotationPeriod(); d != nil {
		s += " rotate_every=" + d.AsDuration().String()
	}
	if n := p.GetRotateAfterEncryptions(); n != 0 {
		s += fmt.Sprintf(" rotate_after_encryptions=%d", n)
	}
	return s
}

// plural is "1 encryption", "2 encryptions".
func plural(n uint64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.FormatUint(n, 10) + " " + noun + "s"
}

// formatVersions lists a key's versions on one line: "1 (retired), 2 (3
// encryptions), 3 (newest, 0 encryptions)".
func formatVersions(md *cofferv1.KeyMetadata) string {
	var parts []string
	for _, v := range md.GetVersions() {
		var what []string
		if v.GetVersion() == md.GetVersion() {
			what = append(what, "newest")
		}
		if v.GetRetiredAt() != nil {
			what = append(what, "retired "+formatTime(v.GetRetiredAt()))
			if v.GetEscrowPurgeAt() != nil {
				what = append(what, "escrow copies kept until "+formatTime(v.GetEscrowPurgeAt()))
			}
		} else {
			what = append(what, plural(v.GetEncryptions(), "encryption"))
		}
		parts = append(parts, fmt.Sprintf("%d (%s)", v.GetVersion(), strings.Join(what, ", ")))
	}
	return strings.Join(parts, ", ")
}

// formatCachePolicy summarises a cache policy on one line.
func formatCachePolicy(p *cofferv1.KeyCachePolicy) string {
	if !p.GetCacheable() {
		return "cacheable=false"
	}
	return fmt.Sprintf("cacheable=true ttl=%s max_keys=%d", p.GetTtl().AsDuration(), p.GetMaxKeys())
}

// writeMetadataText writes key metadata as aligned "name: value" lines.
func writeMetadataText(w io.Writer, md *cofferv1.KeyMetadata) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	rows := [][2]string{
		{"gkid", md.GetGkid()},
		{"policy", md.GetPolicy()},
		{"resource", md.GetResource()},
		{"owner", md.GetOwner()},
		{"algorithm", algorithmName(md.GetAlgorithm())},
		{"state", stateName(md.GetState()) + compromisedMark(md)},
		{"created", formatTime(md.GetCreatedAt())},
	}
	// The life-cycle times, only for a key that has them.
	if md.GetActivateAt() != nil {
		rows = append(rows, [2]string{"activate at", formatTime(md.GetActivateAt())})
	}
	if md.GetStateChangedAt() != nil {
		rows = append(rows, [2]string{"state changed", formatTime(md.GetStateChangedAt())})
	}
	if len(md.GetVersions()) > 0 {
		rows = append(rows, [2]string{"versions", formatVersions(md)})
	}
	if md.GetEscrowPurgeAt() != nil {
		rows = append(rows, [2]string{"escrow kept until", formatTime(md.GetEscrowPurgeAt())})
	}
	rows = append(rows,
		[2]string{"kek version", fmt.Sprint(md.GetKekVersion())},
		[2]string{"revision", fmt.Sprint(md.GetRevision())},
		[2]string{"use policy", formatUsePolicy(md.GetUsePolicy())},
		[2]string{"cache policy", formatCachePolicy(md.GetCachePolicy())})
	for _, row := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

// writeKeyText writes fetched key material (base64) with its policies.
func writeKeyText(w io.Writer, resp *cofferv1.GetKeyResponse) error {
	md := resp.GetKey()
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	for _, row := range [][2]string{
		{"gkid", md.GetGkid()},
		{"algorithm", algorithmName(md.GetAlgorithm())},
		{"version", fmt.Sprint(max(resp.GetVersion(), 1))},
		{"material", base64.StdEncoding.EncodeToString(resp.GetMaterial())},
		{"use policy", formatUsePolicy(md.GetUsePolicy())},
		{"cache policy", formatCachePolicy(md.GetCachePolicy())},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

// keyTable writes key metadata as a table, one page at a time.
type keyTable struct {
	w      io.Writer
	header bool
}

func (t *keyTable) writePage(keys []*cofferv1.KeyMetadata) error {
	tw := tabwriter.NewWriter(t.w, 0, 0, 2, ' ', 0)
	if !t.header {
		fmt.Fprintln(tw, "GKID\tPOLICY\tRESOURCE\tALGORITHM\tSTATE\tCREATED")
		t.header = true
	}
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.GetGkid(), k.GetPolicy(), k.GetResource(),
			algorithmName(k.GetAlgorithm()), stateName(k.GetState()), formatTime(k.GetCreatedAt()))
	}
	return tw.Flush()
}

// jsonList streams {"<field>": [...], <trailing fields>} page by page, so
// that listing everything needs memory for one page only.
type jsonList struct {
	w     io.Writer
	field string
	count int
}

// writeJSONItems appends items to l's array.
func writeJSONItems[T proto.Message](l *jsonList, items []T) error {
	for _, it := range items {
		b, err := marshalProto(it)
		if err != nil {
			return err
		}
		sep := ",\n"
		if l.count == 0 {
			sep = "{\n  \"" + l.field + "\": [\n"
		}
		l.count++
		var ind bytes.Buffer
		if err := json.Indent(&ind, b, "    ", "  "); err != nil {
			return fmt.Errorf("indent JSON: %w", err)
		}
		if _, err := fmt.Fprintf(l.w, "%s    %s", sep, ind.Bytes()); err != nil {
			return err
		}
	}
	return nil
}

// finish closes the array and the object; trailer holds the trailing
// fields, already JSON ("name": value, one per line, indented).
func (l *jsonList) finish(trailer string) error {
	open := "\n  ]"
	if l.count == 0 {
		open = "{\n  \"" + l.field + "\": []"
	}
	_, err := fmt.Fprintf(l.w, "%s,\n%s\n}\n", open, trailer)
	return err
}

// keyListJSON streams {"keys": [...], "next_page_token": "..."}.
type keyListJSON struct{ jsonList }

func newKeyListJSON(w io.Writer) *keyListJSON {
	return &keyListJSON{jsonList{w: w, field: "keys"}}
}

func (l *keyListJSON) writePage(keys []*cofferv1.KeyMetadata) error {
	return writeJSONItems(&l.jsonList, keys)
}

func (l *keyListJSON) finish(nextPageToken string) error {
	tok, err := json.Marshal(nextPageToken)
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	return l.jsonList.finish(fmt.Sprintf("  \"next_page_token\": %s", tok))
}

// nodeJSON is one node in `cluster status -o json`.
type nodeJSON struct {
	ID           string `json:"id"`
	Site         string `json:"site"`
	Address      string `json:"address"`
	RaftAddress  string `json:"raft_address"`
	Role         string `json:"role"`
	Term         uint64 `json:"term"`
	LastLogIndex uint64 `json:"last_log_index"`
	AppliedIndex uint64 `json:"applied_index"`
	AuditSeq     uint64 `json:"audit_seq"`
	// CommandVersion is the newest Raft command version the node's build
	// applies (0 from a build that predates the field).
	CommandVersion uint32 `json:"command_version"`
	LeaderID       string `json:"leader_id"`
	Healthy        bool   `json:"healthy"`
	Error          string `json:"error"`
	Voter          bool   `json:"voter"`
	// PinnedCertSHA256 is the certificate the cluster accepts from the
	// node (empty: not admitted yet).
	PinnedCertSHA256 string `json:"pinned_cert_sha256"`
	// Suffrage is voter, non-voter, staging or none; LastContactMs the time
	// since the node last heard from the leader (-1: never).
	Suffrage      string `json:"suffrage"`
	LastContactMs int64  `json:"last_contact_ms"`
	Drained       bool   `json:"drained"`
	// StateDigest is the hex SHA-256 of the node's replicated state at
	// StateDigestIndex (cluster status --digest only).
	StateDigest      string `json:"state_digest,omitempty"`
	StateDigestIndex uint64 `json:"state_digest_index,omitempty"`
}

// siteLossJSON is one site in `cluster status -o json`.
type siteLossJSON struct {
	Site     string `json:"site"`
	Voters   uint32 `json:"voters"`
	Survives bool   `json:"survives_its_loss"`
}

// clusterJSON is the output of `cluster status -o json`.
type clusterJSON struct {
	// Authoritative is false when the reporter knows no leader: each node
	// then answered with its own view.
	Authoritative bool           `json:"authoritative"`
	ClusterID     string         `json:"cluster_id"`
	ReporterID    string         `json:"reporter_id"`
	Nodes         []nodeJSON     `json:"nodes"`
	Sites         []siteLossJSON `json:"sites"`
	LayoutWarning string         `json:"layout_warning,omitempty"`
}

func clusterStatusJSON(resp *cofferv1.ClusterStatusResponse) clusterJSON {
	out := clusterJSON{
		ClusterID:  resp.GetClusterId(),
		ReporterID: resp.GetReporterId(),
		Nodes:      make([]nodeJSON, 0, len(resp.GetNodes())),
		Sites:      []siteLossJSON{},

		LayoutWarning: resp.GetLayoutWarning(),
		Authoritative: resp.GetAuthoritative(),
	}
	for _, s := range resp.GetSiteLoss() {
		out.Sites = append(out.Sites, siteLossJSON{Site: s.GetSite(), Voters: s.GetVoters(), Survives: s.GetSurvives()})
	}
	for _, n := range resp.GetNodes() {
		out.Nodes = append(out.Nodes, nodeJSON{
			ID:             n.GetId(),
			Site:           n.GetSite(),
			Address:        n.GetAddress(),
			RaftAddress:    n.GetRaftAddress(),
			Role:           roleName(n.GetRole()),
			Term:           n.GetTerm(),
			LastLogIndex:   n.GetLastLogIndex(),
			AppliedIndex:   n.GetAppliedIndex(),
			AuditSeq:       n.GetAuditSeq(),
			CommandVersion: n.GetCommandVersion(),
			LeaderID:       n.GetLeaderId(),
			Healthy:        n.GetHealthy(),
			Error:          n.GetError(),
			Voter:          n.GetVoter(),

			PinnedCertSHA256: n.GetPinnedCertSha256(),
			Suffrage:         n.GetSuffrage(),
			LastContactMs:    n.GetLastContactMs(),
			Drained:          n.GetDrained(),
			StateDigest:      hex.EncodeToString(n.GetStateDigest()),
			StateDigestIndex: n.GetStateDigestIndex(),
		})
	}
	return out
}

// writeClusterTable writes the cluster status table; with digest, each
// node's state digest index and the first 16 hex digits of its digest.
func writeClusterTable(w io.Writer, resp *cofferv1.ClusterStatusResponse, digest bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	digestHead := ""
	if digest {
		digestHead = "DIGEST-INDEX\tDIGEST\t"
	}
	fmt.Fprintln(tw, "ID\tSITE\tADDRESS\tROLE\tSUFFRAGE\tTERM\tLAST-INDEX\tAPPLIED\tCONTACT\tAUDIT-SEQ\tCERT-PIN\t"+digestHead+"HEALTH")
	for _, n := range resp.GetNodes() {
		digestCells := ""
		if digest {
			digestCells = digestIndex(n) + "\t" + digestShort(n) + "\t"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%d\t%s\t%s%s\n", n.GetId(), dash(n.GetSite()), n.GetAddress(),
			roleName(n.GetRole()), suffrageCell(n), n.GetTerm(), n.GetLastLogIndex(), n.GetAppliedIndex(), contact(n), n.GetAuditSeq(), pinShort(n),
			digestCells, health(n))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(resp.GetSiteLoss()) > 0 {
		var parts []string
		for _, s := range resp.GetSiteLoss() {
			verdict := "survives its loss"
			if !s.GetSurvives() {
				verdict = "its loss loses the quorum"
			}
			parts = append(parts, fmt.Sprintf("%s %d (%s)", s.GetSite(), s.GetVoters(), verdict))
		}
		fmt.Fprintf(w, "\nvoters by site: %s\n", strings.Join(parts, ", "))
	}
	if warn := resp.GetLayoutWarning(); warn != "" {
		fmt.Fprintf(w, "WARNING: %s\n", warn)
	}
	if !resp.GetAuthoritative() {
		var views []string
		for _, n := range resp.GetNodes() {
			if n.GetRole() != cofferv1.NodeRole_NODE_ROLE_UNREACHABLE {
				views = append(views, fmt.Sprintf("%s follows %s (term %d, last contact %s)", n.GetId(), dash(n.GetLeaderId()), n.GetTerm(), contact(n)))
			}
		}
		fmt.Fprintf(w, "NOT AUTHORITATIVE: %s knows no leader (has the cluster lost its quorum?); each row is that node's own view: %s\n",
			resp.GetReporterId(), strings.Join(views, "; "))
	}
	return nil
}

// suffrageCell is a node's suffrage, marked when it is drained.
func suffrageCell(n *cofferv1.NodeStatus) string {
	if n.GetDrained() {
		return dash(n.GetSuffrage()) + ",drained"
	}
	return dash(n.GetSuffrage())
}

// contact is how long ago a node last heard from the leader.
func contact(n *cofferv1.NodeStatus) string {
	switch ms := n.GetLastContactMs(); {
	case n.GetRole() == cofferv1.NodeRole_NODE_ROLE_LEADER:
		return "-"
	case ms < 0:
		return "never"
	default:
		return (time.Duration(ms) * time.Millisecond).String()
	}
}

// pinShort is the first 16 hex digits of a node's pinned certificate
// fingerprint, or "-" while it is not admitted (or unreachable).
func pinShort(n *cofferv1.NodeStatus) string {
	p := n.GetPinnedCertSha256()
	if len(p) > 16 {
		return p[:16]
	}
	return dash(p)
}

// digestIndex is the applied index a node's state digest was taken at, or
// "-" when it reported none.
func digestIndex(n *cofferv1.NodeStatus) string {
	if len(n.GetStateDigest()) == 0 {
		return "-"
	}
	return strconv.FormatUint(n.GetStateDigestIndex(), 10)
}

// digestShort is the first 16 hex digits of a node's state digest, or "-"
// when it reported none (unreachable, or it could not compute one: the
// health column says why).
func digestShort(n *cofferv1.NodeStatus) string {
	d := hex.EncodeToString(n.GetStateDigest())
	if len(d) > 16 {
		return d[:16]
	}
	return dash(d)
}

func health(n *cofferv1.NodeStatus) string {
	switch {
	case n.GetHealthy():
		return "ok"
	case n.GetError() != "":
		return "unhealthy: " + oneLine(n.GetError())
	default:
		return "unhealthy"
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a server-supplied message on one table row.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
