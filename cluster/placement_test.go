package cluster

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"
)

func TestMaxVotersPerSite(t *testing.T) {
	for _, c := range []struct{ n, sites, want int }{{3, 3, 1}, {5, 3, 2}, {5, 4, 2}, {3, 2, 3}, {5, 1, 5}} {
		if got := MaxVotersPerSite(c.n, c.sites); got != c.want {
			t.Errorf("MaxVotersPerSite(%d, %d) = %d, want %d", c.n, c.sites, got, c.want)
		}
	}
}

func cands(spec ...string) []Candidate {
	// spec: "id:site:flags" with flags among v (voter), s (stable), d (down), l (leader)
	var out []Candidate
	for _, sp := range spec {
		var flags string
		parts := strings.Split(sp, ":")
		id, site := parts[0], parts[1]
		if len(parts) > 2 {
			flags = parts[2]
		}
		c := Candidate{ID: id, Site: site}
		for _, f := range flags {
			switch f {
			case 'v':
				c.Voter = true
			case 's':
				c.Stable = true
			case 'd':
				c.Down = true
			case 'l':
				c.Leader = true
			}
		}
		out = append(out, c)
	}
	return out
}

func TestDesiredVoters(t *testing.T) {
	for _, c := range []struct {
		name  string
		cands []Candidate
		n     int
		want  []string
	}{
		{"five over three sites: 2+2+1", cands("n1:a:vsl", "n2:a:vs", "n3:b:vs", "n4:b:s", "n5:c:s"), 5, []string{"n1", "n2", "n3", "n4", "n5"}},
		{"three of five over three sites: one each", cands("n1:a:vsl", "n2:a:s", "n3:b:s", "n4:b:s", "n5:c:s"), 3, []string{"n1", "n3", "n5"}},
		{"no site takes a majority: a's third stays out", cands("n1:a:vsl", "n2:a:vs", "n3:a:s", "n4:b:s", "n5:c:s", "n6:c:s"), 5, []string{"n1", "n2", "n4", "n5", "n6"}},
		{"a new node waits until stable", cands("n1:a:vsl", "n2:b:vs", "n3:c:vs", "n4:a:"), 5, []string{"n1", "n2", "n3"}},
		{"a voter down briefly keeps its vote", cands("n1:a:vsl", "n2:b:v", "n3:c:vs", "n4:b:s"), 3, []string{"n1", "n2", "n3"}},
		{"a voter down for long is replaced in its site", cands("n1:a:vsl", "n2:b:vd", "n3:c:vs", "n4:b:s"), 3, []string{"n1", "n3", "n4"}},
		{"a down voter keeps its vote with no one to replace it", cands("n1:a:vsl", "n2:b:vd", "n3:c:vs"), 3, []string{"n1", "n2", "n3"}},
		{"two sites: any spread", cands("n1:a:vsl", "n2:a:vs", "n3:b:vs"), 3, []string{"n1", "n2", "n3"}},
	} {
		if got := DesiredVoters(c.cands, c.n); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestSiteLoss(t *testing.T) {
	got := SiteLoss(map[string]int{"a": 2, "b": 2, "c": 1})
	if !reflect.DeepEqual(got, map[string]bool{"a": true, "b": true, "c": true}) {
		t.Errorf("2+2+1: %v", got)
	}
	got = SiteLoss(map[string]int{"a": 2, "b": 2})
	if !reflect.DeepEqual(got, map[string]bool{"a": false, "b": false}) {
		t.Errorf("2+2: %v", got)
	}
	got = SiteLoss(map[string]int{"a": 2, "b": 1})
	if !reflect.DeepEqual(got, map[string]bool{"a": false, "b": true}) {
		t.Errorf("2+1: %v", got)
	}
}

// The promoter turns the desired set into promotions and demotions, and
// never demotes below the minimum quorum.
func TestSitePromoter(t *testing.T) {
	now := time.Unix(1000, 0)
	p := &SitePromoter{Voters: 3, MinQuorum: 3, Now: func() time.Time { return now }}
	conf := &autopilot.Config{ServerStabilizationTime: 10 * time.Second}
	srv := func(id, site string, state autopilot.RaftState, healthy bool, since time.Duration) *autopilot.ServerState {
		return &autopilot.ServerState{Server: autopilot.Server{ID: raft.ServerID(id), Meta: map[string]string{"site": site}},
			State: state, Health: autopilot.ServerHealth{Healthy: healthy, StableSince: now.Add(-since)}}
	}
	st := &autopilot.State{Leader: "n1", Servers: map[raft.ServerID]*autopilot.ServerState{
		"n1": srv("n1", "a", autopilot.RaftLeader, true, time.Hour),
		"n2": srv("n2", "a", autopilot.RaftVoter, true, time.Hour),
		"n3": srv("n3", "b", autopilot.RaftNonVoter, true, time.Hour),
		"n4": srv("n4", "c", autopilot.RaftNonVoter, true, time.Second),
	}}
	// n2 cannot keep a second vote in site a among three sites; n4 is not
	// stable yet, so the desired set is short and nobody is demoted.
	ch := p.CalculatePromotionsAndDemotions(conf, st)
	if !reflect.DeepEqual(ch.Promotions, []raft.ServerID{"n3"}) || len(ch.Demotions) != 0 {
		t.Fatalf("short set: %+v", ch)
	}
	// Once n4 is stable: one voter per site, so n2 makes way.
	st.Servers["n4"] = srv("n4", "c", autopilot.RaftNonVoter, true, time.Minute)
	ch = p.CalculatePromotionsAndDemotions(conf, st)
	if !reflect.DeepEqual(ch.Promotions, []raft.ServerID{"n3", "n4"}) || !reflect.DeepEqual(ch.Demotions, []raft.ServerID{"n2"}) {
		t.Fatalf("full set: %+v", ch)
	}
}
