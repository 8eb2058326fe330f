// Package node is one Coffer cluster member and the composition root: it
// opens the state machine (fsm), the Raft log and snapshot stores, the Raft
// transport over mutual TLS (transport), takes a keystore (hsmwrap) and puts
// it behind the custody barrier (barrier), which does everything the node
// needs from it, and serves the gRPC API (api/coffer/v1).
//
// The request path is the service layer (service.go), which the node builds
// and which reaches Raft only through the replica interface the node
// implements. Each door (the gRPC services, Forward for a write another
// node accepted) begins one request value per request (request.go), which
// the service receives explicitly and which ends with exactly one audit
// entry (finishRequest). It authenticates the caller
// from its certificate and validates the request. Writes are rows of one
// table (writes.go); a follower forwards a write to the leader. The leader does every non-deterministic step (material, GKID,
// time, sealing) before it proposes one Raft command and answers once the
// command is applied. Reads are linearizable through a shared read-index
// round unless the caller asks for stale reads. Errors become gRPC codes in
// exactly one place (status.go).
//
// DESIGN.md explains why the pieces are arranged this way.
package node
