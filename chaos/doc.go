// Package chaos runs real cofferd processes and injects faults into them:
// it kills nodes (SIGKILL, no clean shutdown), restarts them, and checks that
// nothing the cluster acknowledged is lost.
//
// The harness (Cluster) prepares a cluster directory with `cofferd dev
// --init-only`, then starts one `cofferd serve` process per node itself so it
// can kill and restart any of them. Clients talk to the cluster through the
// client library over mTLS, as applications do.
//
// The tests double as measurements: TestChaos_LeaderKill reports the time
// from killing the leader to the first acknowledged write after it. `make
// test` runs a short smoke version; `make chaos` (CHAOS_KILLS, CHAOS_REPORT)
// runs longer and writes a JSON report.
package chaos
