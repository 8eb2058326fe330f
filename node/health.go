package node

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/coffer-kms/coffer/hsmwrap"
)

// keystoreProbeInterval is how often the keystore's self-test runs.
const keystoreProbeInterval = 2 * time.Second

var metricKeystoreHealthy = prometheus.NewGauge(prometheus.GaugeOpts{
	Namespace: "coffer", Name: "keystore_healthy",
	Help: "1 while the keystore's known-answer self-test passes, 0 while it fails.",
})

// keystoreHealth runs the keystore's known-answer self-test periodically.
// While it fails the node refuses key operations with Unavailable (clients
// go to another node), reports the failure in cluster status and metrics,
// and recovers by itself once the keystore answers again.
func (n *Node) keystoreHealthLoop() {
	defer n.wg.Done()
	t := time.NewTicker(keystoreProbeInterval)
	defer t.Stop()
	for {
		n.probeKeystore()
		select {
		case <-n.stopCh:
			return
		case <-t.C:
		case <-n.ksProbe:
		}
	}
}

func (n *Node) probeKeystore() {
	err := n.ks.SelfTest()
	prev := n.ksErr.Load()
	if err == nil {
		n.ksErr.Store(nil)
		metricKeystoreHealthy.Set(1)
		if prev != nil {
			n.logger.Info("keystore recovered; serving key operations again")
		}
		return
	}
	n.ksErr.Store(&err)
	metricKeystoreHealthy.Set(0)
	if prev == nil {
		n.logger.Error("keystore self-test failing; refusing key operations until it recovers", "err", err)
	}
}

// keystoreFailed asks for a self-test now, after an operation failed with a
// device error.
func (n *Node) keystoreFailed(err error) {
	if errors.Is(err, hsmwrap.ErrUnavailable) {
		select {
		case n.ksProbe <- struct{}{}:
		default:
		}
	}
}

// keystoreReady reports the keystore's last known health.
func (n *Node) keystoreReady() error {
	if p := n.ksErr.Load(); p != nil {
		return fmt.Errorf("%w: keystore self-test failing on %s: %v", ErrKeystore, n.cfg.ID, *p)
	}
	return nil
}
