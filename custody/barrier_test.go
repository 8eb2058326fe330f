package custody

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/audit"
	"github.com/coffer-kms/coffer/hsmwrap"
	"github.com/coffer-kms/coffer/hsmwrap/hsmtest"
)

func TestBarrier_SealOpenRoundTrip(t *testing.T) {
	f := newFixture(t)
	material := []byte("0123456789abcdef0123456789abcdef")
	rec := f.mustKey("k1", material)
	if rec.GetKekVersion() != 2 {
		t.Fatalf("sealed under kek version %d, want the policy's current 2", rec.GetKekVersion())
	}
	if len(rec.GetWrappedMaterial()) == 0 || bytes.Contains(rec.GetWrappedMaterial(), material) {
		t.Fatal("wrapped material missing or holds the plaintext")
	}
	got, err := f.b.OpenKey(proto.CloneOf(rec))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, material) {
		t.Fatal("opened material differs")
	}
	if err := f.b.VerifyKey(rec); err != nil {
		t.Fatal(err)
	}
	// Another node with the same master key opens it too (it loads the KEK
	// from the committed policy record).
	other := f.peer()
	if got, err := other.OpenKey(rec); err != nil || !bytes.Equal(got, material) {
		t.Fatalf("another node: %v", err)
	}
}

func TestBarrier_SealRefusesPolicyMismatch(t *testing.T) {
	f := newFixture(t)
	pol, err := f.b.VerifiedPolicy("default")
	if err != nil {
		t.Fatal(err)
	}
	rec := &cofferv1.KeyRecord{Gkid: "k1", Policy: "other"}
	if err := f.b.SealKey(pol, rec, []byte("material")); err == nil || rec.GetWrappedMaterial() != nil {
		t.Fatal("sealed a record under a policy it does not name")
	}
}

// TestBarrier_KeyRecordTamperRefused changes each field of a sealed key
// record in turn, moves material between records and truncates it: every
// one fails with ErrIntegrity and returns no material.
func TestBarrier_KeyRecordTamperRefused(t *testing.T) {
	f := newFixture(t)
	rec := f.mustKey("k1", []byte("material-one-0123456789abcdef012"))
	other := f.mustKey("k2", []byte("material-two-0123456789abcdef012"))
	// One change per field, by field name; every field but the material
	// itself must be covered (a new field needs a row here and a place in
	// recordAAD).
	changes := map[string]func(r *cofferv1.KeyRecord){
		"gkid":              func(r *cofferv1.KeyRecord) { r.Gkid = "k3" },
		"policy":            func(r *cofferv1.KeyRecord) { r.Policy = "attacker" },
		"resource":          func(r *cofferv1.KeyRecord) { r.Resource = "other" },
		"owner":             func(r *cofferv1.KeyRecord) { r.Owner = "client:mallory" },
		"algorithm":         func(r *cofferv1.KeyRecord) { r.Algorithm = cofferv1.Algorithm_ALGORITHM_AES_128 },
		"state":             func(r *cofferv1.KeyRecord) { r.State = cofferv1.KeyState(int32(r.State) + 1) },
		"created_unix_nano": func(r *cofferv1.KeyRecord) { r.CreatedUnixNano++ },
		"kek_version":       func(r *cofferv1.KeyRecord) { r.KekVersion = 1 },
		"revision":          func(r *cofferv1.KeyRecord) { r.Revision++ },
		"use_policy": func(r *cofferv1.KeyRecord) {
			r.UsePolicy.NotAfter = timestamppb.New(time.Unix(1e9, 0))
		},
		"cache_policy":              func(r *cofferv1.KeyRecord) { r.CachePolicy.Ttl = durationpb.New(time.Hour) },
		"escrow":                    func(r *cofferv1.KeyRecord) { r.Escrow[0].Ciphertext = []byte("attacker's copy") },
		"activate_at_unix_nano":     func(r *cofferv1.KeyRecord) { r.ActivateAtUnixNano = 1 },
		"state_changed_unix_nano":   func(r *cofferv1.KeyRecord) { r.StateChangedUnixNano = 1 },
		"compromised":               func(r *cofferv1.KeyRecord) { r.Compromised = true },
		"version":                   func(r *cofferv1.KeyRecord) { r.Version = 2 },
		"escrow_purge_unix_nano":    func(r *cofferv1.KeyRecord) { r.EscrowPurgeUnixNano = 7 },
		"version_created_unix_nano": func(r *cofferv1.KeyRecord) { r.VersionCreatedUnixNano = 1 },
		"versions": func(r *cofferv1.KeyRecord) {
			r.Versions = append(r.Versions, &cofferv1.KeyVersionRecord{Version: 1, WrappedMaterial: bytes.Clone(other.GetWrappedMaterial())})
		},
	}
	for _, fd := range fieldNames(rec) {
		if _, ok := changes[fd]; !ok && fd != "wrapped_material" {
			t.Errorf("no tamper case for KeyRecord.%s", fd)
		}
	}
	more := map[string]func(r *cofferv1.KeyRecord){
		"use_policy operations": func(r *cofferv1.KeyRecord) { r.UsePolicy.Operations = append(r.UsePolicy.Operations, "export") },
		"use_policy removed":    func(r *cofferv1.KeyRecord) { r.UsePolicy = nil },
		"cache_policy max_keys": func(r *cofferv1.KeyRecord) { r.CachePolicy.MaxKeys++ },
		"escrow removed":        func(r *cofferv1.KeyRecord) { r.Escrow = nil },
		"escrow key id":         func(r *cofferv1.KeyRecord) { r.Escrow[0].KeyId = "attacker" },
		"material bit flipped": func(r *cofferv1.KeyRecord) {
			r.WrappedMaterial[len(r.WrappedMaterial)/2] ^= 1
		},
		"material truncated":        func(r *cofferv1.KeyRecord) { r.WrappedMaterial = r.WrappedMaterial[:len(r.WrappedMaterial)-1] },
		"material removed":          func(r *cofferv1.KeyRecord) { r.WrappedMaterial = nil },
		"material from another key": func(r *cofferv1.KeyRecord) { r.WrappedMaterial = bytes.Clone(other.GetWrappedMaterial()) },
		"record moved to another gkid": func(r *cofferv1.KeyRecord) {
			r.Gkid = other.GetGkid()
		},
	}
	for k, v := range more {
		changes[k] = v
	}
	before := testutil.ToFloat64(metricIntegrityFailures)
	refused := 0
	for what, change := range changes {
		r := proto.CloneOf(rec)
		change(r)
		m, err := f.b.OpenKey(r)
		if what == "policy" {
			// A record naming a policy that does not exist.
			if !errors.Is(err, ErrIntegrity) || m != nil {
				t.Errorf("%s: open = %v, want ErrIntegrity", what, err)
			}
			continue
		}
		if !errors.Is(err, ErrIntegrity) || m != nil {
			t.Errorf("%s: open = %v, want ErrIntegrity and no material", what, err)
		}
		if err := f.b.VerifyKey(r); !errors.Is(err, ErrIntegrity) {
			t.Errorf("%s: verify = %v, want ErrIntegrity", what, err)
		}
		refused += 2
	}
	if got := testutil.ToFloat64(metricIntegrityFailures) - before; got < float64(refused) {
		t.Errorf("coffer_integrity_failures_total rose by %v, want at least %d", got, refused)
	}
	// The untouched record still opens.
	if _, err := f.b.OpenKey(rec); err != nil {
		t.Fatal(err)
	}
	// A record sealed with its life-cycle fields set cannot lose them.
	pol, err := f.b.VerifiedPolicy("default")
	if err != nil {
		t.Fatal(err)
	}
	life := proto.CloneOf(rec)
	life.State, life.Compromised, life.StateChangedUnixNano, life.Revision = cofferv1.KeyState_KEY_STATE_COMPROMISED, true, 7, 2
	if err := f.b.SealKey(pol, life, []byte("material-one-0123456789abcdef012")); err != nil {
		t.Fatal(err)
	}
	if err := f.b.VerifyKey(life); err != nil {
		t.Fatalf("record with life-cycle fields: %v", err)
	}
	for what, change := range map[string]func(r *cofferv1.KeyRecord){
		"compromise mark dropped": func(r *cofferv1.KeyRecord) { r.Compromised = false },
		"every life field zeroed": func(r *cofferv1.KeyRecord) { r.Compromised, r.StateChangedUnixNano = false, 0 },
		"back to active":          func(r *cofferv1.KeyRecord) { r.State = cofferv1.KeyState_KEY_STATE_ACTIVE },
	} {
		r := proto.CloneOf(life)
		change(r)
		if err := f.b.VerifyKey(r); !errors.Is(err, ErrIntegrity) {
			t.Errorf("%s: verify = %v, want ErrIntegrity", what, err)
		}
	}
}

func TestBarrier_OpenUnknownKEKVersion(t *testing.T) {
	f := newFixture(t)
	rec := f.mustKey("k1", []byte("material-0123456789abcdef0123456"))
	rec.KekVersion = 7
	if _, err := f.b.OpenKey(rec); !errors.Is(err, ErrNoKEK) {
		t.Fatalf("open = %v, want ErrNoKEK", err)
	}
}

func fieldNames(m proto.Message) []string {
	var out []string
	fds := m.ProtoReflect().Descriptor().Fields()
	for i := 0; i < fds.Len(); i++ {
		out = append(out, string(fds.Get(i).Name()))
	}
	return out
}

// taggedRecords is one record of every type that carries a tag, at its
// path.
func taggedRecords() map[string]proto.Message {
	return map[string]proto.Message{
		"p/pol": &cofferv1.PolicyRecord{Name: "pol", KekVersion: 1, Revision: 3},
		"c/bob": &cofferv1.ClientRecord{Name: "bob", Active: true, Groups: []string{"ops"}, Revision: 2},
		"a/r1":  &cofferv1.AclRule{Id: "r1", Subject: "client:bob", ResourcePattern: "bob/**", Operations: []string{"get"}},
		"n/n2":  &cofferv1.NodeRecord{Id: "n2", CertSha256: []byte("pin"), Site: "b"},
	}
}

func TestBarrier_TagVerifyRoundTrip(t *testing.T) {
	f := newFixture(t)
	cluster, _ := f.state.Cluster()
	for path, m := range taggedRecords() {
		if err := f.b.Tag(path, m, nil); err != nil {
			t.Fatalf("%s: tag: %v", path, err)
		}
		if len(*tagField(m)) == 0 {
			t.Fatalf("%s: no tag set", path)
		}
		// The stored copy (decoded from its encoding) verifies.
		b, _ := proto.Marshal(m)
		stored := m.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(b, stored); err != nil {
			t.Fatal(err)
		}
		if err := f.b.VerifyRecord([]byte(path), stored, cluster); err != nil {
			t.Fatalf("%s: verify: %v", path, err)
		}
		// Re-tagging a tagged record (an update) gives a tag that verifies.
		if err := f.b.Tag(path, stored, cluster); err != nil {
			t.Fatal(err)
		}
		if err := f.b.VerifyRecord([]byte(path), stored, cluster); err != nil {
			t.Fatalf("%s: verify after re-tag: %v", path, err)
		}
	}
}

func TestBarrier_TagTamperRefused(t *testing.T) {
	f := newFixture(t)
	cluster, _ := f.state.Cluster()
	recs := taggedRecords()
	for path, m := range recs {
		if err := f.b.Tag(path, m, nil); err != nil {
			t.Fatal(err)
		}
	}
	type tamper struct {
		path string
		edit func(m proto.Message) proto.Message
	}
	clone := func(path string) proto.Message { return proto.Clone(recs[path]) }
	cases := map[string]tamper{
		"client re-activated": {"c/bob", func(proto.Message) proto.Message {
			c := clone("c/bob").(*cofferv1.ClientRecord)
			c.Active, c.Groups = true, append(c.Groups, "admins")
			return c
		}},
		"rule widened": {"a/r1", func(proto.Message) proto.Message {
			r := clone("a/r1").(*cofferv1.AclRule)
			r.ResourcePattern = "**"
			return r
		}},
		"policy escrow key added": {"p/pol", func(proto.Message) proto.Message {
			p := clone("p/pol").(*cofferv1.PolicyRecord)
			p.EscrowKeys = append(p.EscrowKeys, &cofferv1.EscrowKey{Id: "attacker"})
			return p
		}},
		"pin replaced": {"n/n2", func(proto.Message) proto.Message {
			n := clone("n/n2").(*cofferv1.NodeRecord)
			n.CertSha256 = []byte("attacker")
			return n
		}},
		"record moved to another path": {"c/alice", func(proto.Message) proto.Message { return clone("c/bob") }},
		"tag removed": {"c/bob", func(proto.Message) proto.Message {
			c := clone("c/bob").(*cofferv1.ClientRecord)
			c.IntegrityTag = nil
			return c
		}},
		"tag flipped": {"a/r1", func(proto.Message) proto.Message {
			r := clone("a/r1").(*cofferv1.AclRule)
			r.IntegrityTag[3] ^= 1
			return r
		}},
		"tag from another record": {"p/pol", func(proto.Message) proto.Message {
			p := clone("p/pol").(*cofferv1.PolicyRecord)
			p.IntegrityTag = bytes.Clone(recs["c/bob"].(*cofferv1.ClientRecord).GetIntegrityTag())
			return p
		}},
	}
	for what, c := range cases {
		err := f.b.VerifyRecord([]byte(c.path), c.edit(nil), cluster)
		if !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), "integrity") {
			t.Errorf("%s: verify = %v, want ErrIntegrity", what, err)
		}
	}
	// A record that never had a tag.
	if err := f.b.VerifyRecord([]byte("c/eve"), &cofferv1.ClientRecord{Name: "eve", Active: true}, cluster); !errors.Is(err, ErrIntegrity) {
		t.Errorf("untagged record: %v, want ErrIntegrity", err)
	}
	// A tag made under another cluster's integrity key.
	g := newFixtureWith(t, f.master, mustSoftware(t, f.master))
	gc := &cofferv1.ClusterInfo{ClusterId: "zzzzzzzzzz"}
	if err := g.b.InitCluster(gc); err != nil {
		t.Fatal(err)
	}
	if err := f.b.VerifyRecord([]byte("c/bob"), recs["c/bob"], gc); !errors.Is(err, ErrIntegrity) {
		t.Errorf("tag checked under another cluster's key: %v, want ErrIntegrity", err)
	}
	// A cluster record without its integrity key.
	if err := f.b.VerifyRecord([]byte("c/bob"), recs["c/bob"], &cofferv1.ClusterInfo{ClusterId: cluster.GetClusterId()}); !errors.Is(err, ErrIntegrity) {
		t.Errorf("cluster without integrity key: %v, want ErrIntegrity", err)
	}
	// Types without a tag are refused outright.
	if err := f.b.Tag("k/x", &cofferv1.KeyRecord{Gkid: "x"}, nil); !errors.Is(err, ErrNotTagged) {
		t.Errorf("tag a key record: %v, want ErrNotTagged", err)
	}
	if err := f.b.VerifyRecord([]byte("k/x"), &cofferv1.KeyRecord{Gkid: "x"}, cluster); !errors.Is(err, ErrNotTagged) {
		t.Errorf("verify a key record: %v, want ErrNotTagged", err)
	}
}

func TestBarrier_VerifiedPolicyAndClient(t *testing.T) {
	f := newFixture(t)
	if _, err := f.b.VerifiedPolicy("default"); err != nil {
		t.Fatal(err)
	}
	// A new stored version whose tag does not match is refused, as is a key
	// record naming it.
	p, _ := f.state.Policy("default")
	rec := f.mustKey("k1", []byte("material-0123456789abcdef0123456"))
	p.Revision++
	p.IntegrityTag[0] ^= 1
	f.state.putPolicy(p)
	if _, err := f.b.VerifiedPolicy("default"); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("tampered policy: %v, want ErrIntegrity", err)
	}
	if _, err := f.b.OpenKey(rec); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("key under a tampered policy: %v, want ErrIntegrity", err)
	}
	// Re-tagged (a committed update), it verifies again.
	p.IntegrityTag = nil
	if err := f.b.Tag("p/default", p, nil); err != nil {
		t.Fatal(err)
	}
	f.state.putPolicy(p)
	if _, err := f.b.OpenKey(rec); err != nil {
		t.Fatal(err)
	}

	c := &cofferv1.ClientRecord{Name: "bob", Active: true, Revision: 1}
	if err := f.b.Tag("c/bob", c, nil); err != nil {
		t.Fatal(err)
	}
	f.state.putClient(c)
	if got, err := f.b.VerifiedClient("bob"); err != nil || !got.GetActive() {
		t.Fatalf("verified client: %v", err)
	}
	c.Groups = []string{"admins"}
	f.state.putClient(c)
	if _, err := f.b.VerifiedClient("bob"); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("tampered client: %v, want ErrIntegrity", err)
	}
}

func TestBarrier_NoState(t *testing.T) {
	b, err := New(mustSoftware(t, mustMasterKey(t)), DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.VerifiedPolicy("default"); !errors.Is(err, ErrNoState) {
		t.Fatalf("VerifiedPolicy without state: %v", err)
	}
	if err := b.Tag("c/x", &cofferv1.ClientRecord{Name: "x"}, nil); !errors.Is(err, ErrNoState) {
		t.Fatalf("Tag without state: %v", err)
	}
}

func TestBarrier_AuditHMACKey(t *testing.T) {
	f := newFixture(t)
	cluster, _ := f.state.Cluster()
	if len(cluster.GetIntegrityKek()) == 0 || len(cluster.GetAuditHmacKey()) == 0 {
		t.Fatal("InitCluster left a key out")
	}
	// The sealed key reopens, in another keystore with the same master key,
	// under the cluster's integrity key.
	ks := mustSoftware(t, f.master)
	defer ks.Close()
	if err := ks.LoadKEK(integrityKEK(cluster), cluster.GetIntegrityKek()); err != nil {
		t.Fatal(err)
	}
	k, err := ks.Open(integrityKEK(cluster), cluster.GetAuditHmacKey(), []byte(auditHMACAAD))
	if err != nil {
		t.Fatal(err)
	}
	if len(k) != 32 {
		t.Fatalf("audit hmac key of %d bytes", len(k))
	}
	material := []byte("material-0123456789abcdef0123456")
	got, err := f.b.MaterialDetail(material)
	if err != nil {
		t.Fatal(err)
	}
	if want := audit.DetailHMAC(k, "material", string(material)); !bytes.Equal(got, want) {
		t.Fatal("MaterialDetail differs from audit.DetailHMAC under the cluster's key")
	}
	if bytes.Contains(got, material) {
		t.Fatal("detail holds the material")
	}
	// A state restored from another cluster brings its own key, which
	// replaces the cached one.
	info := &cofferv1.ClusterInfo{ClusterId: "klmnopqrst"}
	if err := f.b.InitCluster(info); err != nil {
		t.Fatal(err)
	}
	f.state.putCluster(info)
	again, err := f.b.MaterialDetail(material)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(again, got) {
		t.Fatal("detail still made under the replaced key")
	}
	// A cluster without an audit key gives no detail.
	info.AuditHmacKey = nil
	f.state.putCluster(info)
	if d, err := f.b.MaterialDetail(material); err != nil || d != nil {
		t.Fatalf("no audit key: %x, %v", d, err)
	}
	if err := f.b.InitCluster(&cofferv1.ClusterInfo{}); err == nil {
		t.Fatal("InitCluster accepted a record without a cluster id")
	}
}

// TestBarrier_HealthFailsAndRecovers breaks the keystore under a running
// probe: a device error seen by an operation makes Ready fail without
// waiting for the next tick, key operations are refused with
// ErrUnavailable, and the barrier serves again once the keystore answers.
func TestBarrier_HealthFailsAndRecovers(t *testing.T) {
	master := mustMasterKey(t)
	broken := &atomic.Bool{}
	f := newFixtureWith(t, master, hsmtest.Failing{Keystore: mustSoftware(t, master), Broken: broken})
	rec := f.mustKey("k1", []byte("material-0123456789abcdef0123456"))
	if err := f.b.Probe(); err != nil {
		t.Fatal(err)
	}
	if err := f.b.Ready(); err != nil {
		t.Fatal(err)
	}
	if testutil.ToFloat64(metricKeystoreHealthy) != 1 {
		t.Fatal("coffer_keystore_healthy is not 1 after a passing probe")
	}
	// A probe interval far beyond the test: only the trigger can probe.
	f.b.cfg.ProbeInterval = time.Hour
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { defer close(done); f.b.Run(stop) }()
	defer func() { close(stop); <-done }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("first probe", func() bool { return testutil.ToFloat64(metricKeystoreHealthy) == 1 })

	broken.Store(true)
	if _, err := f.b.OpenKey(rec); !errors.Is(err, hsmwrap.ErrUnavailable) {
		t.Fatalf("open on a broken keystore: %v", err)
	}
	waitFor("Ready failing after a device error", func() bool { return f.b.Ready() != nil })
	if err := f.b.Ready(); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "keystore") || !strings.Contains(err.Error(), "n1") {
		t.Fatalf("Ready = %v", err)
	}
	if testutil.ToFloat64(metricKeystoreHealthy) != 0 {
		t.Fatal("coffer_keystore_healthy is not 0 while the self-test fails")
	}
	if _, err := f.b.OpenKey(rec); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("open while unhealthy: %v, want ErrUnavailable", err)
	}
	pol, _ := f.b.VerifiedPolicy("default")
	if err := f.b.SealKey(pol, &cofferv1.KeyRecord{Gkid: "k2", Policy: "default"}, []byte("m")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("seal while unhealthy: %v, want ErrUnavailable", err)
	}

	broken.Store(false)
	if err := f.b.Probe(); err != nil {
		t.Fatal(err)
	}
	if err := f.b.Ready(); err != nil {
		t.Fatalf("Ready after recovery: %v", err)
	}
	if got, err := f.b.OpenKey(rec); err != nil || len(got) == 0 {
		t.Fatalf("open after recovery: %v", err)
	}
}

// TestBarrier_RunRecoversByItself runs the probe on a short interval: a
// keystore that fails its self-test is seen as unhealthy, and as healthy
// again once it passes, without any operation.
func TestBarrier_RunRecoversByItself(t *testing.T) {
	master := mustMasterKey(t)
	broken := &atomic.Bool{}
	cfg := DefaultConfig()
	cfg.ProbeInterval = 10 * time.Millisecond
	b, err := New(hsmtest.Failing{Keystore: mustSoftware(t, master), Broken: broken}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { defer close(done); b.Run(stop) }()
	defer func() { close(stop); <-done }()
	for _, want := range []bool{false, true, false} {
		broken.Store(!want)
		deadline := time.Now().Add(5 * time.Second)
		for (b.Ready() == nil) != want {
			if time.Now().After(deadline) {
				t.Fatalf("Ready = %v, want healthy=%v", b.Ready(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

func TestBarrier_BackupSeal(t *testing.T) {
	f := newFixture(t)
	digest := bytes.Repeat([]byte{7}, 32)
	aad := []byte("header")
	wrapped, seal, err := f.b.SealBackup(digest, aad)
	if err != nil {
		t.Fatal(err)
	}
	// Any keystore with the same master key opens it.
	got, err := f.peer().OpenBackup(wrapped, seal, aad)
	if err != nil || !bytes.Equal(got, digest) {
		t.Fatalf("open: %v", err)
	}
	if _, err := f.peer().OpenBackup(wrapped, seal, []byte("changed header")); !errors.Is(err, ErrBadSeal) {
		t.Fatalf("changed header: %v, want ErrBadSeal", err)
	}
	foreign := newFixture(t)
	if _, err := foreign.b.OpenBackup(wrapped, seal, aad); !errors.Is(err, ErrBadSeal) {
		t.Fatalf("foreign master key: %v, want ErrBadSeal", err)
	}
}

// TestBarrier_EveryBackupOpens: a node seals backup after backup; each opens
// on a node that opened others before it, in any order, and again.
func TestBarrier_EveryBackupOpens(t *testing.T) {
	f := newFixture(t)
	type sealed struct{ digest, aad, wrapped, seal []byte }
	var backups []sealed
	for i := range 3 {
		digest := bytes.Repeat([]byte{byte(i + 1)}, 32)
		aad := []byte(fmt.Sprintf("header of backup %d", i))
		wrapped, seal, err := f.b.SealBackup(digest, aad)
		if err != nil {
			t.Fatal(err)
		}
		backups = append(backups, sealed{digest, aad, wrapped, seal})
	}
	for _, order := range [][]int{{0, 1, 2, 1}, {2, 0, 1, 2}} {
		p := f.peer()
		for _, i := range order {
			got, err := p.OpenBackup(backups[i].wrapped, backups[i].seal, backups[i].aad)
			if err != nil || !bytes.Equal(got, backups[i].digest) {
				t.Fatalf("order %v, backup %d: %v", order, i, err)
			}
		}
	}
	// And on the node that sealed them.
	for i, b := range backups {
		if got, err := f.b.OpenBackup(b.wrapped, b.seal, b.aad); err != nil || !bytes.Equal(got, b.digest) {
			t.Fatalf("backup %d on its own node: %v", i, err)
		}
	}
}

func TestBarrier_Signer(t *testing.T) {
	f := newFixture(t)
	if _, err := f.b.Signer("audit/n1"); err != nil {
		t.Fatalf("software keystore: %v", err)
	}
	master := mustMasterKey(t)
	g := newFixtureWith(t, master, hsmtest.Failing{Keystore: mustSoftware(t, master), Broken: &atomic.Bool{}})
	if _, err := g.b.Signer("audit/n1"); !errors.Is(err, ErrCannotSign) {
		t.Fatalf("keystore without signing keys: %v, want ErrCannotSign", err)
	}
}

func TestBarrier_Config(t *testing.T) {
	if _, err := New(nil, DefaultConfig()); !errors.Is(err, ErrConfig) {
		t.Fatalf("nil keystore: %v", err)
	}
	ks := mustSoftware(t, mustMasterKey(t))
	defer ks.Close()
	if _, err := New(ks, Config{}); !errors.Is(err, ErrConfig) {
		t.Fatalf("zero probe interval: %v", err)
	}
}

// rotated seals rec as version 2 of k1 with fresh material, keeping its
// version 1 as an older version, as a rotation does.
func (f *fixture) rotated(gkid string, v1, v2 []byte) *cofferv1.KeyRecord {
	f.t.Helper()
	rec := f.mustKey(gkid, v1)
	pol, err := f.b.VerifiedPolicy("default")
	if err != nil {
		f.t.Fatal(err)
	}
	old := &cofferv1.KeyVersionRecord{Version: 1, CreatedUnixNano: rec.GetCreatedUnixNano(), Escrow: rec.GetEscrow()}
	if err := f.b.SealVersion(pol, rec, old, v1); err != nil {
		f.t.Fatal(err)
	}
	rec.Versions = append(rec.Versions, old)
	rec.Version, rec.VersionCreatedUnixNano, rec.Revision = 2, 99, rec.GetRevision()+1
	if err := f.b.SealKey(pol, rec, v2); err != nil {
		f.t.Fatal(err)
	}
	return rec
}

// TestBarrier_KeyVersions opens each version of a rotated record, and
// refuses an older version that was changed, moved from another record or
// retired.
func TestBarrier_KeyVersions(t *testing.T) {
	f := newFixture(t)
	v1, v2 := []byte("version-one-0123456789abcdef0123"), []byte("version-two-0123456789abcdef0123")
	rec := f.rotated("k1", v1, v2)
	other := f.rotated("k2", []byte("other-one-0123456789abcdef012345"), []byte("other-two-0123456789abcdef012345"))
	for v, want := range map[uint32][]byte{0: v2, 2: v2, 1: v1} {
		got, err := f.b.OpenKeyVersion(proto.CloneOf(rec), v)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("version %d: %q, %v", v, got, err)
		}
	}
	if _, err := f.b.OpenKeyVersion(rec, 3); !errors.Is(err, ErrNoVersion) {
		t.Fatalf("version 3: %v, want ErrNoVersion", err)
	}
	for what, change := range map[string]func(r *cofferv1.KeyRecord){
		"older material from another key": func(r *cofferv1.KeyRecord) {
			r.Versions[0].WrappedMaterial = bytes.Clone(other.GetVersions()[0].GetWrappedMaterial())
		},
		"older version renumbered":     func(r *cofferv1.KeyRecord) { r.Versions[0].Version = 3 },
		"older version's kek":          func(r *cofferv1.KeyRecord) { r.Versions[0].KekVersion = 1 },
		"older version's time":         func(r *cofferv1.KeyRecord) { r.Versions[0].CreatedUnixNano++ },
		"older version marked retired": func(r *cofferv1.KeyRecord) { r.Versions[0].RetiredUnixNano = 5 },
		"older escrow purge time":      func(r *cofferv1.KeyRecord) { r.Versions[0].EscrowPurgeUnixNano = 5 },
		"older escrow copy dropped":    func(r *cofferv1.KeyRecord) { r.Versions[0].Escrow = nil },
		"older version dropped":        func(r *cofferv1.KeyRecord) { r.Versions = nil },
	} {
		r := proto.CloneOf(rec)
		change(r)
		if m, err := f.b.OpenKeyVersion(r, 1); !errors.Is(err, ErrIntegrity) && !errors.Is(err, ErrNoVersion) || m != nil {
			t.Errorf("%s: open version 1 = %v, want a refusal and no material", what, err)
		}
		if m, err := f.b.OpenKey(r); !errors.Is(err, ErrIntegrity) || m != nil {
			t.Errorf("%s: open newest = %v, want ErrIntegrity", what, err)
		}
	}
	retired := proto.CloneOf(rec)
	retired.Versions[0].WrappedMaterial = nil
	if _, err := f.b.OpenKeyVersion(retired, 1); !errors.Is(err, ErrNoVersion) {
		t.Fatalf("retired version: %v, want ErrNoVersion", err)
	}
}
