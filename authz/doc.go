// Package authz decides whether a request is allowed. It is the one place
// where Coffer evaluates authorisation: every front door (gRPC today,
// KMIP and HTTP later) calls Snapshot.Decide with the caller's identity
// and certificate serial, the operation and the resource, and gets a
// Decision back.
//
// # Model
//
// Identities come from verified certificates (package transport):
// "client:<name>" for API callers and "node:<name>" for cluster members.
// Nodes are not subject to ACLs; they may only call internal RPCs
// (Snapshot.DecideNode) and are refused by Decide.
//
// A client is a ClientRecord: a name, an active flag, groups and roles. A
// deactivated client is refused without revoking its certificate; a
// revoked certificate serial (RevokedCertificate) is refused whoever holds
// it.
//
// Operations (Op) form a closed catalogue: key operations (generate, put,
// get, describe, list, encrypt, decrypt, datakey, state, destroy) act on a
// key bound to a resource; administrative operations (policy.*, acl.*,
// client.*, escrow.recover, audit.*, cluster.*, snapshot.save, snapshot.restore) act on the
// service and have no resource.
//
// Roles (Role) grant administrative operations only: security-officer
// manages policies, rules and clients, recovers escrow and reads the audit
// trail; operator runs the cluster; application grants nothing by itself.
//
// An ACL rule (AclRule) grants a set of operations on the resources
// matching one pattern to a subject, "client:<name>" or "group:<name>".
// "*" in a rule's operations means every operation. Resources are
// '/'-separated paths; in a pattern "*" matches one segment and "**" any
// number of segments (see Pattern). Administrative operations are granted
// by rules on the pattern "**" only.
//
// # Decision
//
// Decide checks, stopping at the first failure: the certificate serial
// (present, not revoked), the identity (a well-formed client), that the
// client is registered and active, that the operation is known, and then
// the grant. A key operation needs one rule of the client or of one of its
// groups that both names the operation and matches the resource: double
// access control, with the operation and the resource granted together,
// never assembled from two rules. An administrative operation needs a role
// or a "**" rule. Everything else is denied. The Decision carries a code
// (OK, Unauthenticated, PermissionDenied), a bounded reason safe to show
// the caller and to audit, and the rule or role that allowed it.
//
// Decide is a pure, deterministic function of the Snapshot and the
// Request: no clock, no randomness, no I/O. It does not allocate when it
// allows. Explain runs the same procedure and reports every check, role and
// rule considered, for `coffer acl check`.
//
// # Changes
//
// A Snapshot is immutable. After every applied change to clients, rules or
// revocations the node builds a new one from committed state with
// NewSnapshot and swaps it in atomically; a nil Snapshot denies everything.
// Validate records with ValidateClient and ValidateRule before proposing
// them, so that committed state always builds.
//
// DESIGN.md explains the choices.
package authz
