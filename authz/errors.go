package authz

import "errors"

// Sentinel errors. Functions in this package wrap them with %w and add
// context, so callers test with errors.Is. None of them is ever returned by
// Decide, which answers with a Decision instead.
var (
	// ErrUnknownOp means an operation name is not in the catalogue (see
	// AllOps), or an operation list is empty or malformed.
	ErrUnknownOp = errors.New("authz: unknown operation")

	// ErrInvalidRole means a role name is not one of Roles().
	ErrInvalidRole = errors.New("authz: invalid role")

	// ErrInvalidPattern means a resource pattern breaks the syntax in
	// CompilePattern's documentation.
	ErrInvalidPattern = errors.New("authz: invalid resource pattern")

	// ErrInvalidResource means a key's resource breaks the grammar in
	// ValidateResource's documentation.
	ErrInvalidResource = errors.New("invalid resource")

	// ErrInvalidName means a client, group or rule name is malformed.
	ErrInvalidName = errors.New("authz: invalid name")

	// ErrInvalidRule means an ACL rule is malformed: bad id or subject, no
	// or unknown operations, a bad pattern, or administrative operations on
	// a pattern other than "**".
	ErrInvalidRule = errors.New("authz: invalid acl rule")

	// ErrInvalidClient means a client record is malformed: bad name, groups
	// or roles.
	ErrInvalidClient = errors.New("authz: invalid client record")

	// ErrInvalidSerial means a certificate serial is not hexadecimal or is
	// too long.
	ErrInvalidSerial = errors.New("authz: invalid certificate serial")

	// ErrDuplicate means NewSnapshot was given two clients with the same
	// name or two rules with the same id.
	ErrDuplicate = errors.New("authz: duplicate record")
)
