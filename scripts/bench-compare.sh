#!/usr/bin/env bash
# bench-compare.sh compares two builds of cofferd on one operation (make
# bench-compare): the working tree ("new") and the commit BASE ("base",
# default HEAD~1), built from a temporary git worktree.
#
# For each of ROUNDS rounds it starts a fresh local 3-node cluster of each
# build in turn and runs that build's own `coffer bench --op OP` at each
# concurrency in CONC: a build's client is part of it (what it seals,
# signs and verifies), and a client only talks to nodes that speak its
# protocol.
# The builds alternate because runs of one build minutes apart can differ by
# 20% on a shared machine. It prints every run, then the mean per build and
# the ratio new / base.
#
# It also reads the CPU time the three nodes use (utime + stime from
# /proc/<pid>/stat) over the middle of each measured run, and prints it per
# operation, whatever the throughput.
#
# Settings (environment): BASE (HEAD~1), OP (get; any bench --op), ROUNDS
# (2), CONC ("1 64"), DURATION (10s, whole seconds, at least 4s), KEYS
# (1000), BASE_PORT (17100, away from make run's 7100).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-HEAD~1}
OP=${OP:-get}
ROUNDS=${ROUNDS:-2}
CONC=${CONC:-"1 64"}
DURATION=${DURATION:-10s}
KEYS=${KEYS:-1000}
BASE_PORT=${BASE_PORT:-17100}
GO=${GO:-go}

secs=${DURATION%s}
case $secs in
'' | *[!0-9]*)
	echo "bench-compare: DURATION must be whole seconds, like 10s; got $DURATION" >&2
	exit 2
	;;
esac
if [ "$secs" -lt 4 ]; then
	echo "bench-compare: DURATION must be at least 4s; got $DURATION" >&2
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
	git worktree remove --force "$work/src" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

base_rev=$(git rev-parse --verify "$BASE^{commit}")
git worktree add --detach "$work/src" "$base_rev" >/dev/null
(cd "$work/src" && $GO build -o "$work/base/" ./cmd/cofferd ./cmd/coffer)
$GO build -o "$work/new/" ./cmd/cofferd ./cmd/coffer
echo "base: $BASE ($base_rev); new: the working tree; op: $OP"

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
			. "$dir/env" && "$work/$build/coffer" cluster status >/dev/null 2>&1
		); then
			ready=1
			break
		fi
		sleep 0.2
	done
	if [ -z "$ready" ]; then
		echo "bench-compare: the $build cluster did not start; its log:" >&2
		cat "$dir.log" >&2
		exit 1
	fi
	local nodes
	nodes=$(pgrep -P "$dev_pid" | tr '\n' ' ')
	if [ "$(echo "$nodes" | wc -w)" -ne 3 ]; then
		echo "bench-compare: expected the 3 node processes of the $build cluster, found: $nodes" >&2
		exit 1
	fi
	for c in $CONC; do
		local ops bench_pid cpu0 cpu1 t0 t1
		(
			# shellcheck disable=SC1091
			. "$dir/env" &&
				exec "$work/$build/coffer" bench --op "$OP" --concurrency "$c" --duration "$DURATION" --keys "$KEYS" \
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
			echo "bench-compare: bench at $c clients against the $build cluster printed no total:" >&2
			cat "$dir.bench-err" >&2
			exit 1
		fi
		local us
		us=$(awk -v c0="$cpu0" -v c1="$cpu1" -v t0="$t0" -v t1="$t1" -v tck="$tck" -v ops="$ops" \
			'BEGIN { printf "%.1f", (c1 - c0) / tck / ((t1 - t0) * ops) * 1e6 }')
		printf '%-5s round %d  %5d clients  %10.1f ops/s  %7.1f us node CPU per op\n' "$build" "$round" "$c" "$ops" "$us"
		echo "$build $c $ops $us" >>"$work/results"
	done
	kill -INT "$dev_pid"
	wait "$dev_pid" 2>/dev/null || true
	dev_pid=""
}

for round in $(seq "$ROUNDS"); do
	run base "$round"
	run new "$round"
done

echo
awk -v conc="$CONC" -v op="$OP" '
	{ sum[$1, $2] += $3; cpu[$1, $2] += $4; n[$1, $2]++ }
	END {
		printf "%8s  %12s  %12s  %9s  %26s\n", "clients", "base " op, "new " op, "new/base", "node CPU per op (us)"
		split(conc, cs, " ")
		for (i = 1; i in cs; i++) {
			c = cs[i]
			b = sum["base", c] / n["base", c]
			w = sum["new", c] / n["new", c]
			cb = cpu["base", c] / n["base", c]
			cw = cpu["new", c] / n["new", c]
			printf "%8d  %10.0f/s  %10.0f/s  %9.2f  %9.1f base, %7.1f new\n", c, b, w, w / b, cb, cw
		}
	}' "$work/results"
