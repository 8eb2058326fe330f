package chaos

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/ciphertext"
	"github.com/coffer-kms/coffer/client"
	"github.com/coffer-kms/coffer/transport"
)

// WorkloadConfig shapes the recording clients.
type WorkloadConfig struct {
	// Workers is the number of concurrent recording clients (at least 16).
	Workers int
	// Parts is the number of partitions: a resource, its reader client and
	// the reader's grant each.
	Parts int
	// MaxKeysPerPart stops generating in a partition that has this many
	// keys (so that a list answers in one page).
	MaxKeysPerPart int
	// Timeout bounds one operation (one attempt).
	Timeout time.Duration
	// Seed seeds each worker's choices.
	Seed uint64
}

// DefaultWorkload is the workload of `make chaos`.
func DefaultWorkload(seed uint64) WorkloadConfig {
	return WorkloadConfig{Workers: 16, Parts: 12, MaxKeysPerPart: 800, Timeout: 3 * time.Second, Seed: seed}
}

// Workload runs recording clients against every node of a cluster.
type Workload struct {
	cfg  WorkloadConfig
	c    *Cluster
	hist *History
	// up says which nodes clients may send to (a killed node would only
	// refuse connections).
	up func(i int) bool

	admin   []*client.Client   // per node
	readers [][]*client.Client // per partition, per node

	mu    sync.Mutex
	pools [][]string // per partition: gkids seen
	count []int      // per partition: keys generated (acknowledged)
	// sealed holds, per partition, ciphertexts acknowledged encrypts
	// returned (at most maxSealed), for decrypts.
	sealed [][]sealed
	// retired holds, per partition, the keys a state change was sent for
	// (in the order first sent), and marked the same as a set; deactivated
	// and destroyed count the keys each kind of change added to it.
	retired                [][]string
	marked                 []map[string]bool
	deactivated, destroyed []int

	seq atomic.Uint64
}

// Reader is the client name of partition p's reader.
func Reader(p int) string { return fmt.Sprintf("reader-p%d", p) }

// Resource is partition p's resource.
func Resource(p int) string { return fmt.Sprintf("chaos/p%d", p) }

// RuleID is the id of partition p's grant.
func RuleID(p int) string { return fmt.Sprintf("chaos-p%d", p) }

// readerOps are the operations each partition's rule grants its reader on
// its resource.
var readerOps = []string{"get", "encrypt", "decrypt"}

// encryptionContext is the context partition p's encrypts bind and its
// decrypts present.
func encryptionContext(p int) map[string]string { return map[string]string{"partition": Resource(p)} }

// sealed is a ciphertext an acknowledged encrypt returned.
type sealed struct {
	gkid       string
	ciphertext []byte
	// plaintext is the SHA-256 of what was encrypted; op the encrypt's id.
	plaintext string
	op        int
}

const (
	// maxSealed bounds a partition's pool of ciphertexts; a new one
	// replaces a random one once it is full.
	maxSealed = 256
	// A deactivate goes to a key not sent a state change before only
	// while the keys sent one keep at most 1/deactivateShare of the
	// partition's known keys, and a destroy 1/destroyShare: most keys stay
	// active for gets and encrypts. Past the bound, state changes go to
	// keys already sent one (a repeat, or a change the key's state
	// refuses).
	deactivateShare = 5
	destroyShare    = 10
)

// NewWorkload registers the partitions' reader clients, issues their
// certificates from the cluster's client CA, grants each readerOps on its
// resource, and opens one single-attempt client per node and identity.
func NewWorkload(ctx context.Context, c *Cluster, hist *History, cfg WorkloadConfig, up func(int) bool) (*Workload, error) {
	w := &Workload{cfg: cfg, c: c, hist: hist, up: up, pools: make([][]string, cfg.Parts), count: make([]int, cfg.Parts),
		sealed: make([][]sealed, cfg.Parts), retired: make([][]string, cfg.Parts), marked: make([]map[string]bool, cfg.Parts),
		deactivated: make([]int, cfg.Parts), destroyed: make([]int, cfg.Parts)}
	for p := range w.marked {
		w.marked[p] = map[string]bool{}
	}
	admin, err := c.Client(10 * time.Second)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	ca, err := transport.LoadCA(filepath.Join(c.cfg.Dir, "ca", "client-ca.pem"), filepath.Join(c.cfg.Dir, "ca", "client-ca-key.pem"))
	if err != nil {
		return nil, err
	}
	for p := 0; p < cfg.Parts; p++ {
		if _, err := admin.RegisterClient(ctx, &cofferv1.RegisterClientRequest{Name: Reader(p)}); err != nil {
			return nil, fmt.Errorf("chaos: register %s: %w", Reader(p), err)
		}
		if _, err := admin.Grant(ctx, &cofferv1.GrantRequest{Id: RuleID(p), Subject: "client:" + Reader(p),
			Operations: readerOps, ResourcePattern: Resource(p)}); err != nil {
			return nil, fmt.Errorf("chaos: grant %s: %w", Reader(p), err)
		}
		certPEM, keyPEM, err := ca.Issue(transport.IssueRequest{Identity: transport.Identity{Kind: transport.KindClient, Name: Reader(p)}, Validity: 24 * time.Hour})
		if err != nil {
			return nil, err
		}
		cert, key := filepath.Join(c.cfg.Dir, "client", Reader(p)+".pem"), filepath.Join(c.cfg.Dir, "client", Reader(p)+"-key.pem")
		if err := transport.WriteKeyPair(cert, key, certPEM, keyPEM); err != nil {
			return nil, err
		}
		var row []*client.Client
		for i := 0; i < c.cfg.Nodes; i++ {
			cl, err := c.ClientAs(transport.TLSConfig{CAFile: c.tls.CAFile, CertFile: cert, KeyFile: key}, cfg.Timeout, i)
			if err != nil {
				return nil, err
			}
			row = append(row, cl)
		}
		w.readers = append(w.readers, row)
	}
	for i := 0; i < c.cfg.Nodes; i++ {
		cl, err := c.ClientAs(c.tls, cfg.Timeout, i)
		if err != nil {
			return nil, err
		}
		w.admin = append(w.admin, cl)
	}
	return w, nil
}

// Close closes every client.
func (w *Workload) Close() {
	for _, cl := range w.admin {
		_ = cl.Close()
	}
	for _, row := range w.readers {
		for _, cl := range row {
			_ = cl.Close()
		}
	}
}

// Run runs the workers until ctx ends.
func (w *Workload) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := 0; i < w.cfg.Workers; i++ {
		wg.Add(1)
		go func(id int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(w.cfg.Seed, uint64(id)))
			for ctx.Err() == nil {
				w.step(ctx, id, rng)
			}
		}(i)
	}
	wg.Wait()
}

// weights of the operations, in per mille.
var weights = []struct {
	k Kind
	w int
}{
	{OpGenerate, 190}, {OpGet, 255}, {OpDescribe, 85}, {OpList, 45},
	{OpGrant, 60}, {OpRevoke, 60}, {OpActivate, 60}, {OpDeactivate, 60},
	{OpEncrypt, 75}, {OpDecrypt, 70}, {OpKeyDeactivate, 17}, {OpKeyDestroy, 8}, {OpKeyRotate, 15},
}

// pick chooses the key of an operation on one (and, for a decrypt, its
// ciphertext) in partition p, and may change the kind when the partition
// has nothing for it: an operation on a key before any is known becomes a
// list, a decrypt before any ciphertext an encrypt, a generate in a full
// partition a list, and a state change past its share of keys goes to a
// key already sent one (or becomes a get, if there is none).
func (w *Workload) pick(rng *rand.Rand, k Kind, p int) (Kind, string, *sealed) {
	w.mu.Lock()
	defer w.mu.Unlock()
	pool := w.pools[p]
	var gk string
	if len(pool) > 0 {
		gk = pool[rng.IntN(len(pool))]
	}
	switch k {
	case OpGenerate:
		if w.count[p] >= w.cfg.MaxKeysPerPart {
			k = OpList
		}
	case OpDecrypt:
		if cts := w.sealed[p]; len(cts) > 0 {
			ct := cts[rng.IntN(len(cts))]
			return k, ct.gkid, &ct
		}
		k = OpEncrypt
	case OpKeyDeactivate, OpKeyDestroy:
		count, share := &w.deactivated[p], deactivateShare
		if k == OpKeyDestroy {
			count, share = &w.destroyed[p], destroyShare
		}
		switch {
		case gk != "" && (*count+1)*share <= len(pool):
			if !w.marked[p][gk] {
				w.marked[p][gk] = true
				w.retired[p] = append(w.retired[p], gk)
				*count++
			}
		case len(w.retired[p]) > 0:
			gk = w.retired[p][rng.IntN(len(w.retired[p]))]
		default:
			k = OpGet
		}
	}
	if !k.onKey() {
		return k, "", nil
	}
	if gk == "" {
		return OpList, "", nil
	}
	return k, gk, nil
}

func (w *Workload) step(ctx context.Context, worker int, rng *rand.Rand) {
	var nodes []int
	for i := 0; i < w.c.cfg.Nodes; i++ {
		if w.up(i) {
			nodes = append(nodes, i)
		}
	}
	if len(nodes) == 0 {
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
		return
	}
	n := nodes[rng.IntN(len(nodes))]
	p := rng.IntN(w.cfg.Parts)
	r := rng.IntN(1000)
	var k Kind
	for _, x := range weights {
		if r < x.w {
			k = x.k
			break
		}
		r -= x.w
	}
	k, gk, ct := w.pick(rng, k, p)
	op := Op{Worker: worker, Node: w.c.ID(n), Kind: k, Part: p, Gkid: gk,
		RequestID: fmt.Sprintf("chaos-%d-%d", w.cfg.Seed, w.seq.Add(1))}
	var plaintext []byte
	switch k {
	case OpEncrypt:
		plaintext = binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, rng.Uint64()), rng.Uint64())
		op.Plaintext = digest(plaintext)
	case OpDecrypt:
		op.Ciphertext, op.Want, op.Encrypted = ct.ciphertext, ct.plaintext, ct.op
	case OpKeyDeactivate:
		op.State = StateDeactivated
	case OpKeyDestroy:
		op.State = StateDestroyed
	}
	// A call's context outlives the run's: an operation in flight when the
	// run ends completes (or times out) and is recorded.
	octx, cancel := context.WithTimeout(client.WithRequestID(context.WithoutCancel(ctx), op.RequestID), w.cfg.Timeout)
	defer cancel()
	admin, reader := w.admin[n], w.readers[p][n]
	const lin = cofferv1.Consistency_CONSISTENCY_LINEARIZABLE
	op.Call = w.hist.Now()
	var err error
	switch k {
	case OpGenerate:
		var resp *cofferv1.GenerateKeyResponse
		resp, err = admin.GenerateKey(octx, &cofferv1.GenerateKeyRequest{Resource: Resource(p), RequestId: op.RequestID})
		if err == nil {
			op.Gkid = resp.GetKey().GetGkid()
		}
	case OpGet:
		var resp *cofferv1.GetKeyResponse
		// Version 1: what a get returns stays the same through rotations.
		resp, err = reader.GetKey(octx, &cofferv1.GetKeyRequest{Gkid: gk, Consistency: lin, Version: 1})
		if err == nil {
			op.Material = digest(resp.GetMaterial())
		}
	case OpDescribe:
		var resp *cofferv1.DescribeKeyResponse
		resp, err = admin.DescribeKey(octx, &cofferv1.DescribeKeyRequest{Gkid: gk, Consistency: lin})
		if err == nil {
			op.State = stateName(resp.GetKey().GetState())
			if resp.GetKey().GetResource() != Resource(p) {
				err = fmt.Errorf("%w: describe %s: resource %q, want %q", ErrWrongAnswer, gk, resp.GetKey().GetResource(), Resource(p))
			}
		}
	case OpList:
		var resp *cofferv1.ListKeysResponse
		resp, err = admin.ListKeys(octx, &cofferv1.ListKeysRequest{Resource: Resource(p), PageSize: 1000, Consistency: lin})
		if err == nil {
			op.Keys = []string{}
			for _, m := range resp.GetKeys() {
				op.Keys = append(op.Keys, m.GetGkid())
			}
			if resp.GetNextPageToken() != "" {
				err = fmt.Errorf("%w: list of %s spans pages", ErrWrongAnswer, Resource(p))
			}
		}
	case OpGrant:
		_, err = admin.Grant(octx, &cofferv1.GrantRequest{Id: RuleID(p), Subject: "client:" + Reader(p), Operations: readerOps, ResourcePattern: Resource(p)})
	case OpRevoke:
		_, err = admin.RevokeGrant(octx, &cofferv1.RevokeGrantRequest{Id: RuleID(p)})
	case OpActivate, OpDeactivate:
		_, err = admin.SetClientActive(octx, &cofferv1.SetClientActiveRequest{Name: Reader(p), Active: k == OpActivate})
	case OpEncrypt:
		var resp *cofferv1.EncryptResponse
		resp, err = reader.Encrypt(octx, &cofferv1.EncryptRequest{Gkid: gk, Plaintext: plaintext, Context: encryptionContext(p), Consistency: lin})
		if err == nil {
			op.Ciphertext, op.KeyVersion = resp.GetCiphertext(), resp.GetKeyVersion()
			if h, herr := ciphertext.ParseHeader(op.Ciphertext); herr != nil || h.GKID != gk || resp.GetGkid() != gk || h.KeyVersion != op.KeyVersion {
				err = fmt.Errorf("%w: encrypt under %s (version %d) returned a ciphertext of key %q (%q, version %d, %v)", ErrWrongAnswer, gk, op.KeyVersion, resp.GetGkid(), h.GKID, h.KeyVersion, herr)
			}
		}
	case OpDecrypt:
		var resp *cofferv1.DecryptResponse
		resp, err = reader.Decrypt(octx, &cofferv1.DecryptRequest{Ciphertext: op.Ciphertext, Context: encryptionContext(p), Consistency: lin})
		if err == nil {
			op.Plaintext = digest(resp.GetPlaintext())
			switch {
			case op.Plaintext != op.Want:
				err = fmt.Errorf("%w: decrypt of the ciphertext of encrypt #%d returned other plaintext", ErrWrongAnswer, op.Encrypted)
			case resp.GetGkid() != gk:
				err = fmt.Errorf("%w: decrypt of a ciphertext of %s names key %q", ErrWrongAnswer, gk, resp.GetGkid())
			}
		}
	case OpKeyRotate:
		var resp *cofferv1.RotateKeyResponse
		resp, err = admin.RotateKey(octx, &cofferv1.RotateKeyRequest{Gkid: gk, Reason: "chaos"})
		op.KeyVersion = resp.GetKey().GetVersion()
	case OpKeyDeactivate, OpKeyDestroy:
		var resp *cofferv1.SetKeyStateResponse
		resp, err = admin.SetKeyState(octx, &cofferv1.SetKeyStateRequest{Gkid: gk, State: keyStates[op.State], Reason: "chaos", DestroyEscrow: k == OpKeyDestroy})
		if got := stateName(resp.GetKey().GetState()); err == nil && got != op.State {
			err = fmt.Errorf("%w: %s of %s answered state %s", ErrWrongAnswer, k, gk, got)
		}
	}
	op.Return = w.hist.Now()
	op.Outcome, op.Code = classify(err)
	if err != nil {
		op.Err = err.Error()
	}
	if errors.Is(err, ErrWrongAnswer) {
		op.Outcome, op.Code = Ok, "WRONG"
	}
	op.ID = w.hist.Add(op)
	w.learn(op, rng)
}

// keyStates maps Op.State to the API's key states.
var keyStates = map[string]cofferv1.KeyState{
	StateActive:      cofferv1.KeyState_KEY_STATE_ACTIVE,
	StateDeactivated: cofferv1.KeyState_KEY_STATE_DEACTIVATED,
	StateDestroyed:   cofferv1.KeyState_KEY_STATE_DESTROYED,
}

// stateName is st as Op.State records it: one of StateActive... for the
// states the workload reaches, the API's name for any other.
func stateName(st cofferv1.KeyState) string {
	for name, s := range keyStates {
		if s == st {
			return name
		}
	}
	return st.String()
}

// learn adds the gkids an operation revealed to its partition's pool, and
// an acknowledged encrypt's ciphertext to its pool of ciphertexts.
func (w *Workload) learn(op Op, rng *rand.Rand) {
	if op.Outcome != Ok || op.Code == "WRONG" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch op.Kind {
	case OpGenerate:
		w.pools[op.Part] = append(w.pools[op.Part], op.Gkid)
		w.count[op.Part]++
	case OpList:
		known := map[string]bool{}
		for _, g := range w.pools[op.Part] {
			known[g] = true
		}
		for _, g := range op.Keys {
			if !known[g] {
				w.pools[op.Part] = append(w.pools[op.Part], g)
			}
		}
	case OpEncrypt:
		ct := sealed{gkid: op.Gkid, ciphertext: op.Ciphertext, plaintext: op.Plaintext, op: op.ID}
		if cts := w.sealed[op.Part]; len(cts) < maxSealed {
			w.sealed[op.Part] = append(cts, ct)
		} else {
			cts[rng.IntN(len(cts))] = ct
		}
	}
}

// ClientAs returns a single-attempt client (no retry, no cool-down) of
// node i with the given credentials: one operation is one request.
func (c *Cluster) ClientAs(tlsCfg transport.TLSConfig, timeout time.Duration, i int) (*client.Client, error) {
	conf, err := tlsCfg.ClientTLS()
	if err != nil {
		return nil, err
	}
	cfg := client.DefaultConfig()
	cfg.TLS = conf
	cfg.Endpoints = []string{c.Addr(i)}
	cfg.RequestTimeout, cfg.MaxAttempts, cfg.Backoff, cfg.Cooldown = timeout, 1, 0, 0
	return client.New(cfg)
}
