#!/usr/bin/env bash
# bench-history.sh — what room history (issue 10) costs and what recovery takes:
#   memory   R rooms × M messages of BYTES bytes published with no subscribers, once with
#            history off (positions only) and once with --history-size M: server RSS delta
#            and INFO history_bytes, per room and per message;
#   recover  one wspush.v1 client reconnecting RECONNECTS times with recover= to a room
#            with MISSED missed messages (`wspush-load recover`): upgrade → MISSED-th
#            replayed message, p50 / p99;
#   fanout   `wspush-load fanout` (SUBS subscribers, ROOMS rooms, MESSAGES PUBLISHes,
#            window WINDOW) against history off and --history-size HISTORY_SIZE with raw
#            subscribers, and once more with history on and wspush.v1 subscribers (JSON
#            envelopes with positions, as recovering clients get): deliveries/s, latency;
#   publish  raw PUBLISH/s with no subscribers (redis-benchmark, pipelined, over
#            PUB_ROOMS rooms), history off vs on, with server CPU per PUBLISH.
# The history store measured is the in-memory one; history in Redis comes with
# cluster-wide positions and is not measured here.
#
# Builds the release binaries, starts each server itself on free loopback ports, stops
# it by its PID, prints a table and writes bench-results/history-<time>.json. It only
# ever talks to 127.0.0.0/8 and only stops the servers it started. Every step is bounded
# (DURATION for the load generator, `timeout` around the other clients).
#
# Environment (defaults fit a 2-core machine):
#   STEPS="memory recover fanout publish"   which steps to run
#   MEM_ROOMS=2000 MEM_MESSAGES=100 BYTES=100   the memory step (and payload size)
#   MISSED=300 RECONNECTS=200                 the recover step
#   SUBS=2000 ROOMS=10 MESSAGES=1000 WINDOW=64 CONNECT_RATE=3000 SRC=127.0.0.2-127.0.0.20
#   HISTORY_SIZE=100                          history "on" in the fanout and publish steps
#   PUB_N=1000000 PUB_CLIENTS=4 PIPELINE=32 PUB_ROOMS=1000   the publish step
#   THREADS=2 DURATION=180 SERVER_BIN=target/release/wspush SERVER_ARGS= SKIP_BUILD=
# Exit status: 0 clean, 1 a step found problems (loss, failed recoveries...), 2 could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-memory recover fanout publish}
MEM_ROOMS=${MEM_ROOMS:-2000}
MEM_MESSAGES=${MEM_MESSAGES:-100}
BYTES=${BYTES:-100}
MISSED=${MISSED:-300}
RECONNECTS=${RECONNECTS:-200}
SUBS=${SUBS:-2000}
ROOMS=${ROOMS:-10}
MESSAGES=${MESSAGES:-1000}
WINDOW=${WINDOW:-64}
CONNECT_RATE=${CONNECT_RATE:-3000}
SRC=${SRC:-127.0.0.2-127.0.0.20}
HISTORY_SIZE=${HISTORY_SIZE:-100}
PUB_N=${PUB_N:-1000000}
PUB_CLIENTS=${PUB_CLIENTS:-4}
PIPELINE=${PIPELINE:-32}
PUB_ROOMS=${PUB_ROOMS:-1000}
THREADS=${THREADS:-2}
DURATION=${DURATION:-180}
SERVER_BIN=${SERVER_BIN:-target/release/wspush}
SERVER_ARGS=${SERVER_ARGS:-}

BENCH_NAME=bench-history
# shellcheck source-path=SCRIPTDIR/..
source scripts/bench-lib.sh

for tool in python3 redis-cli redis-benchmark timeout; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
bench_build "release build failed"
bench_require_exec "$SERVER_BIN" "server binary"
bench_setup

mkdir -p bench-results
STAMP=$(date +%Y%m%d-%H%M%S)
JSON=bench-results/history-$STAMP.json
HZ=$(getconf CLK_TCK)
worst=0
note() { if [ "$1" -gt "$worst" ]; then worst=$1; fi; }
has_step() { [[ " $STEPS " == *" $1 "* ]]; }

rss_bytes() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$SERVER_PID/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
# info FIELD — one INFO field of the running server (empty if absent).
info() {
    local host=${CONTROL_ADDR%:*} port=${CONTROL_ADDR##*:}
    timeout 10 redis-cli -h "$host" -p "$port" INFO | tr -d '\r' |
        awk -F: -v k="$1" '$1 == k {print $2}'
}
# serve ARGS... — start_server with the common flags.
# Extra server flags of the run in progress (the Redis runs add --redis).
SERVE_EXTRA=()
serve() {
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
    start_server "$SERVER_BIN" --threads "$THREADS" "$@" "${SERVE_EXTRA[@]}" $SERVER_ARGS
}

# One redis-server for the "history in Redis" runs (cluster mode with one node: every
# PUBLISH runs the position script in Redis). Stopped by PID at exit.
REDIS_PID=
start_redis() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --protected-mode no --loglevel warning >/dev/null 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 100); do
        redis-cli -p "$port" PING >/dev/null 2>&1 && break
        sleep 0.1
    done
    REDIS_URL="redis://127.0.0.1:$port"
    trap 'stop_server; [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null; rm -rf "$TMP"' EXIT
}
redis_ticks() { awk '{print $14 + $15}' "/proc/$REDIS_PID/stat"; }

# The fill client of the memory step: PUBLISH room-<r> for every message round robin
# over the rooms, pipelined in batches, every reply checked to be an integer.
cat >"$TMP/fill.py" <<'EOF'
import socket, sys
host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rooms, messages, size = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
s = socket.create_connection((host, port), timeout=30)
payload = b"x" * size
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
buf, sent = b"", 0
f = s.makefile("rb")
commands = [(m, r) for m in range(messages) for r in range(rooms)]
for i in range(0, len(commands), 5000):
    batch = commands[i:i + 5000]
    s.sendall(b"".join(cmd(b"PUBLISH", b"%s%d" % (prefix.encode(), r), payload) for _, r in batch))
    for _ in batch:
        line = f.readline()
        if not line.startswith(b":"):
            sys.exit("fill: unexpected reply %r" % line)
print(len(commands))
EOF

# --- 1. memory per room of history -------------------------------------------------
# mem_run NAME HISTORY_SIZE — fills MEM_ROOMS rooms, writes $TMP/mem-NAME.json.
mem_run() {
    local name=$1 size=$2
    serve --history-size "$size" --history-memory 1GiB
    local rss0 rss1 host=${CONTROL_ADDR%:*} port=${CONTROL_ADDR##*:}
    rss0=$(rss_bytes)
    echo "== memory ($name): $MEM_ROOMS rooms × $MEM_MESSAGES messages of $BYTES B" >&2
    local rc=0
    timeout "$DURATION" python3 "$TMP/fill.py" "$host" "$port" mem- "$MEM_ROOMS" \
        "$MEM_MESSAGES" "$BYTES" >/dev/null || rc=$?
    # Let the reactors and the allocator settle before RSS is read.
    sleep 1
    rss1=$(rss_bytes)
    local hbytes hmsgs hrooms
    hbytes=$(info history_bytes)
    hmsgs=$(info history_messages)
    hrooms=$(info history_rooms)
    stop_server
    if [ "$rc" -ne 0 ]; then
        echo "bench-history: the memory fill ($name) failed (exit $rc)" >&2
        note 2
    fi
    jq -n --arg name "$name" --argjson size "$size" --argjson rooms "$MEM_ROOMS" \
        --argjson messages "$MEM_MESSAGES" --argjson bytes "$BYTES" \
        --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson ok "$((rc == 0))" \
        --arg hbytes "$hbytes" --arg hmsgs "$hmsgs" --arg hrooms "$hrooms" '
        ($rss1 - $rss0) as $d | ($rooms * $messages) as $n |
        {run: $name, history_size: $size, rooms: $rooms, messages_per_room: $messages,
         payload_bytes: $bytes, completed: ($ok == 1),
         rss_before: $rss0, rss_after: $rss1, rss_delta: $d,
         rss_per_room: ($d / $rooms), rss_per_message: ($d / $n),
         history_rooms: ($hrooms | tonumber? // null),
         history_messages: ($hmsgs | tonumber? // null),
         history_bytes: ($hbytes | tonumber? // null),
         history_bytes_per_room: (($hbytes | tonumber? // null) | if . == null then null else . / $rooms end),
         history_bytes_per_message: (($hbytes | tonumber? // null) | if . == null then null else . / $n end)}' \
        >"$TMP/mem-$name.json"
}

# --- 2. time to recover MISSED messages --------------------------------------------
recover_run() {
    serve --history-size "$MISSED" --max-recover "$MISSED" --history-memory 1GiB
    echo "== wspush-load recover: $RECONNECTS reconnects, $MISSED missed messages" >&2
    local rc=0
    "$LOAD_BIN" recover --url "ws://$WS_ADDR/ws" --control "$CONTROL_ADDR" -m "$MISSED" \
        -k "$RECONNECTS" -b "$BYTES" --duration "$DURATION" --json >"$TMP/recover.json" || rc=$?
    stop_server
    if [ "$rc" -eq 2 ] || ! jq -e . "$TMP/recover.json" >/dev/null 2>&1; then
        echo "bench-history: the recover run did not complete (exit $rc)" >&2
        echo '{"scenario":"recover","problems":["run did not complete"]}' >"$TMP/recover.json"
        rc=2
    fi
    note "$rc"
}

# --- 3. fan-out and raw PUBLISH, history off vs on ---------------------------------
# load_run NAME HISTORY_SIZE STEPS [FANOUT_FLAGS...] — one server: a fanout run and/or
# the raw PUBLISH run.
load_run() {
    local name=$1 size=$2 steps=$3
    shift 3
    serve --history-size "$size" --history-memory 1GiB
    if has_step fanout && [[ $steps == *fanout* ]]; then
        echo "== wspush-load fanout ($name): $SUBS subscribers, $ROOMS rooms, $MESSAGES messages $*" >&2
        local rc=0
        "$LOAD_BIN" fanout --url "ws://$WS_ADDR/ws" --control "$CONTROL_ADDR" -s "$SUBS" \
            -r "$ROOMS" -m "$MESSAGES" -b "$BYTES" --window "$WINDOW" \
            --connect-rate "$CONNECT_RATE" --src "$SRC" --pid "$SERVER_PID" \
            --duration "$DURATION" --json "$@" >"$TMP/fanout-$name.json" || rc=$?
        if [ "$rc" -eq 2 ] || ! jq -e . "$TMP/fanout-$name.json" >/dev/null 2>&1; then
            echo "bench-history: the fanout run ($name) did not complete (exit $rc)" >&2
            echo '{"scenario":"fanout","problems":["run did not complete"]}' >"$TMP/fanout-$name.json"
            rc=2
        fi
        note "$rc"
        jq --arg name "$name" --argjson size "$size" '. + {run: $name, history_size: $size}' \
            "$TMP/fanout-$name.json" >"$TMP/fanout-$name.named.json"
    fi
    if has_step publish && [[ $steps == *publish* ]]; then
        echo "== redis-benchmark PUBLISH ($name): $PUB_N over $PUB_ROOMS rooms, -c $PUB_CLIENTS -P $PIPELINE" >&2
        local p0 p1 t0 t1 s0 s1 rc=0
        p0=$(info publish_commands)
        t0=$(cpu_ticks)
        s0=$(date +%s.%N)
        timeout "$DURATION" redis-benchmark -h "${CONTROL_ADDR%:*}" -p "${CONTROL_ADDR##*:}" \
            -c "$PUB_CLIENTS" -P "$PIPELINE" -n "$PUB_N" -r "$PUB_ROOMS" -q \
            PUBLISH pub-__rand_int__ "$(head -c "$BYTES" /dev/zero | tr '\0' x)" \
            >"$TMP/publish-$name.txt" 2>&1 || rc=$?
        s1=$(date +%s.%N)
        t1=$(cpu_ticks)
        p1=$(info publish_commands)
        local hbytes
        hbytes=$(info history_bytes)
        local done_n=$((p1 - p0))
        local problems='[]'
        if [ "$rc" -ne 0 ] || [ "$done_n" -lt "$PUB_N" ]; then
            # redis-benchmark's pipelines may send a few more than -n.
        problems=$(jq -n --arg m "redis-benchmark exit $rc, $done_n of $PUB_N PUBLISH counted" '[$m]')
            note 1
        fi
        jq -n --arg name "$name" --argjson size "$size" --argjson n "$done_n" \
            --argjson s0 "$s0" --argjson s1 "$s1" --argjson ticks "$((t1 - t0))" --argjson hz "$HZ" \
            --arg hbytes "$hbytes" --argjson problems "$problems" '
            {run: $name, history_size: $size, publishes: $n, seconds: ($s1 - $s0),
             publish_per_s: ($n / ($s1 - $s0)),
             server_cpu_us_per_publish: (if $n > 0 then $ticks / $hz * 1e6 / $n else null end),
             history_bytes: ($hbytes | tonumber? // null), problems: $problems}' \
            >"$TMP/publish-$name.json"
    fi
    stop_server
}

if has_step memory; then
    mem_run off 0
    mem_run on "$MEM_MESSAGES"
fi
if has_step recover; then recover_run; fi
if has_step fanout || has_step publish; then
    load_run off 0 "fanout publish"
    load_run on "$HISTORY_SIZE" "fanout publish"
    load_run on-v1 "$HISTORY_SIZE" fanout --v1
    if [ "${REDIS_RUNS:-1}" = 1 ] && command -v redis-server >/dev/null 2>&1; then
        start_redis
        SERVE_EXTRA=(--redis "$REDIS_URL" --node-id bench)
        r0=$(redis_ticks)
        m0=$(redis-cli -u "$REDIS_URL" INFO memory | tr -d '\r' | awk -F: '/^used_memory:/{print $2}')
        full_n=$PUB_N
        PUB_N=${PUB_N_REDIS:-200000}
        load_run redis "$HISTORY_SIZE" "fanout publish" --v1
        PUB_N=$full_n
        r1=$(redis_ticks)
        m1=$(redis-cli -u "$REDIS_URL" INFO memory | tr -d '\r' | awk -F: '/^used_memory:/{print $2}')
        kept_rooms=$(redis-cli -u "$REDIS_URL" --scan --pattern '*:hist:*' | wc -l)
        SERVE_EXTRA=()
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
        REDIS_PID=
        echo "{\"redis_cpu_s\": $(awk -v t=$((r1 - r0)) -v hz="$HZ" 'BEGIN{print t/hz}'), \"redis_memory_delta\": $((m1 - m0)), \"rooms_with_history\": $kept_rooms, \"history_size\": $HISTORY_SIZE}" >"$TMP/redis-cpu.json"
    fi
fi

# Missing steps are null in the result.
slurp() { if [ -f "$1" ]; then cat "$1"; else echo null; fi; }
jq -n --arg stamp "$STAMP" --arg server "$SERVER_BIN --threads $THREADS $SERVER_ARGS" \
    --argjson mem_off "$(slurp "$TMP/mem-off.json")" --argjson mem_on "$(slurp "$TMP/mem-on.json")" \
    --argjson recover "$(slurp "$TMP/recover.json")" \
    --argjson fan_off "$(slurp "$TMP/fanout-off.named.json")" \
    --argjson fan_on "$(slurp "$TMP/fanout-on.named.json")" \
    --argjson fan_v1 "$(slurp "$TMP/fanout-on-v1.named.json")" \
    --argjson pub_off "$(slurp "$TMP/publish-off.json")" \
    --argjson pub_on "$(slurp "$TMP/publish-on.json")" \
    --argjson fan_redis "$(slurp "$TMP/fanout-redis.named.json")" \
    --argjson pub_redis "$(slurp "$TMP/publish-redis.json")" \
    --argjson redis_cpu "$(slurp "$TMP/redis-cpu.json")" '
    {scenario: "history", time: $stamp, server: $server, store: "memory",
     memory: {off: $mem_off, on: $mem_on}, recover: $recover,
     fanout: {off: $fan_off, on: $fan_on, on_v1: $fan_v1, redis_v1: $fan_redis},
     publish: {off: $pub_off, on: $pub_on, redis: $pub_redis}, redis_cpu: $redis_cpu}' >"$JSON"

echo
echo "history benchmark (server $SERVER_BIN --threads $THREADS; in-memory history, and history in Redis through one node in cluster mode)"
jq -r '
  def f(d): if . == null then "n/a" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
  def row(name; d; off; on): [name, (off | f(d)), (on | f(d)), "-"];
  def fan(name; d; g): [name] + ([.fanout.off, .fanout.on, .fanout.on_v1] | map(if . == null then "n/a" else (g | f(d)) end));
  (["metric", "history off", "history on", "history on, wspush.v1"]),
  (if .memory.on != null then
     row("memory: RSS delta MB (\(.memory.on.rooms) rooms × \(.memory.on.messages_per_room) msgs)"; 2;
         .memory.off.rss_delta / 1e6; .memory.on.rss_delta / 1e6),
     row("memory: RSS per room B"; 0; .memory.off.rss_per_room; .memory.on.rss_per_room),
     row("memory: RSS per message B"; 1; .memory.off.rss_per_message; .memory.on.rss_per_message),
     row("memory: history_bytes per room"; 0; .memory.off.history_bytes_per_room; .memory.on.history_bytes_per_room),
     row("memory: history_bytes per message"; 1; .memory.off.history_bytes_per_message; .memory.on.history_bytes_per_message)
   else empty end),
  (if .fanout.on != null or .fanout.off != null then
     fan("fanout: deliveries/s"; 0; .fanout.deliveries_per_s),
     fan("fanout: latency p50 ms"; 2; .fanout.latency.p50_ms),
     fan("fanout: latency p99 ms"; 2; .fanout.latency.p99_ms),
     fan("fanout: server CPU us/delivery"; 2; .server.cpu_us_per_delivery),
     ([.fanout.off, .fanout.on, .fanout.on_v1] | ["fanout: lost/reordered/dup"] + map(if . == null then "n/a"
        else "\(.fanout.lost)/\(.fanout.reordered)/\(.fanout.duplicated)" end))
   else empty end),
  (if .publish.on != null then
     row("publish: PUBLISH/s (no subscribers)"; 0; .publish.off.publish_per_s; .publish.on.publish_per_s),
     row("publish: server CPU us/PUBLISH"; 2; .publish.off.server_cpu_us_per_publish; .publish.on.server_cpu_us_per_publish)
   else empty end)
  | @tsv' "$JSON" | column -t -s $'\t'
jq -r '
  def f(d): if . == null then "n/a" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
  select(.publish.redis != null) |
  "history in Redis (one node, --redis, --history-size, wspush.v1 subscribers): fanout \(.fanout.redis_v1.fanout.deliveries_per_s | f(0)) deliveries/s, " +
  "p50 \(.fanout.redis_v1.fanout.latency.p50_ms | f(2)) ms, p99 \(.fanout.redis_v1.fanout.latency.p99_ms | f(2)) ms, " +
  "lost/reordered/dup \(.fanout.redis_v1.fanout.lost)/\(.fanout.redis_v1.fanout.reordered)/\(.fanout.redis_v1.fanout.duplicated); " +
  "PUBLISH/s (no subscribers) \(.publish.redis.publish_per_s | f(0)), node CPU \(.publish.redis.server_cpu_us_per_publish | f(2)) us/PUBLISH, " +
  "Redis CPU over both runs \(.redis_cpu.redis_cpu_s | f(2)) s for \(.publish.redis.publishes + .fanout.redis_v1.fanout.published) messages; " +
  "Redis memory \(.redis_cpu.redis_memory_delta) B for \(.redis_cpu.rooms_with_history) rooms of up to \(.redis_cpu.history_size) messages (\(.redis_cpu.redis_memory_delta / .redis_cpu.rooms_with_history | f(0)) B per room)"' "$JSON"
jq -r '
  def f(d): if . == null then "n/a" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
  .recover | select(. != null and .recovery != null) |
  "recover \(.missed) messages of \(.bytes) B: \(.recovered)/\(.reconnects) reconnects recovered; " +
  "upgrade → last replayed p50 \(.recovery.p50_ms | f(3)) ms, p99 \(.recovery.p99_ms | f(3)) ms, " +
  "max \(.recovery.max_ms | f(3)) ms (101 p50 \(.handshake.p50_ms | f(3)) ms, joined p50 \(.joined.p50_ms | f(3)) ms)"' "$JSON"
jq -r '
  [(.recover // {} | .problems // [] | .[] | "recover: \(.)"),
   (.fanout | to_entries[] | select(.value != null) | .key as $k | .value.problems // [] | .[] | "fanout \($k): \(.)"),
   (.publish | to_entries[] | select(.value != null) | .key as $k | .value.problems // [] | .[] | "publish \($k): \(.)")]
  | .[] | "PROBLEM \(.)"' "$JSON"
echo
echo "results: $JSON"
exit "$worst"
