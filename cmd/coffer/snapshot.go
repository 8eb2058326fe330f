package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/coffer-kms/coffer/client"
)

func (a *app) snapshotCmd() *cobra.Command {
	return group("snapshot", "Consistent snapshots of the cluster's state", a.snapshotSaveCmd())
}

func (a *app) snapshotSaveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "save FILE",
		Short: "Save an online, consistent snapshot (wrapped material only) to a new file",
		Args:  exactArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			tmp, err := os.CreateTemp(filepath.Dir(path), ".snapshot-*")
			if err != nil {
				return err
			}
			defer os.Remove(tmp.Name())
			defer tmp.Close()
			var idx uint64
			err = a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var err error
				idx, err = c.Snapshot(ctx, tmp)
				return err
			})
			if err != nil {
				return err
			}
			if err := tmp.Sync(); err != nil {
				return err
			}
			if _, err := os.Stat(path); err == nil {
				return fmt.Errorf("%s already exists", path)
			}
			if err := os.Rename(tmp.Name(), path); err != nil {
				return err
			}
			st, _ := os.Stat(path)
			if a.format == formatJSON {
				return writeJSON(a.out, map[string]any{"file": path, "applied_index": idx, "bytes": st.Size()})
			}
			fmt.Fprintf(a.out, "saved %s: %d bytes at applied index %d\n", path, st.Size(), idx)
			return nil
		},
	}
}
