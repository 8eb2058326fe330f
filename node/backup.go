package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/raft"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/authz"
	"github.com/coffer-kms/coffer/fsm"
)

// Backups: Snapshot streams a sealed backup (fsm/backup.go gives the file
// format); Restore puts one into a fresh cluster that shares the master key.
//
// The seal (custody.SealBackup): a fresh KEK generated in the keystore
// (carried wrapped under the master key) seals the stream's SHA-256, the
// seal's other fields as associated data. A cluster with the same master
// key unwraps the KEK and opens the seal; any other cannot.

// maxBackupBytes bounds a backup stream Restore accepts.
const maxBackupBytes = 64 << 30

// restoreTimeout bounds Raft's restore of a backup.
const restoreTimeout = 10 * time.Minute

// sealBackup seals the stream's digest and size.
func (n *Node) sealBackup(idx uint64, sum []byte, size uint64) (*cofferv1.SnapshotSeal, error) {
	seal := &cofferv1.SnapshotSeal{AppliedIndex: idx, SavedUnixNano: time.Now().UnixNano(), Node: n.cfg.ID, Sha256: sum, Size: size}
	if c, err := n.fsm.Cluster(); err == nil {
		seal.ClusterId = c.GetClusterId()
	}
	wrapped, sealed, err := n.barrier.SealBackup(sum, fsm.SealAAD(seal))
	if err != nil {
		return nil, err
	}
	seal.WrappedKek, seal.Seal = wrapped, sealed
	return seal, nil
}

// openSeal checks a backup's seal and returns the digest it seals.
func (n *Node) openSeal(seal *cofferv1.SnapshotSeal) ([]byte, error) {
	if len(seal.GetWrappedKek()) == 0 || len(seal.GetSeal()) == 0 || len(seal.GetSha256()) != sha256.Size {
		return nil, fmt.Errorf("%w: the backup carries no seal", ErrInvalidArgument)
	}
	sum, err := n.barrier.OpenBackup(seal.GetWrappedKek(), seal.GetSeal(), fsm.SealAAD(seal))
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(sum, seal.GetSha256()) {
		return nil, fmt.Errorf("%w: the backup fails its seal: its header was changed", ErrInvalidArgument)
	}
	return sum, nil
}

// snapshot streams a sealed backup of the state (wrapped material only),
// taken once every write acknowledged before the call is applied.
func (n *Node) snapshot(stream cofferv1.ClusterService_SnapshotServer) error {
	ctx := stream.Context()
	return toStatus(n.svc.auditedStream(ctx, "Snapshot", authz.OpSnapshotSave, func(grant func() error) error {
		if err := grant(); err != nil {
			return err
		}
		h := sha256.New()
		w := &chunkWriter{send: func(b []byte) error { return stream.Send(&cofferv1.SnapshotChunk{Data: b}) }}
		idx, err := n.fsm.BackupTo(io.MultiWriter(w, h))
		if err == nil {
			err = w.flush()
		}
		if err != nil {
			return err
		}
		seal, err := n.sealBackup(idx, h.Sum(nil), uint64(w.total))
		if err != nil {
			return err
		}
		n.logger.Info("backup streamed", "applied_index", idx, "bytes", w.total)
		return stream.Send(&cofferv1.SnapshotChunk{AppliedIndex: idx, Seal: seal})
	}))
}

// restoreBackup puts a sealed backup into this fresh cluster (see the RPC).
func (n *Node) restoreBackup(stream cofferv1.ClusterService_RestoreServer) error {
	ctx := stream.Context()
	r := n.svc.beginRequest(ctx, "Restore", nil)
	err := n.svc.admit(r)
	var resp *cofferv1.RestoreResponse
	if err == nil {
		resp, err = n.restore(ctx, stream, r)
	}
	// A restore that succeeded committed its entry after the restored
	// chain (carried); a refused or failed one gets it here.
	if ferr := n.svc.finishRequest(ctx, r, false, err); ferr != nil && err == nil {
		err = ferr
	}
	if err != nil {
		return toStatus(err)
	}
	return stream.SendAndClose(resp)
}

func (n *Node) restore(ctx context.Context, stream cofferv1.ClusterService_RestoreServer, r *request) (*cofferv1.RestoreResponse, error) {
	c, e := r.caller, r.entry
	if err := n.ensureLeaderReady(); err != nil {
		return nil, err
	}
	if err := n.svc.authorize(c, authz.OpSnapshotRestore, ""); err != nil {
		return nil, err
	}
	if has, err := n.fsm.HasKeys(); err != nil {
		return nil, err
	} else if has {
		return nil, fmt.Errorf("%w: a backup is restored into a fresh cluster, and this one holds keys: start a new cluster (same master key) and restore there", ErrPrecondition)
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("%w: no backup received: %v", ErrInvalidArgument, err)
	}
	seal := first.GetSeal()
	if seal == nil {
		return nil, fmt.Errorf("%w: the first message must carry the backup's seal", ErrInvalidArgument)
	}
	if seal.GetSize() == 0 || seal.GetSize() > maxBackupBytes {
		return nil, fmt.Errorf("%w: the backup's size %d is outside 1..%d bytes", ErrInvalidArgument, seal.GetSize(), uint64(maxBackupBytes))
	}
	e.Reason = clip(fmt.Sprintf("backup sha256:%s of cluster %s at index %d, saved %s by %s, %d bytes",
		hex.EncodeToString(seal.GetSha256()), seal.GetClusterId(), seal.GetAppliedIndex(),
		time.Unix(0, seal.GetSavedUnixNano()).UTC().Format(time.RFC3339), seal.GetNode(), seal.GetSize()), audit.MaxFieldLen)
	sum, err := n.openSeal(seal)
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(n.cfg.DataDir, "restore-*.tmp")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	size, err := receiveBackup(stream, first.GetData(), io.MultiWriter(tmp, h), seal.GetSize())
	if err != nil {
		return nil, err
	}
	if size != seal.GetSize() || !bytes.Equal(h.Sum(nil), sum) {
		return nil, fmt.Errorf("%w: the backup fails its seal: %d of %d bytes received, or changed (truncated, damaged or altered)", ErrInvalidArgument, size, seal.GetSize())
	}
	// The stream must read back whole (its own checksum) before Raft sees it.
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if err := fsm.ReadSnapshot(tmp, func(_, _ []byte) error { return nil }); err != nil {
		return nil, fmt.Errorf("%w: the backup's snapshot stream does not read: %v", ErrInvalidArgument, err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	start := time.Now()
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: int64(size)}
	if err := n.raft.Restore(meta, tmp, restoreTimeout); err != nil {
		return nil, fmt.Errorf("%w: restore: %v", ErrNoLeader, n.raftError(err))
	}
	n.logger.Warn("backup restored: the cluster's state is the backup's", "sha256", hex.EncodeToString(sum),
		"from_cluster", seal.GetClusterId(), "index", seal.GetAppliedIndex(), "bytes", size, "took", time.Since(start))
	// The restore is the first entry after the restored chain.
	setOutcome(e, nil)
	if err := n.svc.commitAudit(ctx, e); err != nil {
		return nil, fmt.Errorf("%w: the backup is restored but its audit entry could not be committed: %v", ErrNoLeader, err)
	}
	r.carried = true
	resp := &cofferv1.RestoreResponse{AppliedIndex: n.fsm.AppliedIndex(), Bytes: size, Sha256: hex.EncodeToString(sum)}
	if c, err := n.fsm.Cluster(); err == nil {
		resp.ClusterId = c.GetClusterId()
	}
	return resp, nil
}

// receiveBackup writes the stream's data (first, then every message's) to
// w, refusing more than limit bytes, and returns the bytes written.
func receiveBackup(stream cofferv1.ClusterService_RestoreServer, first []byte, w io.Writer, limit uint64) (uint64, error) {
	var total uint64
	write := func(b []byte) error {
		total += uint64(len(b))
		if total > limit {
			return fmt.Errorf("%w: the backup is longer than its seal says (%d bytes)", ErrInvalidArgument, limit)
		}
		_, err := w.Write(b)
		return err
	}
	if err := write(first); err != nil {
		return 0, err
	}
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return 0, fmt.Errorf("receive the backup: %w", err)
		}
		if m.GetSeal() != nil {
			return 0, fmt.Errorf("%w: a seal after the first message", ErrInvalidArgument)
		}
		if err := write(m.GetData()); err != nil {
			return 0, err
		}
	}
}
