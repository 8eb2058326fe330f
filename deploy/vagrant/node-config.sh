#!/usr/bin/env bash
# Prints node ID's config: the sample deploy/cofferd.json (node n1) with this
# node's values. Only the hosts of the addresses change, and the sample's ports
# are kept. The TLS file names and the token label follow the node's id.
# Bootstrapping nodes keep the sample's bootstrap and get the bootstrap peers;
# the others get "bootstrap": false and no peers, and join over gossip.
# Every node's gossip.join lists the bootstrapping nodes. The keystore
# module is SoftHSM2's (or $COFFER_PKCS11_MODULE), which stands in for the HSM
# in the lab.
#
# Usage: node-config.sh ID BOOTSTRAP_IDS ID:SITE:CLUSTER_IP:MGMT_IP... > cofferd.json
#   BOOTSTRAP_IDS is comma-separated, e.g. n1,n3,n5.
# Needs jq. The sample is $COFFER_SAMPLE_CONFIG, by default the one beside this script.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sample=${COFFER_SAMPLE_CONFIG:-$here/../cofferd.json}
module=${COFFER_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}

die() {
	echo "node-config.sh: $*" >&2
	exit 1
}

[ $# -ge 3 ] || die "usage: node-config.sh ID BOOTSTRAP_IDS ID:SITE:CLUSTER_IP:MGMT_IP..."
command -v jq >/dev/null || die "jq is missing"
[ -f "$sample" ] || die "no sample config at $sample"
self=$1 boot=$2
shift 2

# The node list as JSON: [{id, site, ip, mgmt, bootstrap}].
nodes=$(for spec in "$@"; do
	IFS=: read -r id site ip mgmt <<<"$spec"
	if [ -z "$id" ] || [ -z "$site" ] || [ -z "$ip" ] || [ -z "$mgmt" ]; then
		die "bad node spec $spec"
	fi
	b=false
	[[ ",$boot," == *",$id,"* ]] && b=true
	jq -n --arg id "$id" --arg site "$site" --arg ip "$ip" --arg mgmt "$mgmt" --argjson b "$b" \
		'{id: $id, site: $site, ip: $ip, mgmt: $mgmt, bootstrap: $b}'
done | jq -s .)

jq -e --arg self "$self" 'any(.[]; .id == $self)' <<<"$nodes" >/dev/null || die "$self is not in the node list"
jq -e 'any(.[]; .bootstrap)' <<<"$nodes" >/dev/null || die "no bootstrapping node among $boot"

jq --arg self "$self" --arg pkcs11 "$module" --argjson nodes "$nodes" '
	def port($addr): $addr | split(":") | last;
	def at($host; $addr): $host + ":" + port($addr);
	. as $s
	| ($nodes[] | select(.id == $self)) as $me
	| [$nodes[] | select(.bootstrap)] as $boot
	| .id = $me.id
	| .site = $me.site
	| .api_addr = at($me.ip; $s.api_addr)
	| .raft_addr = at($me.ip; $s.raft_addr)
	| .api_advertise_addr = at($me.ip; $s.api_advertise_addr)
	| .raft_advertise_addr = at($me.ip; $s.raft_advertise_addr)
	| .metrics_addr = at($me.mgmt; $s.metrics_addr)
	| .bootstrap = $me.bootstrap
	| .peers = (if $me.bootstrap then
		[$boot[] | {id, site, api_addr: at(.ip; $s.api_addr), raft_addr: at(.ip; $s.raft_addr)}]
	  else [] end)
	| .tls.cert_file = ($s.tls.cert_file | sub("/[^/]*$"; "/\($me.id).pem"))
	| .tls.key_file = ($s.tls.key_file | sub("/[^/]*$"; "/\($me.id)-key.pem"))
	| .gossip.bind_addr = at($me.ip; $s.gossip.bind_addr)
	| .gossip.advertise_addr = at($me.ip; $s.gossip.advertise_addr)
	| .gossip.join = [$boot[] | at(.ip; $s.gossip.bind_addr)]
	| .keystore["module"] = $pkcs11
	| .keystore.token_label = "coffer-\($me.id)"
' "$sample"
