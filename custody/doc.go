// Package custody holds the custody barrier: the one place a node uses its
// keystore (hsmwrap) for stored records. Everything that crosses from
// committed state to key material, or proves a stored record unchanged,
// goes through a Barrier.
//
// A Barrier owns the keystore handle and, over it:
//   - key records: SealKey seals material under the record's policy KEK with
//     associated data covering every other field and the GKID; OpenKey and
//     VerifyKey refuse a record with any field changed, its material moved
//     from another record, or moved to another GKID (ErrIntegrity);
//   - access records (policies, clients, ACL rules, member pins): Tag and
//     VerifyRecord, a GMAC under the cluster's record integrity key;
//     VerifiedPolicy and VerifiedClient read and verify one from state, a
//     policy once per stored version;
//   - the KEK cache: KEKs are loaded only from committed wrapped copies;
//   - the audit HMAC key (InitCluster draws and seals it; MaterialDetail is
//     an audit entry's detail_hmac);
//   - keystore health: Run probes SelfTest periodically and at once after a
//     device error; while it fails, Ready and every key operation fail with
//     ErrUnavailable, and coffer_keystore_healthy is 0;
//   - what else the node needs from the keystore, explicitly: Random (GKIDs,
//     cluster id, generated material), NewPolicyKEK, the backup seal
//     (SealBackup, OpenBackup) and the checkpoint Signer.
//
// Contract, relied upon by callers:
//   - No method logs key material or puts it in an error or a metric. Only
//     OpenKey and Random return plaintext material, which the caller wipes.
//   - Errors wrap this package's sentinels (and hsmwrap's for device
//     failures) with %w; the node maps them to gRPC codes in one table.
//   - A record that fails a check is refused, counted in
//     coffer_integrity_failures_total and logged by path or GKID.
//   - VerifyRecord reads no state and never blocks on the probe, so the
//     state machine may call it (fsm.Config.VerifyRecord) from Open on.
//     Every other method that reads records needs UseState first.
//   - All methods are safe for concurrent use after UseState.
//
// DESIGN.md explains what the barrier guarantees and what it does not catch.
package custody
