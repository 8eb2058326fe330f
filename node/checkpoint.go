package node

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/custody"
	"github.com/coffer-kms/coffer/fsm"
)

// AuditKeyFile is the file in a node's data directory that holds the public
// key its audit checkpoints are signed with (PEM), for auditors.
const AuditKeyFile = "audit-signing.pub"

// setupAuditSigner takes the node's checkpoint signing key from the keystore
// and publishes its public key in the data directory.
func (n *Node) setupAuditSigner() {
	signer, err := n.barrier.Signer("audit/" + n.cfg.ID)
	if errors.Is(err, custody.ErrCannotSign) {
		n.logger.Warn("the keystore cannot sign: audit checkpoints are disabled on this node", "keystore", n.barrier.Kind())
		return
	}
	if err != nil {
		n.logger.Warn("no audit signing key: audit checkpoints are disabled on this node", "err", err)
		return
	}
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err == nil {
		err = os.WriteFile(filepath.Join(n.cfg.DataDir, AuditKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	}
	if err != nil {
		n.logger.Warn("cannot publish the audit signing key", "err", err)
	}
	n.auditSigner = signer
}

// maybeCheckpoint signs and proposes a checkpoint of the chain head when
// enough time or entries have passed since the last one. Leader only.
func (n *Node) maybeCheckpoint() error {
	if n.auditSigner == nil || !n.IsLeader() {
		return nil
	}
	seq, head, err := n.fsm.AuditHead()
	if err != nil || seq == 0 {
		return err
	}
	last, err := n.fsm.AuditCheckpoint()
	if err != nil {
		return err
	}
	if last != nil {
		if last.GetSeq() >= seq {
			return nil
		}
		age := time.Since(time.Unix(0, last.GetTimeUnixNano()))
		if age < n.cfg.Audit.CheckpointInterval.Std() && seq-last.GetSeq() < n.cfg.Audit.CheckpointEvery {
			return nil
		}
	}
	return n.checkpoint(seq, head, n.auditSigner)
}

func (n *Node) checkpoint(seq uint64, head []byte, signer crypto.Signer) error {
	// Until the state has a time index, ask this checkpoint to start it,
	// once every member's build can apply that (an older one would stop).
	// Members are asked at most every sixth checkpoint interval: a member
	// that is down would hold up every checkpoint by the status timeout.
	start := false
	if !n.fsm.AuditTimeIndexStarted() {
		now := time.Now()
		if last := n.versionPoll.Load(); last == 0 || now.Sub(time.Unix(0, last)) >= 6*n.cfg.Audit.CheckpointInterval.Std() {
			n.versionPoll.Store(now.UnixNano())
			start = n.membersApply(fsm.TimeIndexVersion)
		}
	}
	cp := &cofferv1.AuditCheckpoint{Seq: seq, Head: head, TimeUnixNano: time.Now().UnixNano(), Signer: n.cfg.ID}
	if err := audit.Sign(cp, signer); err != nil {
		return fmt.Errorf("sign checkpoint: %w", err)
	}
	data, err := fsm.Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_CHECKPOINT, &cofferv1.AuditCheckpointCommand{
		Checkpoint: cp, StartTimeIndex: start})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), auditTimeout)
	defer cancel()
	res, _, err := n.proposeWait(ctx, data, n.futureError)
	if err != nil {
		return err
	}
	if errors.Is(res.Err, fsm.ErrDiverged) {
		n.logger.Error("this leader's own chain disagrees with its checkpoint", "seq", seq)
	}
	return res.Err
}

func validatePrune(req *cofferv1.AuditPruneRequest) error {
	upTo, before := req.GetUpToSeq(), req.GetBefore()
	switch {
	case upTo == 0 && before == nil:
		return fmt.Errorf("%w: up_to_seq or before is required", ErrInvalidArgument)
	case upTo != 0 && before != nil:
		return fmt.Errorf("%w: give up_to_seq or before, not both", ErrInvalidArgument)
	case before != nil && before.CheckValid() != nil:
		return fmt.Errorf("%w: before: %v", ErrInvalidArgument, before.CheckValid())
	}
	return nil
}

// pruneReason is the reason recorded in a prune's entry: the checkpoint it
// goes up to.
func pruneReason(cp *cofferv1.AuditCheckpoint) string {
	return fmt.Sprintf("entries up to seq %d (checkpoint signed %s)",
		cp.GetSeq(), time.Unix(0, cp.GetTimeUnixNano()).UTC().Format(time.RFC3339Nano))
}
