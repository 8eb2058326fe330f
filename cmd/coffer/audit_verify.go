package main

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/fsm"
)

func (a *app) auditVerifyCmd() *cobra.Command {
	var file, dataDir string
	var keys, pinned, clientCerts []string
	var strict bool
	cmd := &cobra.Command{
		Use:   "verify (--file EXPORT | --data-dir DIR) --trusted-key PEM... [--strict] [--pinned FILE]... [--client-cert PEM]...",
		Short: "Verify an audit export offline with the nodes' public keys (no cluster needed)",
		Long: `Verify the audit chain offline: consecutive sequence numbers, every hash and
link, and every checkpoint's head and signature against the trusted keys.
The source is an export (coffer audit export; "-" reads standard input) or
the data directory of a stopped node.

--trusted-key names a PEM file of PUBLIC KEY blocks: the audit signing key
of each node (` + auditKeyFile + ` in its data directory), obtained out of band,
for example at the key ceremony. Repeat it for every node. A key taken from
the very directory being verified proves nothing against whoever could
write that directory.

Entries after the last checkpoint are hash-linked but not signed; --strict
refuses them. --pinned names an earlier export or a file of checkpoint lines
you kept: the chain must reproduce every kept checkpoint, which catches a
rewrite of history even by someone holding a node key.

--client-cert names a PEM file of client CERTIFICATE blocks, or a directory
of such files. Every entry
that keeps a client's signed request (a release of key material or a
change) made with one of them must verify: the signature is the
certificate's, the certificate names the entry's caller, the statement
names the entry's request id and key. That shows, without the cluster,
that the client asked for what the entry records. Entries signed with
certificates not given are counted.

Exit status 0 when the chain verifies, 1 when it does not (the first bad
sequence number is named), 2 for usage errors.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(keys) == 0 {
				return usagef("--trusted-key is required: the PEM public key of each node's audit signing key (%s in the node's data directory), obtained out of band; repeat it for every node", auditKeyFile)
			}
			if (file == "") == (dataDir == "") {
				return usagef("give exactly one of --file or --data-dir")
			}
			for _, k := range keys {
				if strings.TrimSpace(k) == "" {
					return usagef("--trusted-key is blank")
				}
			}
			trusted, err := audit.LoadTrustedKeys(keys...)
			if err != nil {
				return fmt.Errorf("trusted keys: %w", err)
			}
			opts := audit.DefaultVerifyOptions()
			opts.StrictTail = strict
			if opts.Pinned, err = loadPinned(pinned); err != nil {
				return err
			}
			if opts.ClientCerts, err = loadClientCerts(clientCerts); err != nil {
				return err
			}
			v := verifyRun{source: file, trustedKeys: trusted.Len(), strict: strict, clientCerts: len(opts.ClientCerts)}
			for _, cp := range opts.Pinned {
				v.pinnedSeqs = append(v.pinnedSeqs, cp.GetSeq())
			}
			if dataDir != "" {
				v.source = "data directory " + dataDir
				v.report, v.err, err = verifyDataDir(dataDir, trusted, opts)
				if err != nil {
					return err
				}
			} else {
				var r io.Reader = a.in
				if file == "-" {
					v.source = "standard input"
				} else {
					f, err := os.Open(file)
					if err != nil {
						return err
					}
					defer f.Close()
					r = f
				}
				v.report, v.err = audit.VerifyJSONL(r, trusted, opts)
			}
			return a.printVerify(v)
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "file", "", `export file from "coffer audit export" ("-": standard input)`)
	f.StringVar(&dataDir, "data-dir", "", "data directory of a stopped node")
	f.StringArrayVar(&keys, "trusted-key", nil, "PEM file of a node's audit signing public key (required); repeatable")
	f.BoolVar(&strict, "strict", false, "fail when entries follow the last checkpoint (an unsigned tail)")
	f.StringArrayVar(&pinned, "pinned", nil, "earlier export or checkpoints file whose checkpoints the chain must reproduce; repeatable")
	f.StringArrayVar(&clientCerts, "client-cert", nil, "PEM file of client certificates (or a directory of them) whose signed requests the entries must verify against; repeatable")
	return cmd
}

// loadClientCerts reads the CERTIFICATE blocks of the given PEM files; a
// directory stands for its *.pem files (keys among them are skipped).
func loadClientCerts(paths []string) ([]*x509.Certificate, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("--client-cert: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		found, err := filepath.Glob(filepath.Join(p, "*.pem"))
		if err != nil {
			return nil, fmt.Errorf("--client-cert: %w", err)
		}
		n := 0
		for _, f := range found {
			if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte("-----BEGIN CERTIFICATE-----")) {
				files = append(files, f)
				n++
			}
		}
		if n == 0 {
			return nil, usagef("--client-cert %s: the directory holds no certificate (*.pem)", p)
		}
	}
	var out []*x509.Certificate
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("--client-cert: %w", err)
		}
		n := 0
		for {
			var block *pem.Block
			block, data = pem.Decode(data)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("--client-cert %s: %w", p, err)
			}
			out = append(out, c)
			n++
		}
		if n == 0 {
			return nil, usagef("--client-cert %s holds no CERTIFICATE block", p)
		}
	}
	return out, nil
}

// loadPinned reads the checkpoints (and prune markers' checkpoints) of the
// given export or checkpoint files. Entries in them are ignored.
func loadPinned(paths []string) ([]*cofferv1.AuditCheckpoint, error) {
	var out []*cofferv1.AuditCheckpoint
	seen := map[uint64][]byte{}
	add := func(path string, cp *cofferv1.AuditCheckpoint) error {
		if h, ok := seen[cp.GetSeq()]; ok {
			if !bytes.Equal(h, cp.GetHead()) {
				return fmt.Errorf("--pinned %s: two kept checkpoints for seq %d disagree", path, cp.GetSeq())
			}
			return nil
		}
		if len(out) == audit.MaxPinned {
			return fmt.Errorf("--pinned: more than %d checkpoints", audit.MaxPinned)
		}
		seen[cp.GetSeq()] = cp.GetHead()
		out = append(out, cp)
		return nil
	}
	for _, p := range paths {
		if err := readPinned(p, add); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func readPinned(path string, add func(string, *cofferv1.AuditCheckpoint) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--pinned: %w", err)
	}
	defer f.Close()
	rd := audit.NewReader(f)
	n := 0
	for {
		it, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("--pinned %s: %w", path, err)
		}
		cp := it.Checkpoint
		if it.Marker != nil {
			cp = it.Marker.GetCheckpoint()
		}
		if cp == nil {
			continue
		}
		if err := audit.ValidateCheckpoint(cp); err != nil {
			return fmt.Errorf("--pinned %s: line %d: %w", path, it.Line, err)
		}
		if err := add(path, cp); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("--pinned %s holds no checkpoint", path)
	}
	return nil
}

// errVerifyDone tells the exporter that the verifier stopped reading.
var errVerifyDone = errors.New("verification ended")

// verifyDataDir exports a stopped node's audit log through a pipe into the
// verifier, so the log is never held in memory. err is a failure to read
// the directory; verr is the verifier's verdict.
func verifyDataDir(dir string, trusted audit.TrustedKeys, opts audit.VerifyOptions) (rep audit.Report, verr, err error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := fsm.ExportAuditDir(dir, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	rep, verr = audit.VerifyJSONL(pr, trusted, opts)
	pr.CloseWithError(errVerifyDone)
	if err := <-done; err != nil && !errors.Is(err, errVerifyDone) {
		return rep, nil, err
	}
	return rep, verr, nil
}

// verifyRun is one verification and its outcome.
type verifyRun struct {
	source      string
	trustedKeys int
	strict      bool
	pinnedSeqs  []uint64
	clientCerts int
	report      audit.Report
	err         error
}

// verifyReportJSON is audit.Report in `audit verify -o json`.
type verifyReportJSON struct {
	Entries      uint64   `json:"entries"`
	FirstSeq     uint64   `json:"first_seq"`
	LastSeq      uint64   `json:"last_seq"`
	Head         string   `json:"head"`
	PrunedBefore uint64   `json:"pruned_before"`
	Checkpoints  int      `json:"checkpoints"`
	CoveredSeq   uint64   `json:"covered_seq"`
	Uncovered    uint64   `json:"uncovered"`
	Signers      []string `json:"signers"`
	// Entries keeping a signed request that verified against the
	// --client-cert certificates, and those signed with others.
	RequestsVerified  uint64 `json:"requests_verified"`
	RequestsUnchecked uint64 `json:"requests_unchecked"`
}

// verifyErrorJSON is the failure in `audit verify -o json`: a
// *audit.VerifyError's seq, kind and detail, or kind "unreadable" for an
// export that does not parse.
type verifyErrorJSON struct {
	Seq    uint64 `json:"seq,omitempty"`
	Kind   string `json:"kind"`
	Detail string `json:"detail"`
}

// verifyJSON is the output of `audit verify -o json`.
type verifyJSON struct {
	OK          bool             `json:"ok"`
	Source      string           `json:"source"`
	TrustedKeys int              `json:"trusted_keys"`
	Strict      bool             `json:"strict"`
	Pinned      int              `json:"pinned"`
	Report      verifyReportJSON `json:"report"`
	Error       *verifyErrorJSON `json:"error,omitempty"`
}

// verifyFailure is the error `audit verify` ends with when the chain does
// not verify: "audit: chain broken at seq N (KIND): detail".
type verifyFailure struct{ err error }

func (f verifyFailure) Error() string {
	var ve *audit.VerifyError
	if errors.As(f.err, &ve) {
		return fmt.Sprintf("audit: chain broken at seq %d (%s): %s", ve.Seq, ve.Kind, ve.Detail)
	}
	return fmt.Sprintf("audit: the export cannot be read: %v", f.err)
}

func (f verifyFailure) Unwrap() error { return f.err }

func (a *app) printVerify(v verifyRun) error {
	r := v.report
	if a.format == formatJSON {
		out := verifyJSON{OK: v.err == nil, Source: v.source, TrustedKeys: v.trustedKeys, Strict: v.strict, Pinned: len(v.pinnedSeqs),
			Report: verifyReportJSON{Entries: r.Entries, FirstSeq: r.FirstSeq, LastSeq: r.LastSeq, Head: hex.EncodeToString(r.Head),
				PrunedBefore: r.PrunedBefore, Checkpoints: r.Checkpoints, CoveredSeq: r.CoveredSeq, Uncovered: r.Uncovered,
				Signers: append([]string{}, r.Signers...), RequestsVerified: r.RequestsVerified, RequestsUnchecked: r.RequestsUnchecked}}
		if v.err != nil {
			var ve *audit.VerifyError
			if errors.As(v.err, &ve) {
				out.Error = &verifyErrorJSON{Seq: ve.Seq, Kind: ve.Kind, Detail: ve.Detail}
			} else {
				out.Error = &verifyErrorJSON{Kind: "unreadable", Detail: v.err.Error()}
			}
		}
		if err := writeJSON(a.out, out); err != nil {
			return err
		}
		if v.err != nil {
			return verifyFailure{v.err}
		}
		return nil
	}
	if v.err != nil {
		return verifyFailure{v.err}
	}
	tw := tabwriter.NewWriter(a.out, 0, 0, 1, ' ', 0)
	fmt.Fprintf(tw, "audit chain verified:\t%s\n", v.source)
	switch {
	case r.Entries == 0:
		fmt.Fprintf(tw, "entries:\t0\n")
	default:
		fmt.Fprintf(tw, "entries:\t%d (seq %d..%d)\n", r.Entries, r.FirstSeq, r.LastSeq)
	}
	if r.PrunedBefore > 0 {
		fmt.Fprintf(tw, "pruned:\tentries before seq %d, replaced by a signed marker\n", r.PrunedBefore)
	}
	if r.Checkpoints == 0 {
		fmt.Fprintf(tw, "checkpoints:\t0 (nothing in this export is signed)\n")
	} else {
		fmt.Fprintf(tw, "checkpoints:\t%d, covering up to seq %d\n", r.Checkpoints, r.CoveredSeq)
	}
	fmt.Fprintf(tw, "signers:\t%s\n", listOrDash(r.Signers))
	fmt.Fprintf(tw, "head:\t%x\n", r.Head)
	if r.Uncovered > 0 {
		fmt.Fprintf(tw, "uncovered tail:\t%s after seq %d, hash-linked but not signed (export after the next checkpoint, or use --strict)\n",
			countEntries(r.Uncovered), r.CoveredSeq)
	} else {
		fmt.Fprintf(tw, "uncovered tail:\tnone\n")
	}
	if v.clientCerts > 0 || r.RequestsUnchecked > 0 {
		fmt.Fprintf(tw, "signed requests:\t%d verified against %d client certificate(s); %d signed with certificates not given\n",
			r.RequestsVerified, v.clientCerts, r.RequestsUnchecked)
	}
	if len(v.pinnedSeqs) > 0 {
		// Kept checkpoints before a prune marker cannot be checked.
		checked := 0
		for _, seq := range v.pinnedSeqs {
			if r.PrunedBefore == 0 || seq >= r.PrunedBefore-1 {
				checked++
			}
		}
		fmt.Fprintf(tw, "pinned:\t%d kept checkpoint(s) reproduced", checked)
		if skipped := len(v.pinnedSeqs) - checked; skipped > 0 {
			fmt.Fprintf(tw, "; %d predate the prune marker and cannot be checked", skipped)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

// countEntries is "1 entry" or "N entries".
func countEntries(n uint64) string {
	if n == 1 {
		return "1 entry"
	}
	return fmt.Sprintf("%d entries", n)
}
