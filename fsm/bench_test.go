package fsm

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"testing"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

// BenchmarkApplyCreateKey applies batches of 32 key creations, as Raft hands
// them to the FSM under load, and reports the cost per key.
func BenchmarkApplyCreateKey(b *testing.B) {
	f := initializedFSM(b)
	enc := base32.StdEncoding.WithPadding(base32.NoPadding)
	const batch = 32
	idx := uint64(2)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		entries := make([][]byte, batch)
		for j := range entries {
			r := make([]byte, 16)
			_, _ = rand.Read(r)
			gk := "k1-abcdefghij-" + enc.EncodeToString(r)
			d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{
				Key: keyRec(gk, "default", fmt.Sprintf("bench/%d", j%8)), RequestId: gk[14:]})
			if err != nil {
				b.Fatal(err)
			}
			entries[j] = d
		}
		for _, r := range f.ApplyBatch(logs(idx, entries...)) {
			if err := r.(Result).Err; err != nil {
				b.Fatal(err)
			}
		}
		idx += batch
	}
}

// BenchmarkApplyDecidedReads applies audit batches of 16 decided reads, as
// a node's auditor sends them under load, and reports the cost per read.
func BenchmarkApplyDecidedReads(b *testing.B) {
	f, err := Open(DefaultConfig(b.TempDir()))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	setup := readSetup(b)
	f.ApplyBatch(logs(1, setup...))
	const batch = 16
	idx := uint64(len(setup) + 1)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		c := &cofferv1.AuditBatchCommand{}
		for j := 0; j < batch; j++ {
			e := readEntry("client:c0", "get", readK1)
			e.RequestId = fmt.Sprintf("req-%d-%d", i, j)
			c.Entries = append(c.Entries, e)
			c.Decide = append(c.Decide, &cofferv1.ReadDecision{Entry: uint32(j), CertSerial: "1f"})
		}
		d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_AUDIT_BATCH, c)
		if err != nil {
			b.Fatal(err)
		}
		res := f.Apply(logs(idx, d)[0]).(Result)
		if res.Err != nil || res.Reads[0].Refusal != cofferv1.ReadRefusal_READ_REFUSAL_UNSPECIFIED {
			b.Fatalf("%+v", res)
		}
		idx++
	}
}

// BenchmarkRotationScan reads what the leader's automatic rotation scan
// reads (node.maintainKeys): every key record, page by page, and each newest
// version's encryption count, over 100,000 keys; one op is one whole scan.
func BenchmarkRotationScan(b *testing.B) {
	f := initializedFSM(b)
	const keys, batch = 100_000, 500
	idx := uint64(2)
	for i := 0; i < keys; i += batch {
		entries := make([][]byte, batch)
		for j := range entries {
			gk := fmt.Sprintf("k1-abcdefghij-%026d", i+j)
			d, err := Encode(cofferv1.CommandType_COMMAND_TYPE_CREATE_KEY, &cofferv1.CreateKeyCommand{Key: keyRec(gk, "default", "bench/r")})
			if err != nil {
				b.Fatal(err)
			}
			entries[j] = d
		}
		f.ApplyBatch(logs(idx, entries...))
		idx += batch
	}
	b.ResetTimer()
	for range b.N {
		n, token := 0, ""
		for {
			recs, next, err := f.ListKeys(ListFilter{}, token, 500)
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range recs {
				if _, err := f.Encryptions(r.GetGkid(), 1); err != nil {
					b.Fatal(err)
				}
			}
			n += len(recs)
			if next == "" {
				break
			}
			token = next
		}
		if n != keys {
			b.Fatalf("scanned %d keys, want %d", n, keys)
		}
	}
}

// initializedFSM is a state machine on a fresh directory with the cluster
// initialised (index 1), closed when the benchmark ends.
func initializedFSM(b *testing.B) *FSM {
	f, err := Open(DefaultConfig(b.TempDir()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	initCmd, _ := Encode(cofferv1.CommandType_COMMAND_TYPE_INIT_CLUSTER, &cofferv1.InitClusterCommand{
		Info: &cofferv1.ClusterInfo{ClusterId: "abcdefghij"}, DefaultPolicy: policy("default")})
	f.Apply(logs(1, initCmd)[0])
	return f
}
