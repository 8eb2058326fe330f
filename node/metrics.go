package node

import (
	"context"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/coffer-kms/coffer/custody"
	"github.com/coffer-kms/coffer/fsm"
)

var (
	metricRequestSignatures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coffer", Name: "request_signatures_total",
		Help: "Checks of request signatures by the deciding node: verified, refused (bad signature), unsigned_refused, unsigned_allowed.",
	}, []string{"result"})
	metricDenied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coffer", Name: "authz_denied_total",
		Help: "Requests refused by authorisation, by operation.",
	}, []string{"op"})
	metricAuditFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "coffer", Name: "audit_commit_failures_total",
		Help: "Requests whose audit entry could not be committed (their response was withheld).",
	})
	metricFollowStreams = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "coffer", Name: "audit_follow_streams",
		Help: "AuditService.Follow streams open on this node (audit tail -f, SIEM feeds).",
	})
	metricFollowEntries = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "coffer", Name: "audit_follow_entries_total",
		Help: "Audit entries sent to Follow streams.",
	})
	metricCacheWatchStreams = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "coffer", Name: "cache_watch_streams",
		Help: "CacheService.Watch streams open on this node (client key cache invalidations).",
	})
	metricCacheEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coffer", Name: "cache_events_total",
		Help: "Cache events sent to Watch streams, by event (drop_key, drop_all, policy).",
	}, []string{"event"})
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
	metricCryptoBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coffer", Name: "crypto_plaintext_bytes_total",
		Help: "Plaintext bytes the data encryption service encrypted or decrypted for callers, by operation.",
	}, []string{"op"})
	metricDecryptFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "coffer", Name: "decrypt_failures_total",
		Help: "Decrypt requests granted whose ciphertext did not authenticate (altered, or another context).",
	})
	metricSealed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coffer", Name: "sealed_releases_total",
		Help: "Key material released sealed to the caller's HPKE key (get, datakey), by operation.",
	}, []string{"op"})
	metricShredPasses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "coffer", Name: "shred_passes_total",
		Help: "Shred passes after key material was removed (a destroy): Pebble compaction, a new snapshot, older snapshots removed; by outcome (ok, failed: retried, including passes put off while a read from before the removal is open).",
	}, []string{"outcome"})
	metricShredSeconds = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "coffer", Name: "shred_last_seconds",
		Help: "Duration of the last successful shred pass.",
	})
	metricRaftLogCompactSeconds = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "coffer", Name: "raft_log_compact_seconds",
		Help: "Duration of the copy of the Raft log into a fresh file when the node started.",
	})
	metricKeyRotations = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "coffer", Name: "key_rotations_total",
		Help: "Key rotations this node proposed as leader and saw committed, asked for or automatic.",
	})
	metricRoundEntries = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "coffer", Subsystem: "audit", Name: "round_entries",
		Help:    "Audit entries per auditor round on this node; on the leader, followers' batches included. Larger rounds cost less per entry.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 12),
	})
)

// auditCollectors exports this node's view of the audit log: whether its
// chain disagreed with a signed checkpoint (the alarm to page on), its head,
// and its newest checkpoint and how old that is (checkpoints stop when
// there is no leader).
func (n *Node) auditCollectors() []prometheus.Collector {
	return []prometheus.Collector{auditCollector{n: n}}
}

var (
	descAuditDiverged = prometheus.NewDesc("coffer_audit_diverged",
		"1 if this replica's audit chain disagreed with a signed checkpoint; it then stops serving.", nil, nil)
	descAuditHead = prometheus.NewDesc("coffer_audit_head_seq",
		"Sequence number of the newest audit entry this replica applied.", nil, nil)
	descAuditCheckpoint = prometheus.NewDesc("coffer_audit_checkpoint_seq",
		"Sequence number covered by the newest signed checkpoint (0: none yet).", nil, nil)
	descAuditCheckpointAge = prometheus.NewDesc("coffer_audit_checkpoint_age_seconds",
		"Age of the newest signed checkpoint by this node's clock (0: none yet).", nil, nil)
)

// auditCollector reads the node's audit state once per scrape.
type auditCollector struct{ n *Node }

func (c auditCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAuditDiverged, descAuditHead, descAuditCheckpoint, descAuditCheckpointAge} {
		ch <- d
	}
}

func (c auditCollector) Collect(ch chan<- prometheus.Metric) {
	diverged := 0.0
	if c.n.fsm.Diverged() {
		diverged = 1
	}
	ch <- prometheus.MustNewConstMetric(descAuditDiverged, prometheus.GaugeValue, diverged)
	ch <- prometheus.MustNewConstMetric(descAuditHead, prometheus.GaugeValue, float64(c.n.fsm.AuditHeadSeq()))
	cp, _ := c.n.fsm.AuditCheckpoint() // unreadable: reported as none
	age := 0.0
	if cp.GetTimeUnixNano() != 0 {
		age = time.Since(time.Unix(0, cp.GetTimeUnixNano())).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(descAuditCheckpoint, prometheus.GaugeValue, float64(cp.GetSeq()))
	ch <- prometheus.MustNewConstMetric(descAuditCheckpointAge, prometheus.GaugeValue, age)
}

func registerMetrics(reg *prometheus.Registry) {
	reg.MustRegister(metricRequests, metricLatency, metricStage, metricRoundEntries, metricDenied, metricAuditFailures,
		metricFollowStreams, metricFollowEntries, metricCacheWatchStreams, metricCacheEvents, metricMemberRefusals, metricRefusalsUnaudited, metricCryptoBytes, metricDecryptFailures, metricKeyRotations, metricSealed,
		metricShredPasses, metricShredSeconds, metricRaftLogCompactSeconds, metricRequestSignatures,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(fsm.Collectors()...)
	reg.MustRegister(custody.Collectors()...)
}

// streamMetricsInterceptor counts streaming RPCs (Export, Follow, Snapshot)
// in coffer_requests_total when they end. Their length is the caller's
// business (a Follow stream lasts as long as the tail), so it is not
// observed in coffer_request_seconds.
func streamMetricsInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := handler(srv, ss)
	metricRequests.WithLabelValues(path.Base(info.FullMethod), status.Code(err).String()).Inc()
	return err
}

func (n *Node) metricsInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	method := path.Base(info.FullMethod)
	metricLatency.WithLabelValues(method).Observe(time.Since(start).Seconds())
	metricRequests.WithLabelValues(method, status.Code(err).String()).Inc()
	return resp, err
}
