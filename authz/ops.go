package authz

import (
	"fmt"
	"strings"
)

// Op is the name of an operation a caller asks to perform. The catalogue is
// closed: AllOps lists every operation, and anything else is refused by
// ParseOp and denied by Decide.
//
// Key operations act on a key bound to a resource and are granted only by
// ACL rules, whose resource pattern must match the key's resource.
// Administrative operations act on the service itself; they are granted by
// roles or by ACL rules on the pattern "**", and are not resource-scoped.
type Op string

// Key operations. The resource of a request is the resource of the key it
// acts on (for generate and put, of the key being created).
const (
	OpGenerate Op = "generate" // create a key from fresh random material
	OpPut      Op = "put"      // import caller-supplied key material
	OpGet      Op = "get"      // release key material to the caller
	OpDescribe Op = "describe" // read a key's metadata
	OpList     Op = "list"     // list keys (resource: the filter, or "" for all)
	OpEncrypt  Op = "encrypt"  // encrypt with a key held by the service
	OpDecrypt  Op = "decrypt"  // decrypt with a key held by the service
	OpDataKey  Op = "datakey"  // derive a data key wrapped under a key
	OpState    Op = "state"    // change a key's life-cycle state
	OpDestroy  Op = "destroy"  // destroy a key's material (or an older version's)
	OpRotate   Op = "rotate"   // add a new version of a key's material
)

// Administrative operations. They have no resource.
const (
	OpPolicyCreate  Op = "policy.create"
	OpPolicyUpdate  Op = "policy.update"
	OpPolicyRead    Op = "policy.read"
	OpACLManage     Op = "acl.manage"
	OpACLRead       Op = "acl.read"
	OpClientManage  Op = "client.manage"
	OpClientRead    Op = "client.read"
	OpEscrowRecover Op = "escrow.recover"
	OpAuditRead     Op = "audit.read"
	OpAuditExport   Op = "audit.export"
	OpAuditPrune    Op = "audit.prune" // delete exported entries up to a checkpoint
	OpClusterRead   Op = "cluster.read"
	OpClusterManage Op = "cluster.manage"
	OpSnapshotSave  Op = "snapshot.save"
	// OpSnapshotRestore replaces a fresh cluster's state with a backup.
	OpSnapshotRestore Op = "snapshot.restore"
	// OpCacheManage sets a client's key cache policy or the cluster
	// default; OpCacheFlush orders every client to drop its key cache.
	OpCacheManage Op = "cache.manage"
	OpCacheFlush  Op = "cache.flush"
	// OpCacheRead reads the caller's own key cache policy and watches its
	// invalidations. It concerns the caller only, so every registered,
	// active client holds it (a self operation, see SelfOps).
	OpCacheRead Op = "cache.read"
)

// UsesMaterial reports whether op uses a key's material: releases it (get)
// or encrypts, decrypts or wraps with it in the service. The key's use policy
// (CheckUse) applies to these operations.
func (o Op) UsesMaterial() bool {
	switch o {
	case OpGet, OpEncrypt, OpDecrypt, OpDataKey:
		return true
	}
	return false
}

// Encrypts reports whether op encrypts under a key's newest version with a
// fresh random nonce (encrypt, datakey): each such use counts against the
// version's encryption limit (EncryptionLimit).
func (o Op) Encrypts() bool { return o == OpEncrypt || o == OpDataKey }

// OpAll may appear in an ACL rule's operations and stands for every
// operation in the catalogue, including operations added in later versions.
// In a rule whose pattern is "**" it grants every key and every
// administrative operation; on any other pattern it grants every key
// operation on the matching resources and no administrative operation
// (those are never resource-scoped). OpAll is not an operation a request
// can ask for: Decide denies a Request whose Op is OpAll.
const OpAll Op = "*"

// MaxOpsLen bounds the input of ParseOps.
const MaxOpsLen = 1024

var keyOps = [...]Op{
	OpGenerate, OpPut, OpGet, OpDescribe, OpList,
	OpEncrypt, OpDecrypt, OpDataKey, OpState, OpDestroy, OpRotate,
}

var adminOps = [...]Op{
	OpPolicyCreate, OpPolicyUpdate, OpPolicyRead,
	OpACLManage, OpACLRead,
	OpClientManage, OpClientRead,
	OpEscrowRecover,
	OpAuditRead, OpAuditExport, OpAuditPrune,
	OpClusterRead, OpClusterManage,
	OpSnapshotSave, OpSnapshotRestore,
	OpCacheManage, OpCacheFlush, OpCacheRead,
}

// selfOps are the administrative operations that concern only the caller
// itself: Decide grants them to every registered, active client, without a
// role or rule.
var selfOps = [...]Op{OpCacheRead}

// opSet is a set of catalogue operations, one bit per operation, in the
// order of allOps.
type opSet uint64

var (
	allOps     = append(append([]Op(nil), keyOps[:]...), adminOps[:]...)
	opBits     = indexOps(allOps)
	keyOpSet   = opBits.setOf(keyOps[:])
	adminOpSet = opBits.setOf(adminOps[:])
	selfOpSet  = opBits.setOf(selfOps[:])
)

type opIndex map[Op]opSet

func indexOps(ops []Op) opIndex {
	if len(ops) > 64 {
		panic("authz: more than 64 operations")
	}
	m := make(opIndex, len(ops))
	for i, op := range ops {
		m[op] = 1 << uint(i)
	}
	return m
}

func (m opIndex) setOf(ops []Op) opSet {
	var s opSet
	for _, op := range ops {
		b, ok := m[op]
		if !ok {
			panic("authz: unknown operation " + string(op))
		}
		s |= b
	}
	return s
}

// has reports whether s contains every operation of o.
func (s opSet) has(o opSet) bool { return o != 0 && s&o == o }

// ops lists the operations of s in catalogue order.
func (s opSet) ops() []Op {
	var out []Op
	for i, op := range allOps {
		if s&(1<<uint(i)) != 0 {
			out = append(out, op)
		}
	}
	return out
}

// AllOps returns every operation in the catalogue, key operations first,
// in a fixed order. OpAll is not included. The slice is the caller's.
func AllOps() []Op { return append([]Op(nil), allOps...) }

// KeyOps returns the key operations in a fixed order.
func KeyOps() []Op { return append([]Op(nil), keyOps[:]...) }

// AdminOps returns the administrative operations in a fixed order.
func AdminOps() []Op { return append([]Op(nil), adminOps[:]...) }

// SelfOps returns the operations every registered, active client holds
// because they concern only itself.
func SelfOps() []Op { return append([]Op(nil), selfOps[:]...) }

// IsSelf reports whether o is a self operation (SelfOps).
func (o Op) IsSelf() bool { return selfOpSet.has(opBits[o]) }

// String returns the operation name.
func (o Op) String() string { return string(o) }

// Valid reports whether o is an operation of the catalogue. OpAll is not.
func (o Op) Valid() bool { _, ok := opBits[o]; return ok }

// IsKey reports whether o is a key operation.
func (o Op) IsKey() bool { return keyOpSet.has(opBits[o]) }

// IsAdmin reports whether o is an administrative operation.
func (o Op) IsAdmin() bool { return adminOpSet.has(opBits[o]) }

// ParseOp parses one operation name: a catalogue name, exactly as spelled in
// AllOps (lower case), or "*" for OpAll, which only rules may use.
func ParseOp(s string) (Op, error) {
	op := Op(s)
	if op == OpAll || op.Valid() {
		return op, nil
	}
	return "", fmt.Errorf("%w: %s", ErrUnknownOp, display(s, 64))
}

// ParseOps parses a comma-separated list such as "generate,get" or
// "get, describe". Blanks around names are ignored; empty items and unknown
// names are errors. Duplicates are dropped, keeping the first occurrence.
// The input is limited to MaxOpsLen bytes.
func ParseOps(s string) ([]Op, error) {
	if len(s) > MaxOpsLen {
		return nil, fmt.Errorf("%w: operation list longer than %d bytes", ErrUnknownOp, MaxOpsLen)
	}
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("%w: empty operation list", ErrUnknownOp)
	}
	var out []Op
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("%w: empty item in operation list", ErrUnknownOp)
		}
		op, err := ParseOp(item)
		if err != nil {
			return nil, err
		}
		dup := false
		for _, o := range out {
			if o == op {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, op)
		}
	}
	return out, nil
}
