#!/usr/bin/env bash
# bench-compare.sh — the same connection and fan-out scenarios against wspush and against
# the tokio baseline (benches/baseline, binary wspush-baseline), side by side with ratios.
#
# For each server, and for each scenario, a fresh server process is started on free
# loopback ports (so RSS "before" is a freshly started server), driven by wspush-load, and
# stopped by its PID:
#   conns     CONNS connections over PROCS load processes at RATE/s (0 = as fast as
#             possible: the achieved rate is then the server's handshake capacity), held
#             HOLD s; handshakes/s, handshake p99, user and kernel bytes per connection
#   rooms     SUBS subscribers in ROOMS rooms, MESSAGES publishes of BYTES bytes, as fast
#             as the window allows (saturates this machine: both servers and the load
#             generator share its cores, so CPU per delivery there mostly shows how many
#             frames each server happens to batch per write while starved)
#   paced     the same rooms at a fixed PACED_RATE messages/s (PACED_MESSAGES of them),
#             below saturation: the fair per-delivery CPU comparison
#   broadcast SUBS subscribers, BCAST_MESSAGES broadcasts of BYTES bytes
# Prints one table (ratio = wspush / baseline, and which side is better) and writes
# bench-results/compare-<time>.json. It only ever talks to 127.0.0.0/8 and only stops the
# servers it started.
#
# Environment (defaults fit a 2-core machine with 20,000 fds per process):
#   CONNS=15000 PROCS=2 RATE=0 HOLD=5 SRC=127.0.0.2-127.0.0.20
#   SUBS=10000 ROOMS=10 MESSAGES=1000 BCAST_MESSAGES=200 BYTES=100 WINDOW=64
#   PACED_RATE=50 PACED_MESSAGES=500
#   FANOUT_PROCS=1 CONNECT_RATE=3000 THREADS=2 DURATION=180
#   WSPUSH_BIN=target/release/wspush  WSPUSH_ARGS=
#   BASELINE_BIN=benches/baseline/target/release/wspush-baseline  BASELINE_ARGS=
#   SKIP_BUILD=      set to 1 to use the binaries already built
# Exit status: 0 when every run was clean, 1 when some run found problems (they are listed),
# 2 when a run could not be carried out.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-15000}
PROCS=${PROCS:-2}
RATE=${RATE:-0}
HOLD=${HOLD:-5}
SRC=${SRC:-127.0.0.2-127.0.0.20}
SUBS=${SUBS:-10000}
ROOMS=${ROOMS:-10}
MESSAGES=${MESSAGES:-1000}
BCAST_MESSAGES=${BCAST_MESSAGES:-200}
PACED_RATE=${PACED_RATE:-50}
PACED_MESSAGES=${PACED_MESSAGES:-500}
BYTES=${BYTES:-100}
WINDOW=${WINDOW:-64}
FANOUT_PROCS=${FANOUT_PROCS:-1}
CONNECT_RATE=${CONNECT_RATE:-3000}
THREADS=${THREADS:-2}
DURATION=${DURATION:-180}
WSPUSH_BIN=${WSPUSH_BIN:-target/release/wspush}
WSPUSH_ARGS=${WSPUSH_ARGS:-}
BASELINE_BIN=${BASELINE_BIN:-benches/baseline/target/release/wspush-baseline}
BASELINE_ARGS=${BASELINE_ARGS:-}

BENCH_NAME=bench-compare
# shellcheck source-path=SCRIPTDIR/..
source scripts/bench-lib.sh
# Messages name each server by its binary path.
BENCH_SERVER_LABEL=

bench_build "release build of wspush failed"
if [ -z "${SKIP_BUILD:-}" ]; then
    [ -f benches/baseline/Cargo.toml ] || die "benches/baseline/Cargo.toml is missing: the baseline crate is not in this tree"
    echo "== cargo build --release --manifest-path benches/baseline/Cargo.toml" >&2
    cargo build --release --manifest-path benches/baseline/Cargo.toml >&2 || die "release build of the baseline failed"
fi
bench_require_exec "$WSPUSH_BIN" "wspush binary"
bench_require_exec "$BASELINE_BIN" "baseline binary"
bench_setup

worst=0
# record OUT RC — keeps the worst exit status; an incomplete run leaves a placeholder.
record() {
    local out=$1 rc=$2
    if [ "$rc" -eq 2 ] || ! jq -e . "$out" >/dev/null 2>&1; then
        echo "bench-compare: run $(basename "$out" .json) did not complete (exit $rc); see above" >&2
        echo '{"problems":["run did not complete"]}' >"$out"
        rc=2
    fi
    if [ "$rc" -gt "$worst" ]; then worst=$rc; fi
}

# run_side NAME BIN ARGS — the three scenarios against one server implementation.
run_side() {
    local name=$1 bin=$2 args=$3 rc
    # shellcheck disable=SC2086 # args is a list of flags
    start_server "$bin" --threads "$THREADS" $args
    echo "== $name: conns ($CONNS at rate $RATE over $PROCS processes)" >&2
    rc=0
    "$LOAD_BIN" conns --url "ws://$WS_ADDR/ws" -n "$CONNS" --rate "$RATE" --hold "$HOLD" \
        --procs "$PROCS" --src "$SRC" --pid "$SERVER_PID" --duration "$DURATION" --json \
        >"$TMP/$name-conns.json" || rc=$?
    record "$TMP/$name-conns.json" "$rc"
    stop_server

    local kind
    for kind in rooms paced broadcast; do
        local flags=(-r "$ROOMS" -m "$MESSAGES" --window "$WINDOW")
        [ "$kind" = paced ] && flags=(-r "$ROOMS" -m "$PACED_MESSAGES" --rate "$PACED_RATE")
        [ "$kind" = broadcast ] && flags=(-r 1 -m "$BCAST_MESSAGES" --broadcast --window "$WINDOW")
        # shellcheck disable=SC2086
        start_server "$bin" --threads "$THREADS" $args
        echo "== $name: fanout $kind (${flags[*]})" >&2
        rc=0
        "$LOAD_BIN" fanout --url "ws://$WS_ADDR/ws" --control "$CONTROL_ADDR" -s "$SUBS" \
            -b "$BYTES" --procs "$FANOUT_PROCS" --connect-rate "$CONNECT_RATE" \
            --src "$SRC" --pid "$SERVER_PID" --duration "$DURATION" --json "${flags[@]}" \
            >"$TMP/$name-$kind.json" || rc=$?
        record "$TMP/$name-$kind.json" "$rc"
        stop_server
    done
}

run_side wspush "$WSPUSH_BIN" "$WSPUSH_ARGS"
run_side baseline "$BASELINE_BIN" "$BASELINE_ARGS"

mkdir -p bench-results
JSON=bench-results/compare-$(date +%Y%m%d-%H%M%S).json
jq -n \
    --slurpfile wc "$TMP/wspush-conns.json" --slurpfile wr "$TMP/wspush-rooms.json" \
    --slurpfile wb "$TMP/wspush-broadcast.json" --slurpfile bc "$TMP/baseline-conns.json" \
    --slurpfile br "$TMP/baseline-rooms.json" --slurpfile bb "$TMP/baseline-broadcast.json" \
    --slurpfile wp "$TMP/wspush-paced.json" --slurpfile bp "$TMP/baseline-paced.json" \
    '{wspush: {conns: $wc[0], rooms: $wr[0], paced: $wp[0], broadcast: $wb[0]},
      baseline: {conns: $bc[0], rooms: $br[0], paced: $bp[0], broadcast: $bb[0]}}' >"$JSON"

echo
echo "wspush vs baseline ($CONNS conns over $PROCS procs at rate $RATE; $SUBS subscribers, $BYTES B; paced = $PACED_RATE msg/s; --threads $THREADS)"
jq -r '
  def f(d): if . == null then "n/a" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
  # row(name; path; digits; higher_is_better)
  def row(name; p; d; hib):
    (.wspush | p) as $w | (.baseline | p) as $b
    | [name, ($w | f(d)), ($b | f(d)),
       (if $w == null or $b == null or $b == 0 then "n/a" else ($w / $b | f(2)) end),
       (if $w == null or $b == null then ""
        elif $w == $b then "="
        elif ($w > $b) == hib then "wspush" else "baseline" end)];
  ["metric", "wspush", "baseline", "ratio", "better"],
  row("handshakes/s"; .conns.connections.handshakes_per_s; 0; true),
  row("handshake p99 ms"; .conns.connections.handshake.p99_ms; 3; false),
  row("connections failed"; .conns.connections.failed; 0; false),
  row("user bytes/conn"; .conns.server.user_bytes_per_conn; 0; false),
  row("kernel TCP buffer bytes/conn"; .conns.server.kernel_bytes_per_conn; 0; false),
  row("kernel slab bytes/conn (both ends)"; .conns.server.kernel_slab_bytes_per_conn; 0; false),
  row("rooms deliveries/s"; .rooms.fanout.deliveries_per_s; 0; true),
  row("rooms CPU us/delivery"; .rooms.server.cpu_us_per_delivery; 3; false),
  row("rooms latency p99 ms"; .rooms.fanout.latency.p99_ms; 3; false),
  row("rooms last receipt p99 ms"; .rooms.fanout.last_receipt.p99_ms; 3; false),
  row("paced CPU us/delivery"; .paced.server.cpu_us_per_delivery; 3; false),
  row("paced latency p50 ms"; .paced.fanout.latency.p50_ms; 3; false),
  row("paced latency p99 ms"; .paced.fanout.latency.p99_ms; 3; false),
  row("broadcast deliveries/s"; .broadcast.fanout.deliveries_per_s; 0; true),
  row("broadcast CPU us/delivery"; .broadcast.server.cpu_us_per_delivery; 3; false),
  row("broadcast latency p99 ms"; .broadcast.fanout.latency.p99_ms; 3; false),
  row("broadcast last receipt p99 ms"; .broadcast.fanout.last_receipt.p99_ms; 3; false)
  | @tsv' "$JSON" | column -t -s $'\t'
jq -r 'to_entries[] | .key as $side | .value | to_entries[] | .key as $run
       | (.value.problems // [])[] | "PROBLEM (\($side) \($run)): \(.)"' "$JSON"
echo
echo "results: $JSON"
exit "$worst"
