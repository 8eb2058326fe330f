#!/usr/bin/env bash
# Host side of the Vagrant lab (the repository's Vagrantfile runs it before
# `vagrant up`, `vagrant provision` and `vagrant reload`). It makes the lab's
# credentials with the project's own commands, in .vagrant/coffer/ (or
# $COFFER_LAB_DIR):
#
#   pki/             the two CAs (coffer ca init); their keys never leave the host
#   gossip.key       the cluster's gossip key
#   officer/         the officer's client certificate (coffer client issue --no-register),
#                    the bootstrap admin that deploy/cofferd.json names
#   nodes/ID/        what node ID receives, and nothing else: the CA certificates, its
#                    certificate and key (coffer ca issue-node), the gossip key, the
#                    officer's certificate, and its SoftHSM2 token holding the master
#                    key, with the token's user PIN (hsm-pin)
#   so-pins/ID       each token's security officer PIN, which only the ceremony uses
#
# The master key is created in the first node's token and given to every other
# token by the key ceremony (cofferd keystore transport-key, export-master,
# import-master), then every token's KCV is compared. Whatever already exists is
# kept, so running it again changes nothing.
#
# Usage: prepare.sh ID:SITE:CLUSTER_IP:MGMT_IP...   (the first node is the ceremony's source)
# Needs bin/cofferd and bin/coffer (make build) and SoftHSM2 (make softhsm).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
lab=${COFFER_LAB_DIR:-$root/.vagrant/coffer}
module=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
coffer=$root/bin/coffer
cofferd=$root/bin/cofferd

die() {
	echo "prepare.sh: $*" >&2
	exit 1
}

[ $# -gt 0 ] || die "usage: prepare.sh ID:SITE:CLUSTER_IP:MGMT_IP..."
for b in "$coffer" "$cofferd"; do
	[ -x "$b" ] || die "$b is missing: run make build first"
done
command -v softhsm2-util >/dev/null || die "softhsm2-util is missing: run make softhsm"
[ -f "$module" ] || die "SoftHSM2's module $module is missing: run make softhsm, or set SOFTHSM2_MODULE"

umask 077
mkdir -p "$lab"
# Vagrant's state directory holds the lab's secrets: keep it out of git.
if [ "$lab" = "$root/.vagrant/coffer" ] && [ ! -e "$root/.vagrant/.gitignore" ]; then
	echo '*' >"$root/.vagrant/.gitignore"
fi

pki=$lab/pki
if [ ! -f "$pki/node-ca.pem" ]; then
	"$coffer" ca init --out "$pki" --name "Coffer lab CA"
fi
if [ ! -f "$lab/gossip.key" ]; then
	head -c 32 /dev/urandom | base64 >"$lab/gossip.key"
fi
if [ ! -f "$lab/officer/officer.pem" ]; then
	"$coffer" client issue officer --out "$lab/officer" --no-register \
		--ca-cert "$pki/client-ca.pem" --ca-key "$pki/client-ca-key.pem" >/dev/null
fi

# hsm NODE_DIR ID SUBCOMMAND [ARGS...]: cofferd keystore against node ID's token.
hsm() {
	local nd=$1 id=$2
	shift 2
	SOFTHSM2_CONF=$nd/hsm/softhsm2.conf "$cofferd" keystore "$@" \
		--module "$module" --token "coffer-$id" --pin-file "$nd/hsm-pin"
}

ids=()
for spec in "$@"; do
	IFS=: read -r id site ip mgmt <<<"$spec"
	if [ -z "$id" ] || [ -z "$site" ] || [ -z "$ip" ] || [ -z "$mgmt" ]; then
		die "bad node spec $spec: want ID:SITE:CLUSTER_IP:MGMT_IP"
	fi
	ids+=("$id")
	nd=$lab/nodes/$id
	mkdir -p "$nd/officer" "$nd/hsm/tokens" "$lab/so-pins"
	if [ ! -f "$nd/$id.pem" ]; then
		"$coffer" ca issue-node "$id" --out "$nd" --ip "$ip" \
			--ca-cert "$pki/node-ca.pem" --ca-key "$pki/node-ca-key.pem" >/dev/null
	fi
	cp "$pki/node-ca.pem" "$pki/client-ca.pem" "$lab/gossip.key" "$nd/"
	cp "$lab/officer/officer.pem" "$lab/officer/officer-key.pem" "$nd/officer/"
	# The token directory as the host sees it; provision.sh writes the
	# node's own softhsm2.conf in the VM.
	printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
		"$nd/hsm/tokens" >"$nd/hsm/softhsm2.conf"
	if ! SOFTHSM2_CONF=$nd/hsm/softhsm2.conf softhsm2-util --show-slots | grep -q "Label: *coffer-$id *$"; then
		head -c 12 /dev/urandom | base64 | tr -d '+/=' >"$nd/hsm-pin"
		head -c 12 /dev/urandom | base64 | tr -d '+/=' >"$lab/so-pins/$id"
		SOFTHSM2_CONF=$nd/hsm/softhsm2.conf softhsm2-util --init-token --free --label "coffer-$id" \
			--pin "$(cat "$nd/hsm-pin")" --so-pin "$(cat "$lab/so-pins/$id")" >/dev/null
	fi
done

# The key ceremony: the first node's token creates the master key, every
# other token receives it wrapped under its own transport key.
src=${ids[0]}
srcdir=$lab/nodes/$src
if ! hsm "$srcdir" "$src" kcv >/dev/null 2>&1; then
	hsm "$srcdir" "$src" init-master
fi
want=$(hsm "$srcdir" "$src" kcv)
cer=$lab/ceremony
mkdir -p "$cer"
for id in "${ids[@]:1}"; do
	nd=$lab/nodes/$id
	if hsm "$nd" "$id" kcv >/dev/null 2>&1; then
		continue
	fi
	rm -f "$cer/$id.transport.pem" "$cer/$id.export.json"
	hsm "$nd" "$id" transport-key --out "$cer/$id.transport.pem"
	hsm "$srcdir" "$src" export-master --transport-pub "$cer/$id.transport.pem" \
		--out "$cer/$id.export.json" --so-pin-file "$lab/so-pins/$src"
	hsm "$nd" "$id" import-master --in "$cer/$id.export.json"
	rm -f "$cer/$id.transport.pem" "$cer/$id.export.json"
done
for id in "${ids[@]}"; do
	got=$(hsm "$lab/nodes/$id" "$id" kcv)
	[ "$got" = "$want" ] || die "token coffer-$id: $got, but the first token has $want"
done
echo "prepare.sh: credentials for ${ids[*]} in $lab; every token holds the same master key ($want)"
