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
# It also reads the CPU time the three nodes use (utime + stime from
# /proc/<pid>/stat) over the middle of each measured run, and prints it per
# get: what audit adds in CPU, whatever the throughput.
#
# Settings (environment): ROUNDS (2), CONC ("1 64 1024"), DURATION (10s,
# whole seconds, at least 4s), KEYS (1000), BASE_PORT (17100, away from make
# run's 7100).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
CONC=${CONC:-"1 64 1024"}
DURATION=${DURATION:-10s}
KEYS=${KEYS:-1000}
BASE_PORT=${BASE_PORT:-17100}
GO=${GO:-go}

secs=${DURATION%s}
case $secs in
'' | *[!0-9]*)
	echo "audit-cost: DURATION must be whole seconds, like 10s; got $DURATION" >&2
	exit 2
	;;
esac
if [ "$secs" -lt 4 ]; then
	echo "audit-cost: DURATION must be at least 4s; got $DURATION" >&2
	exit 2
fi
tck=$(getconf CLK_TCK)

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

# node_cpu PID...: the CPU time the processes have used, in clock ticks.
node_cpu() {
	local total=0 p f
	for p in "$@"; do
		# Fields after the command name (which may hold spaces): utime is
		# the 12th, stime the 13th.
		read -r -a f <<<"$(sed 's/^.*) //' "/proc/$p/stat")"
		total=$((total + f[11] + f[12]))
	done
	echo "$total"
}

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
	local nodes
	nodes=$(pgrep -P "$dev_pid" | tr '\n' ' ')
	if [ "$(echo "$nodes" | wc -w)" -ne 3 ]; then
		echo "audit-cost: expected the 3 node processes of the $build cluster, found: $nodes" >&2
		exit 1
	fi
	for c in $CONC; do
		local ops bench_pid cpu0 cpu1 t0 t1
		(
			# shellcheck disable=SC1091
			. "$dir/env" &&
				exec "$work/coffer" bench --op get --concurrency "$c" --duration "$DURATION" --keys "$KEYS" \
					>"$dir.bench" 2>"$dir.bench-err"
		) &
		bench_pid=$!
		# The measured run starts a warm-up second after bench says it runs;
		# read the nodes' CPU from a second into it to a second before its end.
		for _ in $(seq 600); do
			grep -q running "$dir.bench-err" 2>/dev/null && break
			sleep 0.1
		done
		sleep 2
		cpu0=$(node_cpu $nodes)
		t0=$(date +%s.%N)
		sleep $((secs - 2))
		cpu1=$(node_cpu $nodes)
		t1=$(date +%s.%N)
		wait "$bench_pid" || true
		ops=$(awk '$1 == "total" { print $3 }' "$dir.bench")
		if [ -z "$ops" ]; then
			echo "audit-cost: bench at $c clients against the $build cluster printed no total:" >&2
			cat "$dir.bench-err" >&2
			exit 1
		fi
		local us
		us=$(awk -v c0="$cpu0" -v c1="$cpu1" -v t0="$t0" -v t1="$t1" -v tck="$tck" -v ops="$ops" \
			'BEGIN { printf "%.1f", (c1 - c0) / tck / ((t1 - t0) * ops) * 1e6 }')
		printf '%-8s round %d  %5d clients  %10.1f gets/s  %7.1f us node CPU per get\n' "$build" "$round" "$c" "$ops" "$us"
		echo "$build $c $ops $us" >>"$work/results"
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
	{ sum[$1, $2] += $3; cpu[$1, $2] += $4; n[$1, $2]++ }
	END {
		printf "%8s  %14s  %14s  %6s  %22s\n", "clients", "with audit", "without audit", "cost", "node CPU per get (us)"
		split(conc, cs, " ")
		for (i = 1; i in cs; i++) {
			c = cs[i]
			a = sum["audit", c] / n["audit", c]
			u = sum["noaudit", c] / n["noaudit", c]
			ca = cpu["audit", c] / n["audit", c]
			cu = cpu["noaudit", c] / n["noaudit", c]
			printf "%8d  %12.0f/s  %12.0f/s  %5.0f%%  %7.1f vs %5.1f (+%.1f)\n", c, a, u, 100 * (1 - a / u), ca, cu, ca - cu
		}
	}' "$work/results"
