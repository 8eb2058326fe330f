#!/usr/bin/env bash
# audit-cost.sh measures what audit costs on `get` (make bench-audit).
#
# It builds cofferd twice, as shipped and with -tags coffer_noaudit (reads
# and refusals commit no audit entry; never deploy that build), then for each
# of ROUNDS rounds starts a fresh local 3-node cluster of each build in turn
# and runs `coffer bench --op get` at each concurrency in CONC. The builds
# alternate because runs of one build minutes apart can differ by 20% on a
# shared machine. It prints every run, then the mean per build and the cost:
# 1 - audited / unaudited.
#
# Settings (environment): ROUNDS (2), CONC ("1 64 1024"), DURATION (10s),
# KEYS (1000), BASE_PORT (17100, away from make run's 7100).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
CONC=${CONC:-"1 64 1024"}
DURATION=${DURATION:-10s}
KEYS=${KEYS:-1000}
BASE_PORT=${BASE_PORT:-17100}
GO=${GO:-go}

work=$(mktemp -d)
dev_pid=""
cleanup() {
	if [ -n "$dev_pid" ]; then
		kill -INT "$dev_pid" 2>/dev/null || true
		wait "$dev_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

$GO build -o "$work/audit/cofferd" ./cmd/cofferd
$GO build -tags coffer_noaudit -o "$work/noaudit/cofferd" ./cmd/cofferd
$GO build -o "$work/coffer" ./cmd/coffer

# run BUILD ROUND: one fresh cluster of BUILD, one bench per concurrency.
run() {
	local build=$1 round=$2 dir="$work/data-$1-$2"
	"$work/$build/cofferd" dev --nodes 3 --dir "$dir" --base-port "$BASE_PORT" >"$dir.log" 2>&1 &
	dev_pid=$!
	local ready=""
	for _ in $(seq 300); do
		if [ -f "$dir/env" ] && (
			# shellcheck disable=SC1091
			. "$dir/env" && "$work/coffer" cluster status >/dev/null 2>&1
		); then
			ready=1
			break
		fi
		sleep 0.2
	done
	if [ -z "$ready" ]; then
		echo "audit-cost: the $build cluster did not start; its log:" >&2
		cat "$dir.log" >&2
		exit 1
	fi
	for c in $CONC; do
		local ops
		ops=$(
			# shellcheck disable=SC1091
			. "$dir/env" &&
				"$work/coffer" bench --op get --concurrency "$c" --duration "$DURATION" --keys "$KEYS" 2>/dev/null |
				awk '$1 == "total" { print $3 }'
		)
		if [ -z "$ops" ]; then
			echo "audit-cost: bench at $c clients against the $build cluster printed no total" >&2
			exit 1
		fi
		printf '%-8s round %d  %5d clients  %10.1f gets/s\n' "$build" "$round" "$c" "$ops"
		echo "$build $c $ops" >>"$work/results"
	done
	kill -INT "$dev_pid"
	wait "$dev_pid" 2>/dev/null || true
	dev_pid=""
}

for round in $(seq "$ROUNDS"); do
	run audit "$round"
	run noaudit "$round"
done

echo
awk -v conc="$CONC" '
	{ sum[$1, $2] += $3; n[$1, $2]++ }
	END {
		printf "%8s  %14s  %14s  %6s\n", "clients", "with audit", "without audit", "cost"
		split(conc, cs, " ")
		for (i = 1; i in cs; i++) {
			c = cs[i]
			a = sum["audit", c] / n["audit", c]
			u = sum["noaudit", c] / n["noaudit", c]
			printf "%8d  %12.0f/s  %12.0f/s  %5.0f%%\n", c, a, u, 100 * (1 - a / u)
		}
	}' "$work/results"
