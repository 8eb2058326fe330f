#!/usr/bin/env bash
# Guest side of the Vagrant lab: installs and starts node ID in this VM, as
# root, the way deploy/README.md lays out a production node:
#
#   /usr/local/bin/cofferd, coffer      the binaries the host built (make build)
#   /etc/coffer/cofferd.json            deploy/cofferd.json with this node's values (node-config.sh)
#   /etc/coffer/tls/, gossip.key, hsm-pin   this node's credentials from prepare.sh
#   /var/lib/coffer/softhsm/tokens      this node's SoftHSM2 token, which stands in for the HSM
#   /etc/systemd/system/cofferd.service deploy/cofferd.service, plus a drop-in that points
#                                       SoftHSM2 at the token and sets up the routes below
#
# Sites reach each other over the management network: for every node of
# another site, a host route to its cluster address via its management
# address (coffer-lab-routes.service). No VM forwards packets.
#
# Usage: provision.sh ID BOOTSTRAP_IDS ID:SITE:CLUSTER_IP:MGMT_IP...
# The Vagrantfile syncs bin/ to $src/bin, deploy/ to $src/deploy and
# .vagrant/coffer/nodes/ID/ to $src/node before it runs this.
set -euo pipefail

src=${COFFER_LAB_SRC:-/opt/coffer-lab}
lab_user=${COFFER_LAB_USER:-vagrant}
module=/usr/lib/softhsm/libsofthsm2.so

die() {
	echo "provision.sh: $*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "run as root"
[ $# -ge 3 ] || die "usage: provision.sh ID BOOTSTRAP_IDS ID:SITE:CLUSTER_IP:MGMT_IP..."
self=$1 boot=$2
shift 2
bundle=$src/node
if [ ! -x "$src/bin/cofferd" ] || [ ! -x "$src/bin/coffer" ]; then
	die "no binaries in $src/bin: run make build on the host, then vagrant provision"
fi
[ -f "$bundle/$self.pem" ] ||
	die "no credentials for $self in $bundle: deploy/vagrant/prepare.sh makes them on the host"

# SoftHSM2 stands in for the HSM; jq writes the config.
pkgs=()
command -v jq >/dev/null || pkgs+=(jq)
[ -f "$module" ] || pkgs+=(softhsm2)
if [ ${#pkgs[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
fi

id -u coffer >/dev/null 2>&1 ||
	useradd --system --home-dir /var/lib/coffer --no-create-home --shell /usr/sbin/nologin coffer

install -m 0755 "$src/bin/cofferd" "$src/bin/coffer" /usr/local/bin/
install -d -m 0750 -o root -g coffer /etc/coffer /etc/coffer/tls
install -m 0644 "$bundle/node-ca.pem" "$bundle/client-ca.pem" "$bundle/$self.pem" /etc/coffer/tls/
install -m 0640 -g coffer "$bundle/$self-key.pem" /etc/coffer/tls/
install -m 0640 -g coffer "$bundle/gossip.key" "$bundle/hsm-pin" /etc/coffer/

# The token is copied once: a token in use is never replaced.
install -d -m 0700 -o coffer -g coffer /var/lib/coffer /var/lib/coffer/softhsm
if [ ! -d /var/lib/coffer/softhsm/tokens ]; then
	cp -r "$bundle/hsm/tokens" /var/lib/coffer/softhsm/tokens
	chown -R coffer:coffer /var/lib/coffer/softhsm/tokens
	chmod -R u=rwX,go= /var/lib/coffer/softhsm/tokens
fi
printf 'directories.tokendir = /var/lib/coffer/softhsm/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
	>/etc/coffer/softhsm2.conf
chmod 0644 /etc/coffer/softhsm2.conf

cfg=$(mktemp)
trap 'rm -f "$cfg"' EXIT
COFFER_PKCS11_MODULE=$module "$src/deploy/vagrant/node-config.sh" "$self" "$boot" "$@" >"$cfg"
install -m 0640 -o root -g coffer "$cfg" /etc/coffer/cofferd.json

# Host routes to the other sites' cluster addresses over the management network.
routes=/usr/local/sbin/coffer-lab-routes
{
	echo '#!/bin/sh'
	echo '# Written by deploy/vagrant/provision.sh: reach the other sites over the management network.'
	echo 'set -e'
	mysite=
	for spec; do
		IFS=: read -r id site ip mgmt <<<"$spec"
		[ "$id" = "$self" ] && mysite=$site
	done
	for spec; do
		IFS=: read -r id site ip mgmt <<<"$spec"
		[ "$site" = "$mysite" ] || echo "ip route replace $ip/32 via $mgmt"
	done
} >"$routes"
chmod 0755 "$routes"
cat >/etc/systemd/system/coffer-lab-routes.service <<EOF
[Unit]
Description=Coffer lab: routes to the other sites over the management network
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=$routes

[Install]
WantedBy=multi-user.target
EOF

install -m 0644 "$src/deploy/cofferd.service" /etc/systemd/system/cofferd.service
install -d /etc/systemd/system/cofferd.service.d
cat >/etc/systemd/system/cofferd.service.d/lab.conf <<EOF
# Vagrant lab (deploy/vagrant/provision.sh): SoftHSM2 stands in for the HSM and
# finds this node's token through SOFTHSM2_CONF; sites reach each other through
# the routes of coffer-lab-routes.service.
[Unit]
Wants=coffer-lab-routes.service
After=coffer-lab-routes.service

[Service]
Environment=SOFTHSM2_CONF=/etc/coffer/softhsm2.conf
EOF

systemctl daemon-reload
systemctl enable coffer-lab-routes.service
systemctl restart coffer-lab-routes.service
systemctl enable cofferd.service
systemctl restart cofferd.service

# The officer's client certificate, for the CLI (the lab's convenience: in
# production it stays with the officer).
if id -u "$lab_user" >/dev/null 2>&1; then
	home=$(getent passwd "$lab_user" | cut -d: -f6)
	install -d -m 0700 -o "$lab_user" -g "$lab_user" "$home/officer"
	install -m 0600 -o "$lab_user" -g "$lab_user" "$bundle/officer/officer.pem" "$bundle/officer/officer-key.pem" \
		"$bundle/node-ca.pem" "$home/officer/"
	port=$(jq -r '.api_addr | split(":") | last' "$cfg")
	addrs=$(for spec; do
		IFS=: read -r _ _ ip _ <<<"$spec"
		printf '%s:%s\n' "$ip" "$port"
	done | paste -sd, -)
	cat >"$home/coffer.env" <<EOF
# Coffer lab: source this file to point the coffer CLI at the cluster as the officer.
export COFFER_ADDR=$addrs
export COFFER_CA=$home/officer/node-ca.pem
export COFFER_CERT=$home/officer/officer.pem
export COFFER_KEY=$home/officer/officer-key.pem
EOF
	chown "$lab_user:$lab_user" "$home/coffer.env"
fi

echo "provision.sh: $self started (systemctl status cofferd; journalctl -u cofferd)"
