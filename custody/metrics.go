package custody

import "github.com/prometheus/client_golang/prometheus"

var (
	metricIntegrityFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "coffer", Name: "integrity_failures_total",
		Help: "Stored records refused because they failed an integrity check.",
	})
	metricKeystoreHealthy = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "coffer", Name: "keystore_healthy",
		Help: "1 while the keystore's known-answer self-test passes, 0 while it fails.",
	})
)

// Collectors returns the barrier's metrics (coffer_integrity_failures_total,
// coffer_keystore_healthy) for registration. They are process-wide, like
// the state machine's.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricIntegrityFailures, metricKeystoreHealthy}
}

// CountIntegrityFailure counts, in coffer_integrity_failures_total, a
// stored record refused by a check outside the barrier (a record that does
// not decode, or is stored under another record's name).
func CountIntegrityFailure() { metricIntegrityFailures.Inc() }
