// Package chaos runs real cofferd processes, injects faults into them and
// checks that the cluster keeps its promises (chaos/README.md).
//
// The suite (Run, TestChaos_Schedule, make chaos) starts six nodes in
// three sites, each in its own network namespace where it can (Lab), runs
// sixteen recording clients (Workload: keys generated, read, listed,
// described, used to encrypt and decrypt, deactivated and destroyed, and
// the readers' access granted and revoked) while a seeded schedule kills,
// freezes, partitions and wipes nodes (faults.go), then checks the
// history for linearizability against Model with porcupine, reads every
// acknowledged key (and a ciphertext of it) back from every node,
// compares the nodes' state digests and verifies the audit chain with one
// entry per request (checks.go). It writes a JSON report and a readable summary (Report).
//
// The scenario tests (make chaos-scenarios) each inject one kind of fault
// and measure one recovery: repeated leader kills, the loss of a site, a
// frozen or cut-off leader, a lost majority, backup and restore.
//
// The harness (Cluster) prepares a cluster directory with `cofferd dev
// --init-only`, then starts one `cofferd serve` process per node itself so
// it can kill and restart any of them. Clients talk to the cluster through
// the client library over mTLS, as applications do.
package chaos
