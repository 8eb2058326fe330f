package chaos

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/client"
)

// The checks of a run (chaos/README.md):
//  1. linearizability of the history against Model (porcupine);
//  2. every acknowledged key reads back from every node with the material
//     first returned;
//  3. no material released after an acknowledged revocation or
//     deactivation that covered it;
//  4. every node at the same applied index with the same state digest, and
//     the exported audit chain verifies with one entry per request;
//  5. enough throughput before the first fault for the run to count.

func (r *Runner) violate(rep *Report, check, detail string, ops ...int) {
	rep.Violations = append(rep.Violations, Violation{Check: check, Detail: detail, Ops: ops})
}

func (r *Runner) check(ctx context.Context, rep *Report) {
	ops := r.hist.Ops()
	rep.count(ops)
	r.checkThroughput(rep, ops)
	for _, op := range ops {
		if op.Code == "WRONG" {
			r.violate(rep, "answer", op.Err, op.ID)
		}
	}
	r.checkRecovery(rep, ops)
	r.checkRevocations(rep, ops)
	if err := r.checkConverged(ctx, rep); err != nil {
		r.violate(rep, "convergence", err.Error())
	}
	r.checkReadBack(ctx, rep, ops)
	r.checkAudit(ctx, rep, ops)
	// The cluster is done with: the search below takes every core, and a
	// starved cluster (or the lab's WAN, which runs in this process) would
	// only add noise to the logs kept for diagnosis.
	r.c.Close()
	if r.lab != nil {
		r.lab.Close()
	}
	start := time.Now()
	res, err := Linearizable(ops, r.cfg.CheckTimeout, filepath.Join(r.cfg.Dir, "linearizability.html"))
	rep.Linearizable = string(res)
	rep.CheckSeconds = time.Since(start).Seconds()
	switch {
	case err != nil:
		r.violate(rep, "linearizability", err.Error())
	case res == porcupine.Illegal:
		r.violate(rep, "linearizability", "the history is not linearizable: see linearizability.html in the run directory")
	case res == porcupine.Unknown:
		r.violate(rep, "linearizability", fmt.Sprintf("the check did not finish within %v", r.cfg.CheckTimeout))
	}
	r.cfg.Logf("linearizability: %s in %.1fs", res, rep.CheckSeconds)
}

// checkThroughput: a run that did not serve before its first fault proves
// nothing.
func (r *Runner) checkThroughput(rep *Report, ops []Op) {
	ok := 0
	for _, op := range ops {
		if op.Outcome == Ok && op.Return <= rep.FirstFault {
			ok++
		}
	}
	rep.OpsPerSecBeforeFault = float64(ok) / (float64(rep.FirstFault) / 1e9)
	if rep.OpsPerSecBeforeFault < r.cfg.MinOpsPerSec {
		r.violate(rep, "throughput", fmt.Sprintf("%.1f acknowledged operations/s before the first fault, below the %.0f a run needs to count", rep.OpsPerSecBeforeFault, r.cfg.MinOpsPerSec))
		rep.Invalid = true
	}
}

// checkRevocations: a get acknowledged after a revocation (deactivation)
// of its partition was acknowledged is a violation unless a grant
// (activation) that was not refused could have taken effect between the
// two. Only the revocation called last before the get matters: a grant
// that could follow it could follow any earlier one too.
func (r *Runner) checkRevocations(rep *Report, ops []Op) {
	byPart := map[int]map[Kind][]Op{}
	for _, op := range ops {
		switch op.Kind {
		case OpGet, OpRevoke, OpGrant, OpDeactivate, OpActivate:
			if byPart[op.Part] == nil {
				byPart[op.Part] = map[Kind][]Op{}
			}
			byPart[op.Part][op.Kind] = append(byPart[op.Part][op.Kind], op)
		}
	}
	for _, pair := range [][2]Kind{{OpRevoke, OpGrant}, {OpDeactivate, OpActivate}} {
		for _, part := range byPart {
			for _, g := range part[OpGet] {
				if g.Outcome != Ok {
					continue
				}
				var off *Op
				for i, o := range part[pair[0]] {
					if o.Outcome == Ok && o.Return < g.Call && (off == nil || o.Call > off.Call) {
						off = &part[pair[0]][i]
					}
				}
				if off == nil {
					continue
				}
				reopened := false
				for _, on := range part[pair[1]] {
					if on.Outcome != Failed && on.Call < g.Return && (on.Outcome == Unknown || on.Return > off.Call) {
						reopened = true
						break
					}
				}
				if !reopened {
					r.violate(rep, "revocation", fmt.Sprintf("get of %s by %s acknowledged after %s #%d was acknowledged", g.Gkid, Reader(g.Part), off.Kind, off.ID), off.ID, g.ID)
				}
			}
		}
	}
}

// checkRecovery derives the recovery figures: the first write acknowledged
// after a leader kill or a site loss, and the time to be whole again after
// a fault was undone.
func (r *Runner) checkRecovery(rep *Report, ops []Op) {
	firstWrite := func(after int64) (float64, bool) {
		best := int64(-1)
		for _, op := range ops {
			if op.Kind.isWrite() && op.Outcome == Ok && op.Call >= after && (best < 0 || op.Return < best) {
				best = op.Return
			}
		}
		return float64(best-after) / 1e6, best >= 0
	}
	add := func(name string, v float64) { rep.recovery[name] = append(rep.recovery[name], v) }
	for _, f := range rep.Faults {
		if f.Err != "" {
			r.violate(rep, "fault", fmt.Sprintf("%s on %v: %s", f.Kind, f.Nodes, f.Err))
			continue
		}
		switch f.Kind {
		case FaultKillLeader:
			if d, ok := firstWrite(f.Start); ok {
				add("leader_kill_to_first_write_ms", d)
			}
		case FaultKillSite, FaultCutSite:
			if d, ok := firstWrite(f.Start); ok {
				add("site_loss_to_first_write_ms", d)
			}
		}
		switch f.Kind {
		case FaultPartitionNode, FaultPartitionLeader, FaultCutSite:
			add("partition_heal_to_convergence_ms", f.RecoveryMS)
		case FaultKillNode, FaultKillLeader, FaultKillSite, FaultWipeNode:
			add("restart_to_caught_up_ms", f.RecoveryMS)
		case FaultFreezeLeader:
			add("thaw_to_caught_up_ms", f.RecoveryMS)
		}
	}
	rep.Recovery = map[string]Stat{}
	for k, v := range rep.recovery {
		rep.Recovery[k] = stat(v)
	}
}

// checkConverged waits until every node has applied the same index, then
// compares their state digests at that index.
func (r *Runner) checkConverged(ctx context.Context, rep *Report) error {
	var last string
	for ctx.Err() == nil {
		st, err := r.status(ctx, true)
		if err == nil && st.GetAuthoritative() && len(st.GetNodes()) == len(r.cfg.Sites) {
			idx := map[uint64][]string{}
			dig := map[string][]string{}
			for _, n := range st.GetNodes() {
				idx[n.GetAppliedIndex()] = append(idx[n.GetAppliedIndex()], n.GetId())
				d := stateDigest(n)
				dig[d] = append(dig[d], n.GetId())
			}
			if len(idx) == 1 {
				for i := range idx {
					rep.Converged.Index = i
				}
				if len(dig) == 1 {
					for d := range dig {
						rep.Converged.Digest = d
					}
					rep.Converged.Nodes = len(st.GetNodes())
					return nil
				}
				last = fmt.Sprintf("same applied index %d, different state digests: %v", rep.Converged.Index, dig)
			} else {
				last = fmt.Sprintf("applied indexes differ: %v", idx)
			}
		} else if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("nodes did not converge: %s", last)
}

func stateDigest(n *cofferv1.NodeStatus) string {
	return fmt.Sprintf("%s@%d", hex.EncodeToString(n.GetStateDigest()), n.GetStateDigestIndex())
}

// readBackPatience bounds how long the read-back retries a key whose read
// fails for want of a leader: an election is not a lost write, while a key
// that reads back NotFound or with other bytes is one at once.
const readBackPatience = time.Minute

// readBack reads one key (stale: from this node's own state), retrying
// Unavailable within readBackPatience; each attempt is its own request with
// its own id.
func readBack(ctx context.Context, cl *client.Client, gk, id string) (*cofferv1.GetKeyResponse, error) {
	deadline := time.Now().Add(readBackPatience)
	for attempt := 0; ; attempt++ {
		rctx := client.WithRequestID(ctx, fmt.Sprintf("%s-%d", id, attempt))
		resp, err := cl.GetKey(rctx, &cofferv1.GetKeyRequest{Gkid: gk, Consistency: cofferv1.Consistency_CONSISTENCY_STALE})
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) || ctx.Err() != nil {
			return resp, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkReadBack reads every acknowledged key from every node and compares
// its material with the first a get returned (or, for keys never read
// during the run, across the nodes).
func (r *Runner) checkReadBack(ctx context.Context, rep *Report, ops []Op) {
	first := map[string]string{}
	var acked []string
	for _, op := range ops {
		if op.Kind == OpGenerate && op.Outcome == Ok {
			acked = append(acked, op.Gkid)
		}
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].Return < ops[j].Return })
	for _, op := range ops {
		if op.Kind == OpGet && op.Outcome == Ok && first[op.Gkid] == "" {
			first[op.Gkid] = op.Material
		}
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].ID < ops[j].ID })
	type miss struct{ gk, node, why string }
	var mu sync.Mutex
	var misses []miss
	// Four readers per node, each taking every fourth key.
	const perNode = 4
	var wg sync.WaitGroup
	for i := range r.cfg.Sites {
		for w := 0; w < perNode; w++ {
			wg.Add(1)
			go func(i, w int) {
				defer wg.Done()
				cl, err := r.c.ClientAs(r.c.tls, 10*time.Second, i)
				if err != nil {
					mu.Lock()
					misses = append(misses, miss{"", r.c.ID(i), err.Error()})
					mu.Unlock()
					return
				}
				defer cl.Close()
				for n, gk := range acked {
					if n%perNode != w {
						continue
					}
					resp, err := readBack(ctx, cl, gk, fmt.Sprintf("verify-%d-%d", i, n))
					var why string
					switch {
					case err != nil:
						why = err.Error()
					default:
						m := digest(resp.GetMaterial())
						mu.Lock()
						if first[gk] == "" {
							first[gk] = m
						}
						if first[gk] != m {
							why = "material differs from the first returned"
						}
						mu.Unlock()
					}
					if why != "" {
						mu.Lock()
						misses = append(misses, miss{gk, r.c.ID(i), why})
						mu.Unlock()
					}
				}
			}(i, w)
		}
	}
	wg.Wait()
	rep.KeysReadBack = len(acked)
	for k, m := range misses {
		if k >= 20 {
			r.violate(rep, "lost write", fmt.Sprintf("... and %d more", len(misses)-20))
			break
		}
		r.violate(rep, "lost write", fmt.Sprintf("acknowledged key %s on %s: %s", m.gk, m.node, m.why))
	}
}

// checkAudit exports the audit log, verifies the chain with every node's
// signing key, and matches entries to requests by request id: an
// acknowledged or refused request has exactly one entry, one whose outcome
// is unknown at most one.
func (r *Runner) checkAudit(ctx context.Context, rep *Report, ops []Op) {
	cl, err := r.c.Client(30 * time.Second)
	if err != nil {
		r.violate(rep, "audit", err.Error())
		return
	}
	defer cl.Close()
	var export bytes.Buffer
	if err := cl.AuditExport(ctx, 0, &export); err != nil {
		r.violate(rep, "audit", "export: "+err.Error())
		return
	}
	trusted := audit.TrustedKeys{}
	r.mu.Lock()
	for _, pem := range r.auditKeys {
		if err := trusted.AddPEM(pem); err != nil {
			r.mu.Unlock()
			r.violate(rep, "audit", err.Error())
			return
		}
	}
	r.mu.Unlock()
	vr, err := audit.VerifyJSONL(bytes.NewReader(export.Bytes()), trusted, audit.DefaultVerifyOptions())
	rep.Audit.Entries, rep.Audit.Checkpoints = vr.Entries, vr.Checkpoints
	if err != nil {
		r.violate(rep, "audit", "the exported chain does not verify: "+err.Error())
	}
	count := map[string]int{}
	rd := audit.NewReader(bytes.NewReader(export.Bytes()))
	for {
		it, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			r.violate(rep, "audit", err.Error())
			return
		}
		if e := it.Entry; e != nil && strings.HasPrefix(e.GetRequestId(), "chaos-") {
			count[e.GetRequestId()]++
		}
	}
	bad := 0
	for _, op := range ops {
		n := count[op.RequestID]
		rep.Audit.Requests++
		if n == 1 || n == 0 && op.Outcome == Unknown {
			continue
		}
		if bad++; bad <= 20 {
			r.violate(rep, "audit", fmt.Sprintf("%s #%d (%s %s) has %d audit entries", op.Kind, op.ID, op.Outcome, op.Code, n), op.ID)
		}
	}
	if bad > 20 {
		r.violate(rep, "audit", fmt.Sprintf("... and %d more requests without exactly one entry", bad-20))
	}
}
