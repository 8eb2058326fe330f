package fsm

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	cofferv1 "github.com/coffer-kms/coffer/api/coffer/v1"
)

var (
	metricCommands = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coffer", Subsystem: "fsm", Name: "commands_total",
		Help: "Commands applied, by type and outcome (ok or the business error).",
	}, []string{"type", "outcome"})
	metricBatchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "coffer", Subsystem: "fsm", Name: "apply_batch_entries",
		Help:    "Log entries per applied batch.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 11),
	})
	metricBatchSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "coffer", Subsystem: "fsm", Name: "apply_batch_seconds",
		Help:    "Time to apply and commit one batch.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14),
	})
)

// Collectors returns the state machine's metrics for registration.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{metricCommands, metricBatchSize, metricBatchSeconds}
}

func observeCommand(t cofferv1.CommandType, err error) {
	outcome := "ok"
	if err != nil {
		outcome = errorLabel(err)
	}
	metricCommands.WithLabelValues(t.String(), outcome).Inc()
}

func observeBatch(n int, d time.Duration) {
	metricBatchSize.Observe(float64(n))
	metricBatchSeconds.Observe(d.Seconds())
}

func errorLabel(err error) string {
	for _, e := range []error{ErrPolicyNotFound, ErrPolicyExists, ErrKeyExists, ErrKEKVersionUnknown,
		ErrAlreadyInitialized, ErrInvalidCommand, ErrStaleIndex, ErrConflict, ErrAbandoned, ErrClientExists,
		ErrClientNotFound, ErrRuleExists, ErrRuleNotFound, ErrNoCheckpoint} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return "error"
}
