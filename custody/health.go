package custody

import (
	"errors"
	"fmt"
	"time"

	"github.com/coffer-kms/coffer/hsmwrap"
)

// Run runs the keystore's known-answer self-test every ProbeInterval, and at
// once after an operation failed with a device error, until stop is closed.
// While it fails, Ready fails and every key operation is refused with
// ErrUnavailable (clients go to another node); coffer_keystore_healthy is 0
// and the change is logged. The barrier recovers by itself once the
// keystore answers again.
func (b *Barrier) Run(stop <-chan struct{}) {
	t := time.NewTicker(b.cfg.ProbeInterval)
	defer t.Stop()
	for {
		_ = b.Probe()
		select {
		case <-stop:
			return
		case <-t.C:
		case <-b.probe:
		}
	}
}

// Probe runs the keystore's self-test now, records the result (Ready, the
// gauge, a log line when health changes) and returns the test's error.
func (b *Barrier) Probe() error {
	err := b.ks.SelfTest()
	prev := b.ksErr.Load()
	if err == nil {
		b.ksErr.Store(nil)
		metricKeystoreHealthy.Set(1)
		if prev != nil {
			b.logger.Info("keystore recovered; serving key operations again")
		}
		return nil
	}
	b.ksErr.Store(&err)
	metricKeystoreHealthy.Set(0)
	if prev == nil {
		b.logger.Error("keystore self-test failing; refusing key operations until it recovers", "err", err)
	}
	return err
}

// keystoreFailed asks Run for a self-test now, after an operation failed
// with a device error.
func (b *Barrier) keystoreFailed(err error) {
	if errors.Is(err, hsmwrap.ErrUnavailable) {
		select {
		case b.probe <- struct{}{}:
		default:
		}
	}
}

// Ready reports the keystore's last known health: nil, or ErrUnavailable
// while its self-test fails.
func (b *Barrier) Ready() error {
	if p := b.ksErr.Load(); p != nil {
		return fmt.Errorf("%w: keystore self-test failing on %s: %v", ErrUnavailable, b.cfg.NodeID, *p)
	}
	return nil
}
