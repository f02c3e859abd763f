#!/usr/bin/env bash
# bench-cluster.sh — cluster benchmark of wspush (issue 9): 2 redis-server instances and 3
# wspush nodes (A, B, C) on this machine, SUBS subscribers round robin over the nodes in
# ROOMS rooms, PUBLISH through node A's control port, first at RATE messages/s, then as
# fast as a WINDOW allows; then the same two loads against ONE node without Redis.
# Reports deliveries/s, latency p50/p99/max, loss, cross-node latency (subscribers on B
# and C) next to local (on A), node CPU per delivery and Redis CPU per published message
# (CPU time of both redis-server processes over each run, from /proc, less their idle
# rate measured for 2 s before the runs, / messages acked).
# Targets (issue 9): zero loss; at RATE=100 the cross-node p99 ≤ single-node p99 + 5 ms.
#
# Starts everything itself on free loopback ports, stops only what it started, by PID,
# also on error (EXIT trap); writes bench-results/cluster-<time>.json (an array of the
# four runs). Only ever talks to 127.0.0.0/8. About 3 minutes with the defaults.
#
# Environment:
#   SUBS=10000 ROOMS=10 BYTES=100
#   RATE=100 RATE_SECONDS=20     the paced run: RATE × RATE_SECONDS messages
#   MAX_MESSAGES=500 WINDOW=64   the as-fast-as-possible run
#   PUBLISH_AFTER=1.5            seconds between the last subscriber open and the first
#                                publish (nodes subscribe a room's channel after its
#                                first member joined)
#   CONNECT_RATE=3000 SRC=127.0.0.2-127.0.0.20 PROCS=1 THREADS=1 DURATION=120
#   SERVER_BIN=target/release/wspush SERVER_ARGS= REDIS_BIN=redis-server SKIP_BUILD=
#   CLUSTER_FLAGS=1              0: start the three nodes WITHOUT --redis/--node-id
#                                (tests this script's mechanics on a build without
#                                cluster mode; B and C then lose everything)
#   SKIP_SINGLE=                 set: no single-node comparison runs
# Exit status: the worst of the runs (0 clean, 1 problems such as any loss, 2 could not run).
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${SUBS:-10000}
ROOMS=${ROOMS:-10}
BYTES=${BYTES:-100}
RATE=${RATE:-100}
RATE_SECONDS=${RATE_SECONDS:-20}
MAX_MESSAGES=${MAX_MESSAGES:-500}
WINDOW=${WINDOW:-64}
PUBLISH_AFTER=${PUBLISH_AFTER:-1.5}
CONNECT_RATE=${CONNECT_RATE:-3000}
SRC=${SRC:-127.0.0.2-127.0.0.20}
PROCS=${PROCS:-1}
THREADS=${THREADS:-1}
DURATION=${DURATION:-120}
SERVER_BIN=${SERVER_BIN:-target/release/wspush}
SERVER_ARGS=${SERVER_ARGS:-}
REDIS_BIN=${REDIS_BIN:-redis-server}
CLUSTER_FLAGS=${CLUSTER_FLAGS:-1}
SKIP_SINGLE=${SKIP_SINGLE:-}
RATE_MESSAGES=$(awk -v r="$RATE" -v s="$RATE_SECONDS" 'BEGIN { printf "%d", r * s }')

BENCH_NAME=bench-cluster
# shellcheck source-path=SCRIPTDIR/..
source scripts/bench-lib.sh

bench_build "release build failed"
bench_require_exec "$SERVER_BIN" "server binary"
command -v "$REDIS_BIN" >/dev/null || die "no $REDIS_BIN (apt-get install redis-server)"
command -v redis-cli >/dev/null || die "no redis-cli (apt-get install redis-tools)"
command -v python3 >/dev/null || die "python3 is needed to find free loopback ports"
bench_setup

# Everything this script started, by PID; the trap stops them (and bench-lib's server).
STARTED=()
stop_started() {
    local pid
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$BENCH_NAME: $pid ignored SIGTERM for 10 s, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    STARTED=()
}
trap 'stop_started; stop_server; rm -rf "$TMP"' EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU seconds (user + system) of a process: per-thread schedstat (ns) when the kernel
# has it, else utime + stime from /proc/PID/stat (clock ticks).
cpu_seconds() {
    local pid=$1 ns=0 f
    if [ -r "/proc/$pid/task" ] && compgen -G "/proc/$pid/task/*/schedstat" >/dev/null; then
        for f in /proc/"$pid"/task/*/schedstat; do
            read -r t _ <"$f" 2>/dev/null || continue
            ns=$((ns + t))
        done
        awk -v n="$ns" 'BEGIN { printf "%.6f", n / 1e9 }'
    else
        # Fields 14 and 15 after the ")" that ends the command name.
        sed 's/.*) //' "/proc/$pid/stat" | awk -v hz="$(getconf CLK_TCK)" '{ printf "%.6f", ($12 + $13) / hz }'
    fi
}

redis_cpu() {
    local total=0 pid
    for pid in "${REDIS_PIDS[@]}"; do
        total=$(awk -v a="$total" -v b="$(cpu_seconds "$pid")" 'BEGIN { printf "%.6f", a + b }')
    done
    echo "$total"
}

mkdir -p bench-results
STAMP=$(date +%Y%m%d-%H%M%S)
JSON=bench-results/cluster-$STAMP.json

# --- Redis --------------------------------------------------------------------------
REDIS_PIDS=()
REDIS_URLS=()
for i in 0 1; do
    port=$(free_port)
    "$REDIS_BIN" --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --daemonize no --logfile "$TMP/redis-$i.log" >/dev/null 2>&1 &
    pid=$!
    STARTED+=("$pid")
    REDIS_PIDS+=("$pid")
    up=
    for _ in $(seq 1 100); do
        if [ "$(redis-cli -h 127.0.0.1 -p "$port" PING 2>/dev/null)" = PONG ]; then up=1; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$up" ] || die "redis-server on port $port did not come up (log: $(tail -n 5 "$TMP/redis-$i.log" 2>/dev/null))"
    REDIS_URLS+=("redis://127.0.0.1:$port")
    echo "== redis-server pid $pid on 127.0.0.1:$port" >&2
done

# --- the three nodes -----------------------------------------------------------------
NODE_PIDS=()
NODE_WS=()
NODE_CONTROL=()
for name in a b c; do
    flags=()
    if [ "$CLUSTER_FLAGS" = 1 ]; then
        for u in "${REDIS_URLS[@]}"; do flags+=(--redis "$u"); done
        flags+=(--node-id "node-$name")
    fi
    # start_server handles one server at a time: take its PID over into STARTED.
    BENCH_SERVER_LABEL="node $name"
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
    start_server "$SERVER_BIN" --threads "$THREADS" "${flags[@]}" $SERVER_ARGS
    # The node keeps writing to the renamed files; the next start makes new ones.
    mv "$TMP/server.out" "$TMP/node-$name.out"
    mv "$TMP/server.err" "$TMP/node-$name.err"
    STARTED+=("$SERVER_PID")
    NODE_PIDS+=("$SERVER_PID")
    NODE_WS+=("$WS_ADDR")
    NODE_CONTROL+=("$CONTROL_ADDR")
    SERVER_PID=
done
BENCH_SERVER_LABEL=server

if [ "$CLUSTER_FLAGS" = 1 ]; then
    # Every node ready (all its Redis connections up) and A seeing all three.
    for i in 0 1 2; do
        ok=
        for _ in $(seq 1 100); do
            if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://${NODE_WS[$i]}/readyz")" = 200 ]; then ok=1; break; fi
            sleep 0.1
        done
        [ -n "$ok" ] || die "node ${NODE_WS[$i]} not ready within 10 s: $(curl -s "http://${NODE_WS[$i]}/readyz")"
    done
    seen=0
    for _ in $(seq 1 50); do
        seen=$(redis-cli -h "${NODE_CONTROL[0]%:*}" -p "${NODE_CONTROL[0]##*:}" NODES 2>/dev/null | grep -cx 'node-[abc]' || true)
        [ "$seen" -ge 3 ] && break
        sleep 0.2
    done
    [ "$seen" -ge 3 ] || die "node A lists $seen of 3 nodes after 10 s"
    echo "== cluster up: node A lists 3 nodes" >&2
fi

# What Redis costs with no load (its timers, the nodes' heartbeats), per second.
c0=$(redis_cpu)
sleep 2
c1=$(redis_cpu)
REDIS_IDLE_CPU_PER_S=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.6f", (b - a) / 2 }')
echo "== Redis idle CPU: $REDIS_IDLE_CPU_PER_S s/s (subtracted per run)" >&2

worst=0
# run_load NAME REDIS(0|1) URLS... -- FLAGS... — one wspush-load fanout run into
# $TMP/NAME.named.json, with the Redis CPU of the run when REDIS=1.
run_load() {
    local name=$1 with_redis=$2
    shift 2
    local urls=()
    while [ "$1" != -- ]; do urls+=(--url "ws://$1/ws"); shift; done
    shift
    local pids=() p
    for p in "${LOAD_PIDS[@]}"; do pids+=(--pid "$p"); done
    echo "== wspush-load fanout ($name): ${urls[*]} $*" >&2
    local cpu0=0 cpu1=0 rc=0 t0 t1
    t0=$(date +%s.%N)
    if [ "$with_redis" = 1 ]; then cpu0=$(redis_cpu); fi
    "$LOAD_BIN" fanout "${urls[@]}" --control "$LOAD_CONTROL" -s "$SUBS" -r "$ROOMS" -b "$BYTES" \
        --procs "$PROCS" --connect-rate "$CONNECT_RATE" --src "$SRC" "${pids[@]}" \
        --publish-after "$PUBLISH_AFTER" --duration "$DURATION" --json "$@" >"$TMP/$name.json" || rc=$?
    if [ "$with_redis" = 1 ]; then cpu1=$(redis_cpu); fi
    t1=$(date +%s.%N)
    if [ "$rc" -eq 2 ] || ! jq -e . "$TMP/$name.json" >/dev/null 2>&1; then
        echo "bench-cluster: the $name run did not complete (exit $rc); see the messages above" >&2
        echo '{"scenario":"fanout","problems":["run did not complete"]}' >"$TMP/$name.json"
        rc=2
    fi
    if [ "$rc" -gt "$worst" ]; then worst=$rc; fi
    # Redis CPU per message: the run's CPU less what Redis spends anyway (its own timers,
    # the nodes' heartbeats) at the idle rate measured before the runs.
    jq --arg name "$name" --argjson redis "$with_redis" --arg c0 "$cpu0" --arg c1 "$cpu1" \
        --arg t0 "$t0" --arg t1 "$t1" --arg idle "$REDIS_IDLE_CPU_PER_S" '
        . + {run: $name}
        + (if $redis == 1 then
             (($c1 | tonumber) - ($c0 | tonumber)) as $cpu
             | (($t1 | tonumber) - ($t0 | tonumber)) as $secs
             | ([$cpu - ($idle | tonumber) * $secs, 0] | max) as $net
             | {redis: {cpu_seconds: $cpu, run_seconds: $secs,
                        idle_cpu_per_s: ($idle | tonumber), net_cpu_seconds: $net,
                        cpu_us_per_message: (if (.fanout.acked // 0) > 0
                            then $net * 1e6 / .fanout.acked else null end),
                        raw_cpu_us_per_message: (if (.fanout.acked // 0) > 0
                            then $cpu * 1e6 / .fanout.acked else null end)}}
           else {} end)
        + (if (.fanout.per_url | length) == 3 then
             ([.fanout.per_url[1,2].latency | select(.count > 0)]) as $x
             | {local_latency: (.fanout.per_url[0].latency | select(.count > 0)),
                cross_node_latency: (if ($x | length) == 0 then null else {
                  count: ($x | map(.count) | add),
                  p50_ms: ($x | map(.p50_ms) | max),
                  p99_ms: ($x | map(.p99_ms) | max),
                  max_ms: ($x | map(.max_ms) | max)} end)}
           else {} end)' "$TMP/$name.json" >"$TMP/$name.named.json"
}

LOAD_PIDS=("${NODE_PIDS[@]}")
LOAD_CONTROL=${NODE_CONTROL[0]}
RUNS=()
run_load cluster-rate 1 "${NODE_WS[@]}" -- -m "$RATE_MESSAGES" --rate "$RATE"
RUNS+=(cluster-rate)
run_load cluster-max 1 "${NODE_WS[@]}" -- -m "$MAX_MESSAGES" --window "$WINDOW"
RUNS+=(cluster-max)
stop_started

if [ -z "$SKIP_SINGLE" ]; then
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
    start_server "$SERVER_BIN" --threads "$THREADS" $SERVER_ARGS
    LOAD_PIDS=("$SERVER_PID")
    LOAD_CONTROL=$CONTROL_ADDR
    run_load single-rate 0 "$WS_ADDR" -- -m "$RATE_MESSAGES" --rate "$RATE"
    RUNS+=(single-rate)
    run_load single-max 0 "$WS_ADDR" -- -m "$MAX_MESSAGES" --window "$WINDOW"
    RUNS+=(single-max)
    stop_server
fi

files=()
for r in "${RUNS[@]}"; do files+=("$TMP/$r.named.json"); done
jq -s . "${files[@]}" >"$JSON"

echo
echo "cluster benchmark ($SUBS subscribers in $ROOMS rooms, $BYTES B payloads, 3 nodes --threads $THREADS + 2 Redis vs 1 node; cluster flags: $CLUSTER_FLAGS)"
jq -r '
  def f(d): if . == null then "n/a" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
  (["metric"] + map(.run)),
  (["subscribers"] + map(.fanout.subscribers | f(0))),
  (["messages published/acked"] + map("\(.fanout.published)/\(.fanout.acked)")),
  (["deliveries received/expected"] + map("\(.fanout.delivered)/\(.fanout.expected_deliveries)")),
  (["deliveries/s"] + map(.fanout.deliveries_per_s | f(0))),
  (["messages/s"] + map(.fanout.messages_per_s | f(0))),
  (["latency p50 ms"] + map(.fanout.latency.p50_ms | f(3))),
  (["latency p99 ms"] + map(.fanout.latency.p99_ms | f(3))),
  (["latency max ms"] + map(.fanout.latency.max_ms | f(3))),
  (["local (A) p50/p99 ms"] + map(if .local_latency then "\(.local_latency.p50_ms | f(3))/\(.local_latency.p99_ms | f(3))" else "-" end)),
  (["cross-node (B,C) p50/p99 ms"] + map(if .cross_node_latency then "\(.cross_node_latency.p50_ms | f(3))/\(.cross_node_latency.p99_ms | f(3))" else "-" end)),
  (["lost/reordered/dup"] + map("\(.fanout.lost)/\(.fanout.reordered)/\(.fanout.duplicated)")),
  (["nodes CPU us/delivery"] + map(.server.cpu_us_per_delivery | f(3))),
  (["Redis CPU s (run, less idle)"] + map(if .redis then "\(.redis.cpu_seconds | f(3)) (\(.redis.net_cpu_seconds | f(3)))" else "n/a" end)),
  (["Redis CPU us/message (net)"] + map(.redis.cpu_us_per_message | f(1))),
  (["problems"] + map(.problems | length | tostring))
  | @tsv' "$JSON" | column -t -s $'\t'
jq -r '.[] | .run as $r | .problems[] | "PROBLEM (\($r)): \(.)"' "$JSON"
# The latency target: at RATE, cross-node p99 within 5 ms of the single node's p99.
jq -r '
  (map(select(.run == "cluster-rate"))[0].cross_node_latency.p99_ms) as $x
  | (map(select(.run == "single-rate"))[0].fanout.latency.p99_ms) as $s
  | if $x != null and $s != null then
      "target: cross-node p99 \($x) ms vs single-node p99 \($s) ms + 5 ms: \(if $x <= $s + 5 then "met" else "MISSED" end)"
    else empty end' "$JSON"
echo
echo "results: $JSON"
exit "$worst"
