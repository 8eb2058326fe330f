// Package fsm is Coffer's replicated state machine: Raft's committed log
// applied to a Pebble store.
//
// Every log entry is a cofferv1.Command envelope {type, version, payload};
// one table (handlers) maps types to handlers. Apply is deterministic: it
// reads only the command and committed state, never a clock, randomness or
// the keystore. Business failures (a duplicate GKID, an unknown policy) come
// back as Result.Err values and change nothing; an entry that cannot be
// decoded stops the node rather than let replicas diverge.
//
// The applied index is written in the same Pebble batch as the data, so a
// restarted node resumes where it stopped and ignores entries it has already
// applied. With a SnapshotStore, Snapshot takes a Pebble checkpoint, which
// becomes a stream only when Raft opens it; Restore reads a stream of every
// key, compressed and checksummed. DESIGN.md explains the schema, the
// snapshot store and the durability model.
package fsm
