package node

import (
	"context"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/coffer-kms/coffer/fsm"
)

var (
	metricIntegrityFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "coffer", Name: "integrity_failures_total",
		Help: "Stored records refused because they failed an integrity check.",
	})
	metricDenied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coffer", Name: "authz_denied_total",
		Help: "Requests refused by authorisation, by operation.",
	}, []string{"op"})
	metricAuditFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "coffer", Name: "audit_commit_failures_total",
		Help: "Requests whose audit entry could not be committed (their response was withheld).",
	})
	metricRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coffer", Name: "requests_total",
		Help: "gRPC requests served, by method and status code.",
	}, []string{"method", "code"})
	metricLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "coffer", Name: "request_seconds",
		Help:    "gRPC request latency by method.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	}, []string{"method"})
	metricStage = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "coffer", Name: "stage_seconds",
		Help:    "Time spent in the stages of a request that wait on the cluster: read_index (a linearizable read's leadership round), wait_applied (catching up to it), audit_commit (committing the request's audit entry), audit_decide (a decided read's entry, committed and decided in Apply), audit_round (one auditor round to the leader).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	}, []string{"stage"})
	metricRoundEntries = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "coffer", Subsystem: "audit", Name: "round_entries",
		Help:    "Audit entries per auditor round on this node; on the leader, followers' batches included. Larger rounds cost less per entry.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 12),
	})
)

func registerMetrics(reg *prometheus.Registry) {
	reg.MustRegister(metricRequests, metricLatency, metricStage, metricRoundEntries, metricIntegrityFailures, metricDenied, metricAuditFailures, metricKeystoreHealthy,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(fsm.Collectors()...)
}

func (n *Node) metricsInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	method := path.Base(info.FullMethod)
	metricLatency.WithLabelValues(method).Observe(time.Since(start).Seconds())
	metricRequests.WithLabelValues(method, status.Code(err).String()).Inc()
	return resp, err
}
