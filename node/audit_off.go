//go:build coffer_noaudit

package node

// auditEnabled is false in this build: reads and refusals commit no audit
// entry. It exists only to measure what audit costs (make bench-noaudit);
// never deploy it.
const auditEnabled = false
