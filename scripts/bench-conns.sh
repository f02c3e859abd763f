#!/usr/bin/env bash
# bench-conns.sh — connection benchmark of wspush: handshake rate, handshake latency,
# failures by cause, and server memory per connection (user space from VmRSS, kernel
# from /proc/net/sockstat).
#
# Builds the release binaries, starts the server itself on free loopback ports, waits for
# its ready line, opens CONNS connections over PROCS load processes (each stays under its
# 20,000-descriptor limit), holds them HOLD seconds, stops the server by its PID, prints a
# table and writes bench-results/conns-<time>.json. It only ever talks to 127.0.0.0/8 and
# only stops the server it started.
#
# Environment (defaults fit a 2-core machine with 20,000 fds per process):
#   CONNS=15000      connections to open
#   PROCS=2          load-generator processes
#   RATE=3000        target handshakes per second (all processes together)
#   HOLD=10          seconds to hold the connections once all are open
#   SRC=127.0.0.2-127.0.0.20   source address range (round robin)
#   THREADS=2        server --threads
#   DURATION=120     hard bound on the load run, seconds
#   SERVER_BIN=target/release/wspush   server binary (any server with the same ready line)
#   SERVER_ARGS=     extra server flags
#   SKIP_BUILD=      set to 1 to use the binaries already built
# Exit status: that of wspush-load (0 clean, 1 problems found, 2 could not run).
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-15000}
PROCS=${PROCS:-2}
RATE=${RATE:-3000}
HOLD=${HOLD:-10}
SRC=${SRC:-127.0.0.2-127.0.0.20}
THREADS=${THREADS:-2}
DURATION=${DURATION:-120}
SERVER_BIN=${SERVER_BIN:-target/release/wspush}
SERVER_ARGS=${SERVER_ARGS:-}
LOAD_BIN=target/release/wspush-load

die() { echo "bench-conns: $*" >&2; exit 2; }

if [ -z "${SKIP_BUILD:-}" ]; then
    echo "== cargo build --release --bins" >&2
    cargo build --release --bins >&2 || die "release build failed"
fi
[ -x "$SERVER_BIN" ] || die "no server binary at $SERVER_BIN"
[ -x "$LOAD_BIN" ] || die "no load generator at $LOAD_BIN"
command -v jq >/dev/null || die "jq is needed to print the table (apt-get install jq)"

# The server and the load processes inherit the raised descriptor limit.
ulimit -n "$(ulimit -Hn)"

TMP=$(mktemp -d)
SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "bench-conns: server $SERVER_PID ignored SIGTERM for 10 s, sending SIGKILL" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap 'stop_server; rm -rf "$TMP"' EXIT

# start_server BIN ARGS... — sets SERVER_PID, WS_ADDR, CONTROL_ADDR.
start_server() {
    "$@" --listen 127.0.0.1:0 --control 127.0.0.1:0 >"$TMP/server.out" 2>"$TMP/server.err" &
    SERVER_PID=$!
    local line=
    for _ in $(seq 1 150); do
        line=$(grep -m1 ' ready: ' "$TMP/server.out" 2>/dev/null || true)
        [ -n "$line" ] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "bench-conns: server exited before its ready line; its stderr:" >&2
            cat "$TMP/server.err" >&2
            SERVER_PID=
            exit 2
        fi
        sleep 0.1
    done
    [ -n "$line" ] || die "server printed no ready line within 15 s (stdout: $(head -c 300 "$TMP/server.out"))"
    WS_ADDR=$(sed -n 's/.* ws=\([^ ]*\).*/\1/p' <<<"$line" | sed 's/^0\.0\.0\.0:/127.0.0.1:/')
    CONTROL_ADDR=$(sed -n 's/.* control=\([^ ]*\).*/\1/p' <<<"$line" | sed 's/^0\.0\.0\.0:/127.0.0.1:/')
    if [ -z "$WS_ADDR" ] || [ -z "$CONTROL_ADDR" ]; then
        die "cannot parse ws=/control= from: $line"
    fi
    echo "== server pid $SERVER_PID ready: ws=$WS_ADDR control=$CONTROL_ADDR" >&2
}

mkdir -p bench-results
STAMP=$(date +%Y%m%d-%H%M%S)
JSON=bench-results/conns-$STAMP.json

# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
start_server "$SERVER_BIN" --threads "$THREADS" $SERVER_ARGS

echo "== wspush-load conns: $CONNS connections at $RATE/s over $PROCS processes, hold $HOLD s" >&2
rc=0
"$LOAD_BIN" conns --url "ws://$WS_ADDR/ws" -n "$CONNS" --rate "$RATE" --hold "$HOLD" \
    --procs "$PROCS" --src "$SRC" --pid "$SERVER_PID" --duration "$DURATION" --json \
    >"$JSON" || rc=$?
stop_server

if [ "$rc" -eq 2 ] || ! jq -e . "$JSON" >/dev/null 2>&1; then
    die "the load run did not complete (exit $rc); see the messages above"
fi

echo
echo "conns benchmark ($CONNS connections, $PROCS load processes, server $SERVER_BIN --threads $THREADS)"
jq -r '
  def f(d): if . == null then "n/a" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
  [
    ["connections opened", "\(.connections.opened) / \(.connections.requested)"],
    ["failed / dropped", "\(.connections.failed) / \(.connections.dropped)"],
    ["handshakes/s", (.connections.handshakes_per_s | f(0))],
    ["handshake p50 ms", (.connections.handshake.p50_ms | f(3))],
    ["handshake p99 ms", (.connections.handshake.p99_ms | f(3))],
    ["handshake max ms", (.connections.handshake.max_ms | f(3))],
    ["server RSS before bytes", (.server.rss_before_bytes | f(0))],
    ["server RSS after bytes", (.server.rss_after_bytes | f(0))],
    ["user bytes/conn", (.server.user_bytes_per_conn | f(0))],
    ["kernel TCP buffer bytes/conn (both ends)", (.server.kernel_bytes_per_conn | f(0))],
    ["kernel slab bytes/conn (both ends)", (.server.kernel_slab_bytes_per_conn | f(0))]
  ]
  + [.connections.failures | to_entries[] | ["  failure: \(.key)", (.value | tostring)]]
  + [.connections.drops | to_entries[] | ["  drop: \(.key)", (.value | tostring)]]
  + [.problems[] | ["PROBLEM", .]]
  | .[] | @tsv' "$JSON" | column -t -s $'\t'
echo
echo "results: $JSON"
exit "$rc"
