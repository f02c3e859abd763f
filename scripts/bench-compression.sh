#!/usr/bin/env bash
# bench-compression.sh — permessage-deflate (issue 12 §6): a realistic 1 KB JSON push
# (benches/data/push-1k.json) to SUBS subscribers of one room, once by subscribers that
# do not offer the extension and once by subscribers that do, each against a fresh
# server (the default --compression on). Reports, per run: bytes on the wire per
# delivery (the server's bytes_written over its deliveries), server CPU per delivery
# (its utime+stime over the pushes), and server RSS per open idle subscriber; then
# the ratios the issue sets targets for (wire <= 0.4x, CPU <= 1.1x, idle <= +64 B).
#
# The subscribers are raw sockets in one Python process (scripts/bench_compression.py,
# standard library only): tungstenite, the load generator's codec, cannot read RSV1
# frames. Messages go out in batches of BATCH, each read by every subscriber before the
# next, so neither run pays for slow consumers; every frame is counted, subscriber 0
# inflates and compares each message, and every byte the server wrote must be read.
# Writes bench-results/compression-<time>.json. Talks to 127.0.0.0/8 only and only
# stops the servers it started.
#
# Environment: SUBS=10000 MESSAGES=200 BATCH=10 THREADS=2 SERVER_BIN=target/release/wspush
#              SERVER_ARGS= SKIP_BUILD=
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${SUBS:-10000}
MESSAGES=${MESSAGES:-200}
BATCH=${BATCH:-10}
THREADS=${THREADS:-2}
SERVER_BIN=${SERVER_BIN:-target/release/wspush}
SERVER_ARGS=${SERVER_ARGS:-}
PAYLOAD=benches/data/push-1k.json

BENCH_NAME=bench-compression
# shellcheck source-path=SCRIPTDIR/..
source scripts/bench-lib.sh

bench_build "release build failed"
bench_require_exec "$SERVER_BIN" "server binary"
bench_setup
command -v python3 >/dev/null || die "python3 is needed"

mkdir -p bench-results
JSON=bench-results/compression-$(date +%Y%m%d-%H%M%S).json

# run NAME SRC [--offer] — one fresh server, one client run into $TMP/NAME.json.
run() {
    local name=$1 src=$2
    shift 2
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
    start_server "$SERVER_BIN" --threads "$THREADS" --ping-interval 0 --idle-timeout 0 $SERVER_ARGS
    echo "== $name: $SUBS subscribers, $MESSAGES messages of $(wc -c <"$PAYLOAD") bytes" >&2
    python3 scripts/bench_compression.py "$WS_ADDR" "$CONTROL_ADDR" --pid "$SERVER_PID" \
        --subs "$SUBS" --messages "$MESSAGES" --batch "$BATCH" --payload "$PAYLOAD" \
        --src "$src" "$@" >"$TMP/$name.json" || die "the $name run failed"
    stop_server
    jq --arg name "$name" '. + {run: $name}' "$TMP/$name.json" >"$TMP/$name.named.json"
}

run plain 127.0.0.2
run deflate 127.0.0.3 --offer
jq -s '{runs: ., ratios: {
    wire: (.[1].wire_bytes_per_delivery / .[0].wire_bytes_per_delivery),
    cpu: (.[1].cpu_us_per_delivery / .[0].cpu_us_per_delivery),
    idle_extra_bytes: (.[1].rss_idle_bytes_per_conn - .[0].rss_idle_bytes_per_conn)}}' \
    "$TMP/plain.named.json" "$TMP/deflate.named.json" >"$JSON"

echo
echo "compression benchmark ($SUBS subscribers, $MESSAGES x $(wc -c <"$PAYLOAD") B JSON, server $SERVER_BIN --threads $THREADS)"
jq -r '
  def f(d): (. * pow(10; d) | round) / pow(10; d) | tostring;
  (["metric"] + (.runs | map(.run))),
  (["deliveries"] + (.runs | map(.deliveries | f(0)))),
  (["compressed frames"] + (.runs | map(.compressed_frames | f(0)))),
  (["wire bytes/delivery"] + (.runs | map(.wire_bytes_per_delivery | f(1)))),
  (["server CPU us/delivery"] + (.runs | map(.cpu_us_per_delivery | f(3)))),
  (["server CPU s"] + (.runs | map(.cpu_seconds | f(2)))),
  (["RSS B/idle conn"] + (.runs | map(.rss_idle_bytes_per_conn | f(1)))),
  (["RSS B/conn after pushes"] + (.runs | map(.rss_after_bytes_per_conn | f(1))))
  | @tsv' "$JSON" | column -t -s $'\t'
jq -r '.ratios | "wire ratio \(.wire * 1000 | round / 1000)x (target <= 0.4), CPU ratio \(.cpu * 1000 | round / 1000)x (target <= 1.1), idle +\(.idle_extra_bytes * 10 | round / 10) B/conn (target <= 64)"' "$JSON"
echo "results: $JSON"
