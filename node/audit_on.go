//go:build !coffer_noaudit

package node

// auditEnabled is false only in the coffer_noaudit build, which exists to
// measure what audit costs (make bench-noaudit); never deploy that build.
const auditEnabled = true
