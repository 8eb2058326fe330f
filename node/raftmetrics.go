package node

import (
	"strconv"
	"sync"

	"github.com/hashicorp/go-metrics"
	metricsprom "github.com/hashicorp/go-metrics/prometheus"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// Raft's and membership's metrics, beside Coffer's own.
//
// hashicorp/raft reports through hashicorp/go-metrics (leader changes as
// coffer_raft_state_leader/candidate/follower, commit and FSM apply times,
// replication and heartbeat times per follower, last contact). That library
// reports to one process-wide sink: the first node of the process that
// serves metrics installs a Prometheus sink on its registry (in production a
// process is one node). The collector below adds, on every scrape, what an
// operator reads off a node whatever its role: its Raft role, term, leader,
// indexes and last contact, and, on the leader, each member's lag and last
// contact and the gossip members per site.

var raftSinkOnce sync.Once

// installRaftMetrics sends hashicorp/raft's metrics to reg.
func installRaftMetrics(reg prometheus.Registerer) error {
	var err error
	raftSinkOnce.Do(func() {
		var sink *metricsprom.PrometheusSink
		sink, err = metricsprom.NewPrometheusSinkFrom(metricsprom.PrometheusOpts{Registerer: reg, Name: "coffer_raft_sink"})
		if err != nil {
			return
		}
		cfg := metrics.DefaultConfig("coffer")
		cfg.EnableHostname, cfg.EnableRuntimeMetrics, cfg.EnableServiceLabel = false, false, false
		_, err = metrics.NewGlobal(cfg, sink)
	})
	return err
}

var (
	descRaftRole = prometheus.NewDesc("coffer_raft_role",
		"1 for this node's Raft role (leader, follower, candidate, shutdown).", []string{"role"}, nil)
	descRaftTerm = prometheus.NewDesc("coffer_raft_term",
		"This node's current Raft term.", nil, nil)
	descRaftLeader = prometheus.NewDesc("coffer_raft_leader",
		"1, labelled with the leader this node follows (empty when it knows none).", []string{"leader_id"}, nil)
	descRaftIndex = prometheus.NewDesc("coffer_raft_index",
		"This node's Raft indexes: last log, commit, FSM applied.", []string{"kind"}, nil)
	descRaftLastContact = prometheus.NewDesc("coffer_raft_last_contact_seconds",
		"Time since this node last heard from the leader (0 on the leader, -1: never).", nil, nil)
	descMemberLag = prometheus.NewDesc("coffer_member_lag_entries",
		"On the leader: how far each member's log is behind the leader's.", []string{"member", "site", "suffrage"}, nil)
	descMemberContact = prometheus.NewDesc("coffer_member_last_contact_seconds",
		"On the leader: time since each member last heard from the leader.", []string{"member", "site"}, nil)
	descGossipMembers = prometheus.NewDesc("coffer_gossip_members",
		"Gossip members this node sees, by site and state (alive, suspect, dead, left).", []string{"site", "state"}, nil)
)

// raftCollector reads the node's Raft and membership state once per scrape.
type raftCollector struct{ n *Node }

func (c raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftRole, descRaftTerm, descRaftLeader, descRaftIndex, descRaftLastContact,
		descMemberLag, descMemberContact, descGossipMembers} {
		ch <- d
	}
}

func (c raftCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	state := n.raft.State()
	for _, s := range []raft.RaftState{raft.Leader, raft.Follower, raft.Candidate, raft.Shutdown} {
		v := 0.0
		if s == state {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descRaftRole, prometheus.GaugeValue, v, stateName(s))
	}
	stats := n.raft.Stats()
	term, _ := strconv.ParseUint(stats["term"], 10, 64)
	ch <- prometheus.MustNewConstMetric(descRaftTerm, prometheus.GaugeValue, float64(term))
	_, leader := n.raft.LeaderWithID()
	ch <- prometheus.MustNewConstMetric(descRaftLeader, prometheus.GaugeValue, 1, string(leader))
	commit, _ := strconv.ParseUint(stats["commit_index"], 10, 64)
	ch <- prometheus.MustNewConstMetric(descRaftIndex, prometheus.GaugeValue, float64(n.raft.LastIndex()), "last_log")
	ch <- prometheus.MustNewConstMetric(descRaftIndex, prometheus.GaugeValue, float64(commit), "commit")
	ch <- prometheus.MustNewConstMetric(descRaftIndex, prometheus.GaugeValue, float64(n.fsm.AppliedIndex()), "applied")
	contact := float64(lastContactMs(stats["last_contact"], state == raft.Leader))
	if contact > 0 {
		contact /= 1000
	}
	ch <- prometheus.MustNewConstMetric(descRaftLastContact, prometheus.GaugeValue, contact)
	if n.membership != nil {
		if st := n.membership.State(); st != nil {
			sites := n.memberSites()
			last := n.raft.LastIndex()
			for id, srv := range st.Servers {
				lag := 0.0
				if srv.Stats.LastIndex < last {
					lag = float64(last - srv.Stats.LastIndex)
				}
				ch <- prometheus.MustNewConstMetric(descMemberLag, prometheus.GaugeValue, lag, string(id), sites[string(id)], string(srv.State))
				ch <- prometheus.MustNewConstMetric(descMemberContact, prometheus.GaugeValue, srv.Stats.LastContact.Seconds(), string(id), sites[string(id)])
			}
		}
	}
	if n.gossip != nil {
		counts := map[[2]string]int{}
		for _, m := range n.gossip.Members() {
			counts[[2]string{m.Site, m.State}]++
		}
		for k, v := range counts {
			ch <- prometheus.MustNewConstMetric(descGossipMembers, prometheus.GaugeValue, float64(v), k[0], k[1])
		}
	}
}

func stateName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	}
	return "shutdown"
}
