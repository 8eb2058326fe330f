package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/fsm"
)

func (a *app) snapshotCmd() *cobra.Command {
	return group("snapshot", "Sealed backups of the cluster's state", a.snapshotSaveCmd(), a.snapshotRestoreCmd())
}

func (a *app) snapshotSaveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "save FILE",
		Short: "Save an online, consistent, sealed backup (wrapped material only) to a new file",
		Long: `Save a consistent backup of the cluster's state to FILE, which must not exist.
It holds wrapped key material only, and is sealed by the cluster's keystore:
coffer snapshot restore accepts it only into a cluster that shares the
master key, and refuses it if it was changed, truncated or comes from
another cluster. Member certificate pins are left out (a restored cluster
admits its own members). Needs snapshot.save.`,
		Args: exactArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			if _, err := os.Stat(path); err == nil {
				return fmt.Errorf("%s already exists", path)
			}
			stream, err := os.CreateTemp(filepath.Dir(path), ".snapshot-*")
			if err != nil {
				return err
			}
			defer os.Remove(stream.Name())
			defer stream.Close()
			h := sha256.New()
			var seal *cofferv1.SnapshotSeal
			err = a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				var err error
				seal, err = c.Backup(ctx, io.MultiWriter(stream, h))
				return err
			})
			if err != nil {
				return err
			}
			size, err := stream.Seek(0, io.SeekCurrent)
			if err != nil {
				return err
			}
			if uint64(size) != seal.GetSize() || hex.EncodeToString(h.Sum(nil)) != hex.EncodeToString(seal.GetSha256()) {
				return fmt.Errorf("the backup received (%d bytes) is not the one the node sealed (%d bytes): try again", size, seal.GetSize())
			}
			if _, err := stream.Seek(0, io.SeekStart); err != nil {
				return err
			}
			out, err := os.CreateTemp(filepath.Dir(path), ".backup-*")
			if err != nil {
				return err
			}
			defer os.Remove(out.Name())
			defer out.Close()
			if err := fsm.WriteBackupHeader(out, seal); err != nil {
				return err
			}
			if _, err := io.Copy(out, stream); err != nil {
				return err
			}
			if err := out.Sync(); err != nil {
				return err
			}
			if err := os.Link(out.Name(), path); err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			}
			st, _ := os.Stat(path)
			if a.format == formatJSON {
				return writeJSON(a.out, map[string]any{"file": path, "applied_index": seal.GetAppliedIndex(), "bytes": st.Size(),
					"cluster_id": seal.GetClusterId(), "sha256": hex.EncodeToString(seal.GetSha256())})
			}
			fmt.Fprintf(a.out, "saved %s: %d bytes at applied index %d of cluster %s (sha256 %s)\n", path, st.Size(),
				seal.GetAppliedIndex(), seal.GetClusterId(), hex.EncodeToString(seal.GetSha256()))
			return nil
		},
	}
}

func (a *app) snapshotRestoreCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "restore FILE",
		Short: "Restore a sealed backup into a fresh cluster that shares the master key",
		Long: `Replace the state of a fresh cluster (one that holds no keys yet) with the
backup in FILE (coffer snapshot save). The cluster must share the master key
of the one that made the backup (the key ceremony). The leader checks the
seal before anything changes: a changed, truncated or foreign backup is
refused. The restored state is the backup's (keys, policies, clients, ACL
rules, the audit log), and the restore is the next entry of the restored
audit chain, naming the backup. Progress goes to standard error. Needs
snapshot.restore.`,
		Args: exactArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			seal, stream, err := fsm.ReadBackupHeader(f)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			// Find the leader, then send the backup to it alone.
			var leader string
			err = a.withClient(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.ClusterStatus(ctx, &cofferv1.ClusterStatusRequest{})
				if err != nil {
					return err
				}
				for _, n := range st.GetNodes() {
					if n.GetRole() == cofferv1.NodeRole_NODE_ROLE_LEADER {
						leader = n.GetAddress()
					}
				}
				if leader == "" {
					return fmt.Errorf("the cluster has no leader now; try again")
				}
				return nil
			})
			if err != nil {
				return err
			}
			cs, err := a.resolveConn()
			if err != nil {
				return err
			}
			cs.addrs = []string{leader}
			c, err := a.newClientFor(cs)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			total := int64(seal.GetSize())
			last := time.Now()
			resp, err := c.Restore(ctx, seal, stream, func(sent int64) {
				if time.Since(last) >= time.Second || sent == total {
					last = time.Now()
					fmt.Fprintf(a.err, "restore: %d of %d bytes sent (%.0f%%)\n", sent, total, 100*float64(sent)/float64(max(total, 1)))
				}
			})
			if err != nil {
				return err
			}
			if a.format == formatJSON {
				return writeJSON(a.out, map[string]any{"cluster_id": resp.GetClusterId(), "applied_index": resp.GetAppliedIndex(),
					"bytes": resp.GetBytes(), "sha256": resp.GetSha256()})
			}
			fmt.Fprintf(a.out, "restored %s (%d bytes, sha256 %s): the cluster is now %s, applied index %d\n",
				args[0], resp.GetBytes(), resp.GetSha256(), resp.GetClusterId(), resp.GetAppliedIndex())
			return nil
		},
	}
}
