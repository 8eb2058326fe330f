package chaos

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// wanDelay is the WAN between sites. tc netem is not available on every
// kernel, so the lab delays inter-site packets in user space: policy
// routing in the root namespace sends every packet from a node of one site
// to a node of another into a TUN device; wanDelay reads each packet and
// writes it back into the same device after a fixed delay, and the kernel
// routes it on by the main table (a rule matches packets that come in from
// the device). Each direction is delayed, so a round trip between sites
// takes twice the delay.
type wanDelay struct {
	name  string
	delay time.Duration
	f     *os.File
	queue chan delayed
	done  chan struct{}
	wg    sync.WaitGroup

	packets, dropped atomic.Uint64
}

type delayed struct {
	due time.Time
	pkt []byte
}

// queueDepth bounds the packets in flight; beyond it packets are dropped,
// as a congested link would.
const queueDepth = 1 << 16

// startWANDelay creates the TUN device name in the calling process's
// network namespace and starts delaying what is routed into it.
func startWANDelay(name string, delay time.Duration) (*wanDelay, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("chaos: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("chaos: tun %s: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("chaos: create tun %s: %w", name, err)
	}
	// Non-blocking, so that the runtime poller serves reads and Close
	// interrupts a pending one.
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("chaos: tun %s: %w", name, err)
	}
	w := &wanDelay{name: name, delay: delay, f: os.NewFile(uintptr(fd), name),
		queue: make(chan delayed, queueDepth), done: make(chan struct{})}
	w.wg.Add(2)
	go w.read()
	go w.write()
	return w, nil
}

func (w *wanDelay) read() {
	defer w.wg.Done()
	defer close(w.queue)
	buf := make([]byte, 1<<16)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		p := delayed{due: time.Now().Add(w.delay), pkt: append([]byte(nil), buf[:n]...)}
		select {
		case w.queue <- p:
			w.packets.Add(1)
		default:
			w.dropped.Add(1)
		}
	}
}

// write sends packets back in arrival order: the delay is the same for
// all, so the queue is ordered by due time.
func (w *wanDelay) write() {
	defer w.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for p := range w.queue {
		if d := time.Until(p.due); d > 0 {
			t.Reset(d)
			select {
			case <-t.C:
			case <-w.done:
				return
			}
		}
		if _, err := w.f.Write(p.pkt); err != nil && errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

// Close removes the device and stops the goroutines.
func (w *wanDelay) Close() error {
	close(w.done)
	err := w.f.Close()
	w.wg.Wait()
	return err
}
