package chaos

import (
	"net"
	"testing"
	"time"
)

// TestLab checks the lab's network on real namespaces: a connection
// between sites takes the WAN delay each way and one within a site does
// not; a partition stops traffic between nodes but not from the root
// namespace (the clients); healing restores it.
func TestLab(t *testing.T) {
	if err := LabAvailable(); err != nil {
		t.Skip(err)
	}
	const delay = 20 * time.Millisecond
	lab, err := NewLab([]string{"a", "a", "b"}, delay)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	// A listener on every node that accepts and closes.
	var lns []net.Listener
	for i := range lab.Hosts() {
		var ln net.Listener
		if err := lab.InNetns(i, func() (err error) {
			ln, err = net.Listen("tcp", net.JoinHostPort(lab.Hosts()[i], "0"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_ = c.Close()
			}
		}()
		lns = append(lns, ln)
	}
	// connect returns how long a TCP handshake from node i to addr takes
	// (one round trip), the best of three.
	connect := func(i int, addr string) (time.Duration, error) {
		best := time.Hour
		for range 3 {
			var d time.Duration
			err := lab.InNetns(i, func() error {
				start := time.Now()
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err != nil {
					return err
				}
				d = time.Since(start)
				return c.Close()
			})
			if err != nil {
				return 0, err
			}
			best = min(best, d)
		}
		return best, nil
	}
	cross, err := connect(0, lns[2].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	local, err := connect(0, lns[1].Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("handshake across sites %v, within a site %v (delay %v each way)", cross, local, delay)
	if cross < 2*delay {
		t.Errorf("a handshake across sites took %v, less than the round trip of %v", cross, 2*delay)
	}
	if local >= delay {
		t.Errorf("a handshake within a site took %v: delayed like the WAN", local)
	}

	if err := lab.Partition([]int{0}, []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := connect(0, lns[2].Addr().String()); err == nil {
		t.Error("node 1 reached node 3 across a partition")
	}
	if _, err := connect(0, lns[1].Addr().String()); err == nil {
		t.Error("node 1 reached node 2 across a partition")
	}
	if c, err := net.DialTimeout("tcp", lns[0].Addr().String(), time.Second); err != nil {
		t.Errorf("a client in the root namespace cannot reach the cut-off node: %v", err)
	} else {
		_ = c.Close()
	}
	if err := lab.Heal(); err != nil {
		t.Fatal(err)
	}
	if _, err := connect(0, lns[2].Addr().String()); err != nil {
		t.Errorf("healed, node 1 still cannot reach node 3: %v", err)
	}
}
