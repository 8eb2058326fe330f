package authz

import "fmt"

// Role is a named bundle of administrative operations held by a client
// (ClientRecord.roles). Roles implement separation of duties: the people who
// write policy and access rules are not the people who run the cluster.
//
// A role grants administrative operations only, never key operations, and
// its grants are not resource-scoped. Key operations always need an ACL rule
// (see Snapshot.Decide), so holding a role never opens a key.
type Role string

// Roles of the catalogue.
const (
	// RoleSecurityOfficer manages custody policies, ACL rules and clients,
	// recovers escrowed keys, reads, exports and prunes the audit trail,
	// and governs client key caches: policy.*, acl.*, client.*,
	// escrow.recover, audit.read, audit.export, audit.prune, cache.manage,
	// cache.flush.
	RoleSecurityOfficer Role = "security-officer"
	// RoleOperator runs the cluster: cluster.*, snapshot.save and restore, audit.read,
	// policy.read, client.read. It can neither change who may do what nor
	// touch keys.
	RoleOperator Role = "operator"
	// RoleApplication grants no administrative operation. It marks clients
	// that only use keys; their key operations come from ACL rules.
	RoleApplication Role = "application"
)

var roles = [...]Role{RoleSecurityOfficer, RoleOperator, RoleApplication}

var roleOpSets = map[Role]opSet{
	RoleSecurityOfficer: setOf(
		OpPolicyCreate, OpPolicyUpdate, OpPolicyRead,
		OpACLManage, OpACLRead,
		OpClientManage, OpClientRead,
		OpEscrowRecover,
		OpAuditRead, OpAuditExport, OpAuditPrune,
		OpCacheManage, OpCacheFlush,
	),
	RoleOperator: setOf(
		OpClusterRead, OpClusterManage,
		OpSnapshotSave, OpSnapshotRestore,
		OpAuditRead,
		OpPolicyRead, OpClientRead,
	),
	RoleApplication: 0,
}

// roleRule and roleAllow are the Decision.Rule and Decision.Reason of a
// grant by each role, built once so the allow path does not allocate.
var (
	roleRule  = map[Role]string{}
	roleAllow = map[Role]string{}
)

func init() {
	for _, r := range roles {
		if roleOpSets[r]&keyOpSet != 0 {
			panic("authz: role " + string(r) + " grants a key operation")
		}
		roleRule[r] = "role:" + string(r)
		roleAllow[r] = "granted by role " + string(r)
	}
}

func setOf(ops ...Op) opSet { return opBits.setOf(ops) }

// Roles returns every role in a fixed order.
func Roles() []Role { return append([]Role(nil), roles[:]...) }

// String returns the role name.
func (r Role) String() string { return string(r) }

// Valid reports whether r is a role of the catalogue.
func (r Role) Valid() bool { _, ok := roleOpSets[r]; return ok }

// Ops returns the administrative operations r grants, in catalogue order
// (none for RoleApplication or an unknown role).
func (r Role) Ops() []Op { return roleOpSets[r].ops() }

// Grants reports whether r grants op.
func (r Role) Grants(op Op) bool { return roleOpSets[r].has(opBits[op]) }

// ParseRole parses a role name.
func ParseRole(s string) (Role, error) {
	if err := ValidateRole(s); err != nil {
		return "", err
	}
	return Role(s), nil
}

// ValidateRole checks that s names a role of the catalogue.
func ValidateRole(s string) error {
	if !Role(s).Valid() {
		return fmt.Errorf("%w: %s (want one of security-officer, operator, application)", ErrInvalidRole, display(s, 64))
	}
	return nil
}
