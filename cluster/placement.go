package cluster

import (
	"slices"
	"sort"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"
)

// Candidate is a server that may hold a vote.
type Candidate struct {
	ID   string
	Site string
	// Voter: it votes now. Stable: healthy for at least the stabilisation
	// time. Down: unhealthy for at least the stabilisation time.
	Voter, Stable, Down bool
	Leader              bool
}

// MaxVotersPerSite is the most voters one site may hold among n voters
// spread over sites sites: fewer than a majority whenever three or more
// sites exist (so the loss of any one site leaves a quorum); with one or two
// sites no spread survives the loss of the larger, and any count is
// allowed.
func MaxVotersPerSite(n, sites int) int {
	if sites >= 3 {
		return (n - 1) / 2
	}
	return n
}

// DesiredVoters chooses which candidates should vote, n at most: the
// leader, then the current voters that are not down (so that votes move only
// when they must, and a voter that failed only briefly keeps its vote), then
// other stable candidates, each time from the site with the fewest chosen
// voters, and never more than MaxVotersPerSite in one site. A voter that is
// down keeps its vote while no stable candidate can take its place. The
// result is sorted by id.
func DesiredVoters(cands []Candidate, n int) []string {
	sites := map[string]bool{}
	for _, c := range cands {
		sites[c.Site] = true
	}
	perSite := MaxVotersPerSite(n, len(sites))
	chosen := map[string]bool{}
	count := map[string]int{}
	take := func(c Candidate) bool {
		if chosen[c.ID] || len(chosen) >= n || count[c.Site] >= perSite {
			return false
		}
		chosen[c.ID] = true
		count[c.Site]++
		return true
	}
	sorted := slices.Clone(cands)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })
	for _, c := range sorted {
		if c.Leader {
			take(c)
		}
	}
	for _, c := range sorted {
		if c.Voter && !c.Down {
			take(c)
		}
	}
	// Fill from the least-represented site first.
	for {
		best := -1
		for i, c := range sorted {
			if chosen[c.ID] || !c.Stable || count[c.Site] >= perSite {
				continue
			}
			if best < 0 || count[c.Site] < count[sorted[best].Site] {
				best = i
			}
		}
		if best < 0 || !take(sorted[best]) {
			break
		}
	}
	// Voters that are down keep their vote while the set is short.
	for _, c := range sorted {
		if c.Voter && c.Down {
			take(c)
		}
	}
	out := make([]string, 0, len(chosen))
	for id := range chosen {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// SiteLoss reports, for each site holding voters, whether the voters of the
// other sites still form a quorum if that site is lost.
func SiteLoss(votersBySite map[string]int) map[string]bool {
	total := 0
	for _, n := range votersBySite {
		total += n
	}
	quorum := total/2 + 1
	out := map[string]bool{}
	for site, n := range votersBySite {
		out[site] = total-n >= quorum
	}
	return out
}

// SitePromoter is the autopilot promoter that places voters across sites
// (DesiredVoters): every stable server is a potential voter; promotions and
// demotions move the voter set toward the desired one. It reads a server's
// site from its Meta["site"].
type SitePromoter struct {
	// Voters is the voter count to aim for (3 or 5).
	Voters int
	// MinQuorum: no voter is demoted while the desired set is smaller.
	MinQuorum int
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

var _ autopilot.Promoter = (*SitePromoter)(nil)

func (p *SitePromoter) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// GetServerExt keeps no extended server state.
func (p *SitePromoter) GetServerExt(*autopilot.Config, *autopilot.ServerState) interface{} {
	return nil
}

// GetStateExt keeps no extended state.
func (p *SitePromoter) GetStateExt(*autopilot.Config, *autopilot.State) interface{} { return nil }

// GetNodeTypes makes every server a potential voter.
func (p *SitePromoter) GetNodeTypes(_ *autopilot.Config, s *autopilot.State) map[raft.ServerID]autopilot.NodeType {
	types := make(map[raft.ServerID]autopilot.NodeType, len(s.Servers))
	for id := range s.Servers {
		types[id] = autopilot.NodeVoter
	}
	return types
}

// IsPotentialVoter: every server is.
func (p *SitePromoter) IsPotentialVoter(t autopilot.NodeType) bool { return t == autopilot.NodeVoter }

// FilterFailedServerRemovals lets autopilot remove what it found failed;
// autopilot itself keeps the configured minimum quorum.
func (p *SitePromoter) FilterFailedServerRemovals(_ *autopilot.Config, _ *autopilot.State, f *autopilot.FailedServers) *autopilot.FailedServers {
	return f
}

// CalculatePromotionsAndDemotions moves the voter set toward DesiredVoters.
func (p *SitePromoter) CalculatePromotionsAndDemotions(c *autopilot.Config, s *autopilot.State) autopilot.RaftChanges {
	now := p.now()
	minStable := s.ServerStabilizationTime(c)
	var cands []Candidate
	for id, srv := range s.Servers {
		down := !srv.Health.Healthy && now.Sub(srv.Health.StableSince) >= minStable
		cands = append(cands, Candidate{ID: string(id), Site: srv.Server.Meta["site"], Voter: srv.HasVotingRights(),
			Stable: srv.Health.IsStable(now, minStable), Down: down, Leader: id == s.Leader})
	}
	desired := DesiredVoters(cands, p.Voters)
	want := map[string]bool{}
	for _, id := range desired {
		want[id] = true
	}
	demote := len(desired) >= p.MinQuorum
	var ch autopilot.RaftChanges
	for _, c := range cands {
		switch {
		case want[c.ID] && !c.Voter:
			ch.Promotions = append(ch.Promotions, raft.ServerID(c.ID))
		case !want[c.ID] && c.Voter && !c.Leader && demote:
			ch.Demotions = append(ch.Demotions, raft.ServerID(c.ID))
		}
	}
	slices.Sort(ch.Promotions)
	slices.Sort(ch.Demotions)
	return ch
}
