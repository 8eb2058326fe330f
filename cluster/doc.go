// Package cluster owns membership: gossip (hashicorp/memberlist, always
// encrypted with the cluster's gossip key), the placement of voters across
// sites, and the leader's membership manager, which admits nodes that join
// over gossip and runs hashicorp/raft-autopilot to promote, demote and
// remove servers.
//
// Contracts:
//
//   - Gossip is advisory. Nothing a node gossips (its id, site, addresses,
//     role, build) changes the Raft configuration by itself: the manager
//     passes every unknown gossip member to Deps.Admit, which the node
//     implements (mTLS proof of a node certificate for the id, pinning,
//     audit), and only an admitted member is added, as a non-voter.
//   - Only the Raft leader changes the Raft configuration. The manager runs
//     autopilot while its node leads and stops it when it does not.
//   - Placement (DesiredVoters): at most Settings.Voters voters; with three
//     or more sites, no site ever holds a majority of them
//     (MaxVotersPerSite); a server gets a vote only once it has been
//     healthy for the stabilisation time, and a voter loses it only once it
//     has been unhealthy that long and a stable server can take its place;
//     no voter is demoted while the desired set is smaller than
//     Settings.MinQuorum.
//   - SiteLoss tells, for a voter layout, which sites the cluster survives
//     losing.
//
// DESIGN.md explains the choices.
package cluster
