package custody

import (
	"crypto/rand"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
	"github.com/coffer-kms/coffer/hsmwrap"
)

// memState is committed state in memory: what the state machine would
// return, records as stored (clones, so a test edits them only through put).
type memState struct {
	mu       sync.Mutex
	cluster  *cofferv1.ClusterInfo
	policies map[string]*cofferv1.PolicyRecord
	clients  map[string]*cofferv1.ClientRecord
}

var errNotFound = fmt.Errorf("not found")

func (s *memState) Cluster() (*cofferv1.ClusterInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cluster == nil {
		return nil, errNotFound
	}
	return proto.CloneOf(s.cluster), nil
}

func (s *memState) Policy(name string) (*cofferv1.PolicyRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.policies[name]
	if !ok {
		return nil, fmt.Errorf("policy %q: %w", name, errNotFound)
	}
	return proto.CloneOf(p), nil
}

func (s *memState) Client(name string) (*cofferv1.ClientRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[name]
	if !ok {
		return nil, fmt.Errorf("client %q: %w", name, errNotFound)
	}
	return proto.CloneOf(c), nil
}

func (s *memState) putPolicy(p *cofferv1.PolicyRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.policies[p.GetName()] = proto.CloneOf(p)
}

func (s *memState) putClient(c *cofferv1.ClientRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[c.GetName()] = proto.CloneOf(c)
}

func (s *memState) putCluster(c *cofferv1.ClusterInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cluster = proto.CloneOf(c)
}

func mustMasterKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func mustSoftware(t *testing.T, master []byte) *hsmwrap.Software {
	t.Helper()
	ks, err := hsmwrap.NewSoftwareFromKey(master)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// fixture is a barrier over a software keystore, with an initialised
// cluster and one policy ("default", KEK versions 1 and 2, 2 current) in its
// state, as a leader would have committed them.
type fixture struct {
	t      *testing.T
	master []byte
	ks     hsmwrap.Keystore
	b      *Barrier
	state  *memState
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	master := mustMasterKey(t)
	return newFixtureWith(t, master, mustSoftware(t, master))
}

func newFixtureWith(t *testing.T, master []byte, ks hsmwrap.Keystore) *fixture {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NodeID = "n1"
	b, err := New(ks, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	f := &fixture{t: t, master: master, ks: ks, b: b,
		state: &memState{policies: map[string]*cofferv1.PolicyRecord{}, clients: map[string]*cofferv1.ClientRecord{}}}
	b.UseState(f.state)
	info := &cofferv1.ClusterInfo{ClusterId: "abcdefghij", CreatedUnixNano: 1}
	if err := b.InitCluster(info); err != nil {
		t.Fatal(err)
	}
	f.state.putCluster(info)
	f.state.putPolicy(f.mustPolicy("default"))
	return f
}

// peer is another node's barrier over the same committed state, with a
// keystore holding the same master key.
func (f *fixture) peer() *Barrier {
	f.t.Helper()
	b, err := New(mustSoftware(f.t, f.master), DefaultConfig())
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = b.Close() })
	b.UseState(f.state)
	return b
}

// mustPolicy builds a tagged policy with KEK versions 1 and 2 (2 current).
func (f *fixture) mustPolicy(name string) *cofferv1.PolicyRecord {
	f.t.Helper()
	p := &cofferv1.PolicyRecord{Name: name, KekVersion: 2, Revision: 1, CreatedUnixNano: 1}
	for v := uint32(1); v <= 2; v++ {
		w, err := f.b.NewPolicyKEK(name, v)
		if err != nil {
			f.t.Fatal(err)
		}
		p.Keks = append(p.Keks, &cofferv1.WrappedKEK{Version: v, Wrapped: w})
	}
	if err := f.b.Tag("p/"+name, p, nil); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// mustKey seals material into a new key record of policy "default".
func (f *fixture) mustKey(gkid string, material []byte) *cofferv1.KeyRecord {
	f.t.Helper()
	pol, err := f.b.VerifiedPolicy("default")
	if err != nil {
		f.t.Fatal(err)
	}
	rec := &cofferv1.KeyRecord{Gkid: gkid, Policy: "default", Resource: "app/db", Owner: "client:app",
		Algorithm: cofferv1.Algorithm_ALGORITHM_AES_256, State: cofferv1.KeyState_KEY_STATE_ACTIVE,
		CreatedUnixNano: 42, Revision: 1,
		UsePolicy:   &cofferv1.KeyUsePolicy{Operations: []string{"get"}},
		CachePolicy: &cofferv1.KeyCachePolicy{Cacheable: true, MaxKeys: 3},
		Escrow:      []*cofferv1.EscrowCopy{{KeyId: "officer", Scheme: "rsa-oaep-sha256", Ciphertext: []byte("escrowed")}},
	}
	if err := f.b.SealKey(pol, rec, material); err != nil {
		f.t.Fatal(err)
	}
	return rec
}
