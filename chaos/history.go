package chaos

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrWrongAnswer marks an acknowledged answer that is wrong in itself (a
// key described under another resource, a list that spans pages); the
// operation is recorded as ok with code WRONG and reported as a violation.
var ErrWrongAnswer = errors.New("chaos: wrong answer")

// Kind is an operation of the workload.
type Kind string

// The operations the recording clients send. Keys are generated, read and
// listed under one resource per partition; a partition's reader client
// holds one grant (a fixed rule id) on that resource, for get, encrypt and
// decrypt.
const (
	OpGenerate      Kind = "generate"       // admin generates a key (idempotency id)
	OpGet           Kind = "get"            // the partition's reader reads a key's material
	OpDescribe      Kind = "describe"       // admin reads a key's metadata
	OpList          Kind = "list"           // admin lists the partition's keys
	OpGrant         Kind = "grant"          // admin grants the reader get, encrypt and decrypt on the resource
	OpRevoke        Kind = "revoke"         // admin revokes that grant
	OpActivate      Kind = "activate"       // admin activates the reader client
	OpDeactivate    Kind = "deactivate"     // admin deactivates the reader client
	OpEncrypt       Kind = "encrypt"        // the reader encrypts a small plaintext under a key
	OpDecrypt       Kind = "decrypt"        // the reader decrypts a ciphertext an acknowledged encrypt returned
	OpKeyDeactivate Kind = "key-deactivate" // admin moves a key to DEACTIVATED
	OpKeyDestroy    Kind = "key-destroy"    // admin moves a key to DESTROYED
	OpKeyRotate     Kind = "key-rotate"     // admin adds a version of a key's material
)

// isWrite reports whether the operation changes replicated state.
func (k Kind) isWrite() bool {
	switch k {
	case OpGenerate, OpGrant, OpRevoke, OpActivate, OpDeactivate, OpKeyDeactivate, OpKeyDestroy, OpKeyRotate:
		return true
	}
	return false
}

// onKey reports whether the operation names one key the workload knows.
func (k Kind) onKey() bool {
	switch k {
	case OpGet, OpDescribe, OpEncrypt, OpDecrypt, OpKeyDeactivate, OpKeyDestroy, OpKeyRotate:
		return true
	}
	return false
}

// usesKey reports whether the operation is the reader's use of a key,
// which needs the reader's grant and an active reader.
func (k Kind) usesKey() bool {
	return k == OpGet || k == OpEncrypt || k == OpDecrypt
}

// The key states the workload reaches, as Op.State records them.
const (
	StateActive      = "active"
	StateDeactivated = "deactivated"
	StateDestroyed   = "destroyed"
)

// Outcome is how an operation ended, as the client saw it.
type Outcome string

const (
	// Ok: acknowledged.
	Ok Outcome = "ok"
	// Failed: a definite refusal; the operation changed nothing.
	Failed Outcome = "failed"
	// Unknown: no answer (timeout, connection lost, node unavailable); the
	// operation may have taken effect, or may still.
	Unknown Outcome = "unknown"
)

// Op is one recorded operation.
type Op struct {
	ID     int    `json:"id"`
	Worker int    `json:"worker"`
	Node   string `json:"node"`
	Kind   Kind   `json:"kind"`
	Part   int    `json:"part"`
	// RequestID is sent in the coffer-request-id header (and as the
	// generate idempotency id) and found again in the audit entry.
	RequestID string `json:"request_id"`
	// Gkid is the key asked for (get, describe, encrypt, a state change),
	// returned (generate), or named by the ciphertext (decrypt).
	Gkid string `json:"gkid,omitempty"`
	// Call and Return are nanoseconds since the run started.
	Call    int64   `json:"call"`
	Return  int64   `json:"return"`
	Outcome Outcome `json:"outcome"`
	// Code is the gRPC code of a failed or unknown operation.
	Code string `json:"code,omitempty"`
	Err  string `json:"err,omitempty"`
	// Material is the SHA-256 (hex) of the material get returned, or of
	// generate's read-back; Keys the gkids list returned.
	Material string   `json:"material,omitempty"`
	Keys     []string `json:"keys,omitempty"`
	// State is the key state describe returned (StateActive...); for a
	// state change, the state asked for.
	State string `json:"state,omitempty"`
	// Plaintext is the SHA-256 (hex) of the plaintext encrypt sent or
	// decrypt returned; Ciphertext what encrypt returned or decrypt sent.
	Plaintext  string `json:"plaintext,omitempty"`
	Ciphertext []byte `json:"ciphertext,omitempty"`
	// KeyVersion is the key version an encrypt used or a rotation made.
	KeyVersion uint32 `json:"key_version,omitempty"`
	// For a decrypt: Encrypted is the id of the acknowledged encrypt that
	// returned the ciphertext, and Want the SHA-256 of the plaintext it
	// sent. (An encrypt is never operation 0: it needs a key that an
	// operation recorded earlier revealed.)
	Encrypted int    `json:"encrypted,omitempty"`
	Want      string `json:"want,omitempty"`
}

// History is the concurrent-safe record of a run.
type History struct {
	start time.Time
	mu    sync.Mutex
	ops   []Op
}

// NewHistory starts a history; times are relative to now.
func NewHistory() *History { return &History{start: time.Now()} }

// Since returns the run time of t.
func (h *History) Since(t time.Time) int64 { return int64(t.Sub(h.start)) }

// Now returns the run time now.
func (h *History) Now() int64 { return h.Since(time.Now()) }

// Add records a completed operation and returns its id.
func (h *History) Add(op Op) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	op.ID = len(h.ops)
	h.ops = append(h.ops, op)
	return op.ID
}

// Ops returns a copy of the history so far.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// classify turns a call's error into an outcome. Only codes that say the
// request was refused before it changed anything are definite; a node
// that could not reach the leader, a deadline or a lost connection leave
// the outcome unknown.
func classify(err error) (Outcome, string) {
	if err == nil {
		return Ok, ""
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return Unknown, codes.DeadlineExceeded.String()
	}
	c := status.Code(err)
	switch c {
	case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.PermissionDenied,
		codes.Unauthenticated, codes.FailedPrecondition, codes.OutOfRange, codes.Unimplemented,
		// Aborted: a revision conflict or a request the accepting node
		// abandoned; ResourceExhausted: refused at admission. Neither was
		// applied.
		codes.Aborted, codes.ResourceExhausted:
		return Failed, c.String()
	}
	return Unknown, c.String()
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// ReadHistory reads a history.jsonl written by a run.
func ReadHistory(path string) ([]Op, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ops []Op
	dec := json.NewDecoder(f)
	for {
		var op Op
		if err := dec.Decode(&op); err == io.EOF {
			return ops, nil
		} else if err != nil {
			return nil, fmt.Errorf("chaos: %s: %w", path, err)
		}
		ops = append(ops, op)
	}
}
