#!/usr/bin/env bash
# bench-fanout.sh — fan-out benchmark of wspush: SUBS subscribers in ROOMS rooms get
# MESSAGES PUBLISHes of BYTES bytes (round robin over the rooms), then a BROADCAST run of
# BCAST_MESSAGES messages to all of them. Reports deliveries/s, delivery latency
# percentiles, the time until the last subscriber has each message, losses / reorders /
# duplicates, server CPU per delivery and writev calls per delivery (from INFO, if the
# server reports `writev_calls` and `deliveries`).
#
# Builds the release binaries, starts the server itself on free loopback ports, runs both
# scenarios against it, stops it by its PID, prints a table and writes
# bench-results/fanout-<time>.json (an array: the rooms run, then the broadcast run).
# It only ever talks to 127.0.0.0/8 and only stops the server it started.
#
# Environment (defaults fit a 2-core machine with 20,000 fds per process):
#   SUBS=10000 ROOMS=10 MESSAGES=1000 BYTES=100   the rooms run
#   BCAST_MESSAGES=200                            the broadcast run (SUBS deliveries each)
#   WINDOW=64        messages in flight (as fast as possible); or RATE=N messages/s
#   PROCS=1          load-generator processes (subscribers split over them)
#   CONNECT_RATE=3000  subscriber connections per second
#   SRC=127.0.0.2-127.0.0.20   source address range
#   THREADS=2 DURATION=180 SERVER_BIN=target/release/wspush SERVER_ARGS= SKIP_BUILD=
# Exit status: the worst of the runs (0 clean, 1 problems such as any loss, 2 could not run).
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${SUBS:-10000}
ROOMS=${ROOMS:-10}
MESSAGES=${MESSAGES:-1000}
BCAST_MESSAGES=${BCAST_MESSAGES:-200}
BYTES=${BYTES:-100}
WINDOW=${WINDOW:-64}
RATE=${RATE:-}
PROCS=${PROCS:-1}
CONNECT_RATE=${CONNECT_RATE:-3000}
SRC=${SRC:-127.0.0.2-127.0.0.20}
THREADS=${THREADS:-2}
DURATION=${DURATION:-180}
SERVER_BIN=${SERVER_BIN:-target/release/wspush}
SERVER_ARGS=${SERVER_ARGS:-}

BENCH_NAME=bench-fanout
# shellcheck source-path=SCRIPTDIR/..
source scripts/bench-lib.sh

bench_build "release build failed"
bench_require_exec "$SERVER_BIN" "server binary"
bench_setup

mkdir -p bench-results
STAMP=$(date +%Y%m%d-%H%M%S)
JSON=bench-results/fanout-$STAMP.json

if [ -n "$RATE" ]; then PACE=(--rate "$RATE"); else PACE=(--window "$WINDOW"); fi

# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
start_server "$SERVER_BIN" --threads "$THREADS" $SERVER_ARGS

worst=0
# run_fanout NAME FLAGS... — one wspush-load fanout run into $TMP/NAME.json.
run_fanout() {
    local name=$1
    shift
    echo "== wspush-load fanout ($name): $*" >&2
    local rc=0
    "$LOAD_BIN" fanout --url "ws://$WS_ADDR/ws" --control "$CONTROL_ADDR" -s "$SUBS" -b "$BYTES" \
        "${PACE[@]}" --procs "$PROCS" --connect-rate "$CONNECT_RATE" --src "$SRC" \
        --pid "$SERVER_PID" --duration "$DURATION" --json "$@" >"$TMP/$name.json" || rc=$?
    if [ "$rc" -eq 2 ] || ! jq -e . "$TMP/$name.json" >/dev/null 2>&1; then
        echo "bench-fanout: the $name run did not complete (exit $rc); see the messages above" >&2
        echo '{"scenario":"fanout","problems":["run did not complete"]}' >"$TMP/$name.json"
        rc=2
    fi
    if [ "$rc" -gt "$worst" ]; then worst=$rc; fi
    jq --arg name "$name" '. + {run: $name}' "$TMP/$name.json" >"$TMP/$name.named.json"
}

run_fanout rooms -r "$ROOMS" -m "$MESSAGES"
run_fanout broadcast -r 1 -m "$BCAST_MESSAGES" --broadcast
stop_server

jq -s . "$TMP/rooms.named.json" "$TMP/broadcast.named.json" >"$JSON"

echo
echo "fanout benchmark ($SUBS subscribers, $BYTES B payloads, server $SERVER_BIN --threads $THREADS)"
jq -r '
  def f(d): if . == null then "n/a" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
  (["metric"] + map(.run)),
  (["subscribers"] + map(.fanout.subscribers | f(0))),
  (["rooms"] + map(.fanout.rooms | f(0))),
  (["messages published/acked"] + map("\(.fanout.published)/\(.fanout.acked)")),
  (["deliveries received/queued"] + map("\(.fanout.delivered)/\(.fanout.queued_deliveries)")),
  (["deliveries/s"] + map(.fanout.deliveries_per_s | f(0))),
  (["messages/s"] + map(.fanout.messages_per_s | f(0))),
  (["latency p50 ms"] + map(.fanout.latency.p50_ms | f(3))),
  (["latency p90 ms"] + map(.fanout.latency.p90_ms | f(3))),
  (["latency p99 ms"] + map(.fanout.latency.p99_ms | f(3))),
  (["latency p99.9 ms"] + map(.fanout.latency.p999_ms | f(3))),
  (["latency max ms"] + map(.fanout.latency.max_ms | f(3))),
  (["last receipt p50 ms"] + map(.fanout.last_receipt.p50_ms | f(3))),
  (["last receipt p99 ms"] + map(.fanout.last_receipt.p99_ms | f(3))),
  (["last receipt max ms"] + map(.fanout.last_receipt.max_ms | f(3))),
  (["lost/reordered/dup"] + map("\(.fanout.lost)/\(.fanout.reordered)/\(.fanout.duplicated)")),
  (["server CPU s"] + map(.server.cpu_seconds | f(3))),
  (["server CPU us/delivery"] + map(.server.cpu_us_per_delivery | f(3))),
  (["server CPU us/message"] + map(.server.cpu_us_per_message | f(1))),
  (["writev calls/delivery"] + map(.server.writev_per_delivery | f(3))),
  (["problems"] + map(.problems | length | tostring))
  | @tsv' "$JSON" | column -t -s $'\t'
jq -r '.[] | .run as $r | .problems[] | "PROBLEM (\($r)): \(.)"' "$JSON"
echo
echo "results: $JSON"
exit "$worst"
