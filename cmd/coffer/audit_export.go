package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/coffer-kms/coffer/client"
)

func (a *app) auditExportCmd() *cobra.Command {
	var format, out string
	var after uint64
	cmd := &cobra.Command{
		Use:   "export [--format jsonl] [--after SEQ] [--out FILE]",
		Short: "Export the audit log as JSON Lines, for offline verification",
		Long: `Export the audit log in the JSON Lines export format (audit/DESIGN.md):
entries and signed checkpoints in apply order, starting with the prune
marker when the log was pruned. The export goes to standard output, or with
--out to a new file (mode 0600; an existing file is never overwritten).
Check it with ` + "`coffer audit verify --file`" + `. --timeout bounds the whole
transfer: raise it for a long log.`,
		Args: exactArgs(0, "none"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f := strings.ToLower(strings.TrimSpace(format)); f != "jsonl" {
				return usagef("--format %q is not supported: only jsonl", format)
			}
			if out == "" {
				return a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
					return c.AuditExport(ctx, after, a.out)
				})
			}
			return a.exportToFile(cmd, after, out)
		},
	}
	f := cmd.Flags()
	f.StringVar(&format, "format", "jsonl", "export format; only jsonl")
	f.Uint64Var(&after, "after", 0, "export only the entries after this sequence number")
	f.StringVar(&out, "out", "", "write the export to this new file (0600) instead of standard output")
	return cmd
}

// exportToFile exports into a temporary file next to path and moves it to
// path only when the export is complete, never replacing an existing file.
func (a *app) exportToFile(cmd *cobra.Command, after uint64, path string) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s already exists", path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".audit-export-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	cw := &countingWriter{w: tmp}
	err = a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
		return c.AuditExport(ctx, after, cw)
	})
	if err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := publishNew(tmp.Name(), path); err != nil {
		return err
	}
	if a.format == formatJSON {
		return writeJSON(a.out, map[string]any{"file": path, "bytes": cw.n, "after_seq": after})
	}
	fmt.Fprintf(a.out, "exported %s: %d bytes\n", path, cw.n)
	return nil
}

// publishNew gives the complete file tmp the name path, failing if path
// exists. A hard link does that atomically; where links are not supported
// it falls back to a check and a rename.
func publishNew(tmp, path string) error {
	err := os.Link(tmp, path)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrExist):
		return fmt.Errorf("%s already exists", path)
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s already exists", path)
	}
	return os.Rename(tmp, path)
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
