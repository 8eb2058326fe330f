package authz

import cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"

// BootstrapRuleIDPrefix starts the id of the rule BootstrapAdmin makes.
const BootstrapRuleIDPrefix = "bootstrap-"

// BootstrapAdmin returns the records of an all-powerful administrator for
// development clusters: an active client called name holding every role,
// and a rule "bootstrap-<name>" granting "*" on "**" to it, so it may run
// every key and administrative operation on every resource. Dev mode
// commits both when it creates a cluster, so a fresh dev cluster can be
// used at once.
//
// Production clusters start with no grants at all. The first
// administrator's records are committed by an explicit, audited
// initialisation step, and a bootstrap administrator left in place defeats
// separation of duties, so it should be deactivated once real security
// officers and operators exist.
//
// Timestamps and created_by are left for the caller (the state machine must
// not read the clock). name is not validated here; records built from an
// invalid name are refused by ValidateClient, ValidateRule and NewSnapshot.
func BootstrapAdmin(name string) (*cofferv1.ClientRecord, *cofferv1.AclRule) {
	rs := make([]string, len(roles))
	for i, r := range roles {
		rs[i] = string(r)
	}
	client := &cofferv1.ClientRecord{
		Name:   name,
		Active: true,
		Roles:  rs,
	}
	rule := &cofferv1.AclRule{
		Id:              BootstrapRuleIDPrefix + name,
		Subject:         ClientSubject(name),
		Operations:      []string{string(OpAll)},
		ResourcePattern: PatternAll,
	}
	return client, rule
}
