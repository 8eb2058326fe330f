package chaos

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"os"
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
//     first returned, or is refused as the state changes sent to it allow
//     (and must, after an acknowledged one), and a ciphertext of it
//     decrypts there unless it is destroyed;
//  3. no use of a key released after an acknowledged revocation or
//     deactivation that covered it, nor after an acknowledged state change
//     of the key that forbids it (a decrypt after a destroy);
//  4. every node at the same applied index with the same state digest, and
//     the exported audit chain verifies with one entry per request;
//  5. enough throughput before the first fault for the run to count.
//
// Besides, an acknowledged answer wrong in itself (code WRONG) and any
// answer DataLoss (a node that finds its stored state corrupt: nothing in a
// run damages it) are violations.

func (r *Runner) violate(rep *Report, check, detail string, ops ...int) {
	rep.Violations = append(rep.Violations, Violation{Check: check, Detail: detail, Ops: ops})
}

func (r *Runner) check(ctx context.Context, rep *Report) {
	ops := r.hist.Ops()
	rep.count(ops)
	r.checkThroughput(rep, ops)
	corrupt := 0
	for _, op := range ops {
		switch op.Code {
		case "WRONG":
			r.violate(rep, "answer", op.Err, op.ID)
		case codes.DataLoss.String():
			if corrupt++; corrupt <= 20 {
				r.violate(rep, "integrity", fmt.Sprintf("%s #%d (%s) on %s: %s", op.Kind, op.ID, Resource(op.Part), op.Node, op.Err), op.ID)
			}
		}
	}
	if corrupt > 20 {
		r.violate(rep, "integrity", fmt.Sprintf("... and %d more operations answered DataLoss", corrupt-20))
	}
	r.checkRecovery(rep, ops)
	r.checkRevocations(rep, ops)
	r.checkKeyStates(rep, ops)
	r.checkKeyVersions(rep, ops)
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

// checkRevocations: a use of a key (get, encrypt, decrypt) acknowledged
// after a revocation (deactivation) of its partition was acknowledged is a
// violation unless a grant (activation) that was not refused could have
// taken effect between the two. Only the revocation called last before the
// use matters: a grant that could follow it could follow any earlier one
// too.
func (r *Runner) checkRevocations(rep *Report, ops []Op) {
	byPart := map[int]map[Kind][]Op{}
	for _, op := range ops {
		switch {
		case op.Kind.usesKey(), op.Kind == OpRevoke, op.Kind == OpGrant, op.Kind == OpDeactivate, op.Kind == OpActivate:
			if byPart[op.Part] == nil {
				byPart[op.Part] = map[Kind][]Op{}
			}
			byPart[op.Part][op.Kind] = append(byPart[op.Part][op.Kind], op)
		}
	}
	for _, pair := range [][2]Kind{{OpRevoke, OpGrant}, {OpDeactivate, OpActivate}} {
		for _, part := range byPart {
			for _, use := range []Kind{OpGet, OpEncrypt, OpDecrypt} {
				for _, g := range part[use] {
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
						r.violate(rep, "revocation", fmt.Sprintf("%s of %s by %s acknowledged after %s #%d was acknowledged", g.Kind, g.Gkid, Reader(g.Part), off.Kind, off.ID), off.ID, g.ID)
					}
				}
			}
		}
	}
}

// checkKeyStates: no key returns to an earlier state, so a get or encrypt
// called after a deactivate or destroy of its key was acknowledged, or a
// decrypt called after a destroy was acknowledged (crypto-shredding), must
// not be acknowledged.
func (r *Runner) checkKeyStates(rep *Report, ops []Op) {
	// The first acknowledgement of each change, per key.
	type first struct{ deactivated, destroyed *Op }
	changed := map[string]*first{}
	for i, op := range ops {
		if op.Outcome != Ok || op.Code == "WRONG" || op.Kind != OpKeyDeactivate && op.Kind != OpKeyDestroy {
			continue
		}
		f := changed[op.Gkid]
		if f == nil {
			f = &first{}
			changed[op.Gkid] = f
		}
		// A destroy also ends what a deactivation ends.
		if f.deactivated == nil || op.Return < f.deactivated.Return {
			f.deactivated = &ops[i]
		}
		if op.Kind == OpKeyDestroy && (f.destroyed == nil || op.Return < f.destroyed.Return) {
			f.destroyed = &ops[i]
		}
	}
	for _, op := range ops {
		f := changed[op.Gkid]
		if f == nil || op.Outcome != Ok || !op.Kind.usesKey() {
			continue
		}
		off, check := f.deactivated, "key state"
		if op.Kind == OpDecrypt {
			off, check = f.destroyed, "crypto-shredding"
		}
		if off != nil && off.Return < op.Call {
			r.violate(rep, check, fmt.Sprintf("%s #%d of %s acknowledged after %s #%d was acknowledged", op.Kind, op.ID, op.Gkid, off.Kind, off.ID), off.ID, op.ID)
		}
	}
}

// checkKeyVersions checks rotations in real time, per key: each
// acknowledged rotation made a version of its own, a rotation that began
// after another was acknowledged made a later one, and an encrypt that
// began after a rotation was acknowledged used that version or a later one.
func (r *Runner) checkKeyVersions(rep *Report, ops []Op) {
	rotations := map[string][]*Op{}
	for i, op := range ops {
		if op.Kind == OpKeyRotate && op.Outcome == Ok && op.Code != "WRONG" {
			rotations[op.Gkid] = append(rotations[op.Gkid], &ops[i])
		}
	}
	for _, rs := range rotations {
		seen := map[uint32]*Op{}
		for _, a := range rs {
			if b := seen[a.KeyVersion]; b != nil || a.KeyVersion < 2 {
				r.violate(rep, "key versions", fmt.Sprintf("rotation #%d of %s made version %d, as did another", a.ID, a.Gkid, a.KeyVersion), a.ID)
			}
			seen[a.KeyVersion] = a
			for _, b := range rs {
				if a.Return < b.Call && b.KeyVersion <= a.KeyVersion {
					r.violate(rep, "key versions", fmt.Sprintf("rotation #%d of %s made version %d after rotation #%d made %d", b.ID, b.Gkid, b.KeyVersion, a.ID, a.KeyVersion), a.ID, b.ID)
				}
			}
		}
	}
	for _, op := range ops {
		if op.Kind != OpEncrypt || op.Outcome != Ok || op.Code == "WRONG" {
			continue
		}
		for _, a := range rotations[op.Gkid] {
			if a.Return < op.Call && op.KeyVersion < a.KeyVersion {
				r.violate(rep, "key versions", fmt.Sprintf("encrypt #%d of %s used version %d after rotation #%d made %d", op.ID, op.Gkid, op.KeyVersion, a.ID, a.KeyVersion), a.ID, op.ID)
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

// readBackPatience bounds how long the read-back retries a request that
// fails for want of a leader: an election is not a lost write, while a key
// that reads back NotFound or with other bytes is one at once.
const readBackPatience = time.Minute

// readBack sends one read-back request (stale: answered from this node's
// own state), retrying Unavailable within readBackPatience; each attempt
// is its own request with its own id.
func readBack(ctx context.Context, id string, call func(ctx context.Context) error) error {
	deadline := time.Now().Add(readBackPatience)
	for attempt := 0; ; attempt++ {
		err := call(client.WithRequestID(ctx, fmt.Sprintf("%s-%d", id, attempt)))
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// keyFate is what the history says of one acknowledged key's life cycle
// and its ciphertexts.
type keyFate struct {
	// mayDeactivate and mayDestroy: a change to that state was sent and
	// not refused, so the key may be in it.
	mayDeactivate, mayDestroy bool
	// deactivated and destroyed: the first acknowledged change to that
	// state (a destroy also counts as deactivated), so it must be in it.
	deactivated, destroyed *Op
	// sealed is the first acknowledged encrypt under the key.
	sealed *Op
}

// keyFates gathers each key's fate from the history; the operations are
// copies.
func keyFates(ops []Op) map[string]*keyFate {
	fates := map[string]*keyFate{}
	fate := func(gk string) *keyFate {
		f := fates[gk]
		if f == nil {
			f = &keyFate{}
			fates[gk] = f
		}
		return f
	}
	for _, op := range ops {
		if op.Code == "WRONG" {
			continue
		}
		switch op.Kind {
		case OpKeyDeactivate, OpKeyDestroy:
			if op.Outcome == Failed {
				continue
			}
			f := fate(op.Gkid)
			destroy := op.Kind == OpKeyDestroy
			f.mayDeactivate = f.mayDeactivate || !destroy
			f.mayDestroy = f.mayDestroy || destroy
			if op.Outcome != Ok {
				continue
			}
			if f.deactivated == nil || op.Return < f.deactivated.Return {
				f.deactivated = &op
			}
			if destroy && (f.destroyed == nil || op.Return < f.destroyed.Return) {
				f.destroyed = &op
			}
		case OpEncrypt:
			if op.Outcome != Ok {
				continue
			}
			if f := fate(op.Gkid); f.sealed == nil || op.Return < f.sealed.Return {
				f.sealed = &op
			}
		}
	}
	return fates
}

// checkReadBack reads every acknowledged key from every node and compares
// its material with the first a get returned (or, for keys never read
// during the run, across the nodes). A key the node refuses as
// FailedPrecondition is described instead: it must be deactivated or
// destroyed, by a change that was sent and not refused, and a key with an
// acknowledged change must be in that state. A key's first acknowledged
// ciphertext must decrypt on every node to the plaintext encrypted, and
// must not once the key is destroyed.
func (r *Runner) checkReadBack(ctx context.Context, rep *Report, ops []Op) {
	first := map[string]string{}
	var acked []string
	for _, op := range ops {
		if op.Kind == OpGenerate && op.Outcome == Ok {
			acked = append(acked, op.Gkid)
		}
	}
	fates := keyFates(ops)
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
	states := map[string]int{}
	sealedKeys := 0
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
					f := fates[gk]
					if f == nil {
						f = &keyFate{}
					}
					id := fmt.Sprintf("verify-%d-%d", i, n)
					state, why := readBackKey(ctx, cl, gk, id, f, first, &mu)
					if why == "" && f.sealed != nil {
						why = readBackSealed(ctx, cl, id+"-d", f.sealed, state)
					}
					mu.Lock()
					if i == 0 {
						states[state]++
						if f.sealed != nil {
							sealedKeys++
						}
					}
					if why != "" {
						misses = append(misses, miss{gk, r.c.ID(i), why})
					}
					mu.Unlock()
				}
			}(i, w)
		}
	}
	wg.Wait()
	rep.KeysReadBack = len(acked)
	rep.KeysDeactivated, rep.KeysDestroyed, rep.KeysSealed = states[StateDeactivated], states[StateDestroyed], sealedKeys
	for k, m := range misses {
		if k >= 20 {
			r.violate(rep, "lost write", fmt.Sprintf("... and %d more", len(misses)-20))
			break
		}
		r.violate(rep, "lost write", fmt.Sprintf("acknowledged key %s on %s: %s", m.gk, m.node, m.why))
	}
}

// readBackKey reads key gk back from cl's node: its state there, and why it
// is wrong ("" if it is not). first holds the material first returned per
// key, under mu.
func readBackKey(ctx context.Context, cl *client.Client, gk, id string, f *keyFate, first map[string]string, mu *sync.Mutex) (string, string) {
	var resp *cofferv1.GetKeyResponse
	getErr := readBack(ctx, id, func(ctx context.Context) (err error) {
		resp, err = cl.GetKey(ctx, &cofferv1.GetKeyRequest{Gkid: gk, Consistency: cofferv1.Consistency_CONSISTENCY_STALE, Version: 1})
		return err
	})
	switch {
	case getErr == nil:
		if f.deactivated != nil {
			return StateActive, fmt.Sprintf("serves its material after %s #%d was acknowledged", f.deactivated.Kind, f.deactivated.ID)
		}
		m := digest(resp.GetMaterial())
		mu.Lock()
		defer mu.Unlock()
		if first[gk] == "" {
			first[gk] = m
		}
		if first[gk] != m {
			return StateActive, "material differs from the first returned"
		}
		return StateActive, ""
	case status.Code(getErr) != codes.FailedPrecondition:
		return "", getErr.Error()
	}
	var d *cofferv1.DescribeKeyResponse
	if err := readBack(ctx, id+"-s", func(ctx context.Context) (err error) {
		d, err = cl.DescribeKey(ctx, &cofferv1.DescribeKeyRequest{Gkid: gk, Consistency: cofferv1.Consistency_CONSISTENCY_STALE})
		return err
	}); err != nil {
		return "", fmt.Sprintf("get refused (%v), and describe: %v", getErr, err)
	}
	st := stateName(d.GetKey().GetState())
	switch {
	case st == StateDestroyed && !f.mayDestroy, st == StateDeactivated && !f.mayDeactivate:
		return st, fmt.Sprintf("%s, and no change to %s was sent that was not refused", st, st)
	case st == StateDeactivated && f.destroyed != nil:
		return st, fmt.Sprintf("deactivated after %s #%d was acknowledged", f.destroyed.Kind, f.destroyed.ID)
	case st != StateDestroyed && st != StateDeactivated:
		return st, fmt.Sprintf("get refused as FailedPrecondition, and describe says %s", st)
	}
	return st, ""
}

// readBackSealed decrypts enc's ciphertext on cl's node, whose key is in
// state there, and says why the answer is wrong ("" if it is not).
func readBackSealed(ctx context.Context, cl *client.Client, id string, enc *Op, state string) string {
	var resp *cofferv1.DecryptResponse
	err := readBack(ctx, id, func(ctx context.Context) (err error) {
		resp, err = cl.Decrypt(ctx, &cofferv1.DecryptRequest{Ciphertext: enc.Ciphertext, Context: encryptionContext(enc.Part), Consistency: cofferv1.Consistency_CONSISTENCY_STALE})
		return err
	})
	switch {
	case state == StateDestroyed && err == nil:
		return fmt.Sprintf("destroyed, and the ciphertext of encrypt #%d still decrypts", enc.ID)
	case state == StateDestroyed && status.Code(err) != codes.FailedPrecondition:
		return fmt.Sprintf("destroyed, and the ciphertext of encrypt #%d: %v", enc.ID, err)
	case state == StateDestroyed:
		return ""
	case err != nil:
		return fmt.Sprintf("the ciphertext of encrypt #%d: %v", enc.ID, err)
	case digest(resp.GetPlaintext()) != enc.Plaintext:
		return fmt.Sprintf("the ciphertext of encrypt #%d decrypts to other plaintext", enc.ID)
	}
	return ""
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
	opts := audit.DefaultVerifyOptions()
	// Every signed request must be the signature of the client the entry
	// names: the workload's certificates are all in the lab's directory.
	if opts.ClientCerts, err = r.clientCerts(); err != nil {
		r.violate(rep, "audit", err.Error())
		return
	}
	vr, err := audit.VerifyJSONL(bytes.NewReader(export.Bytes()), trusted, opts)
	rep.Audit.Entries, rep.Audit.Checkpoints = vr.Entries, vr.Checkpoints
	rep.Audit.SignedRequests = vr.RequestsVerified
	if err != nil {
		r.violate(rep, "audit", "the exported chain does not verify: "+err.Error())
	}
	if vr.RequestsUnchecked > 0 {
		r.violate(rep, "audit", fmt.Sprintf("%d entries keep a request signed with a certificate the lab did not issue", vr.RequestsUnchecked))
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

// clientCerts reads the certificates of every client the lab issued (the
// admin's and the workload's, in the cluster directory's client/).
func (r *Runner) clientCerts() ([]*x509.Certificate, error) {
	files, err := filepath.Glob(filepath.Join(r.c.cfg.Dir, "client", "*.pem"))
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for _, f := range files {
		if strings.HasSuffix(f, "-key.pem") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		b, _ := pem.Decode(data)
		if b == nil || b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("client certificate %s: no CERTIFICATE block", f)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("client certificate %s: %w", f, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}
