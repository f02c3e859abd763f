#!/usr/bin/env bash
# bench-http.sh — what the HTTP API (--http) costs next to the control port: the same
# PUBLISH, to a room with SUBS WebSocket subscribers, sent
#   http-json  as POST /api/publish with a JSON body   (wrk, keep-alive, CONNS connections)
#   http-raw   as POST /api/publish?room= with a raw body (wrk)
#   resp       as RESP PUBLISH, one in flight per connection (redis-benchmark -P 1)
# for DURATION seconds each: requests/s and server CPU per request (utime + stime of
# the server process over the run / requests the server counted).
#
# Builds the release binaries (unless SKIP_BUILD), starts the server itself on free
# loopback ports, holds SUBS subscribers with wspush-load for the whole run, stops
# everything it started by PID, prints a table and writes
# bench-results/http-<time>.json. Only 127.0.0.0/8 is used; every step is bounded.
#
# Environment: SUBS=100 CONNS=8 DURATION=10 BYTES=200 THREADS=2 SKIP_BUILD=
# Needs wrk (apt-get install wrk), redis-benchmark (redis-tools), jq.
# Exit status: 0 clean, 2 could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=bench-http
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

SUBS=${SUBS:-100}
CONNS=${CONNS:-8}
DURATION=${DURATION:-10}
BYTES=${BYTES:-200}
THREADS=${THREADS:-2}

for tool in wrk redis-benchmark redis-cli jq timeout; do
    command -v "$tool" >/dev/null || die "$tool is needed (wrk: apt-get install wrk; redis-benchmark: redis-tools)"
done
bench_build "release build failed"
bench_setup
HZ=$(getconf CLK_TCK)
LOAD_PID=
trap 'if [ -n "$LOAD_PID" ]; then kill "$LOAD_PID" 2>/dev/null || true; wait "$LOAD_PID" 2>/dev/null || true; fi; stop_server; rm -rf "$TMP"' EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
info() {
    timeout 10 redis-cli -h "${CONTROL_ADDR%:*}" -p "${CONTROL_ADDR##*:}" INFO | tr -d '\r' |
        awk -F: -v k="$1" '$1 == k {print $2}'
}

start_server target/release/wspush --threads "$THREADS" --http 127.0.0.1:0
HTTP_ADDR=$(grep -m1 ' ready: ' "$TMP/server.out" | sed -n 's/.* http=\([^ ]*\).*/\1/p')
[ -n "$HTTP_ADDR" ] || die "no http= in the ready line"

# Subscribers held for the whole run (hold mode: connect, stay, report at the end).
"$LOAD_BIN" conns --url "ws://$WS_ADDR/ws?rooms=bench" -n "$SUBS" --hold "$((DURATION * 4 + 20))" --duration "$((DURATION * 4 + 60))" \
    >"$TMP/load.json" 2>"$TMP/load.err" &
LOAD_PID=$!
for _ in $(seq 1 100); do
    [ "$(info connected_clients)" = "$SUBS" ] && break
    sleep 0.2
done
[ "$(info connected_clients)" = "$SUBS" ] || die "subscribers did not connect: $(tail -3 "$TMP/load.err")"

payload=$(head -c "$BYTES" /dev/zero | tr '\0' x)
cat >"$TMP/json.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"room":"bench","data":"$payload"}'
EOF
cat >"$TMP/raw.lua" <<EOF
wrk.method = "POST"
wrk.body = "$payload"
EOF

results=()
run() { # name command...
    local name=$1
    shift
    local p0 t0 s0 p1 t1 s1
    p0=$(info publish_commands)
    t0=$(cpu_ticks)
    s0=$(date +%s.%N)
    timeout "$((DURATION + 30))" "$@" >"$TMP/$name.txt" 2>&1 || die "$name: $(tail -3 "$TMP/$name.txt")"
    s1=$(date +%s.%N)
    t1=$(cpu_ticks)
    p1=$(info publish_commands)
    jq -n --arg name "$name" --argjson n "$((p1 - p0))" --argjson s0 "$s0" --argjson s1 "$s1" \
        --argjson ticks "$((t1 - t0))" --argjson hz "$HZ" '
        {run: $name, requests: $n, seconds: ($s1 - $s0), per_s: ($n / ($s1 - $s0)),
         server_cpu_us_per_request: (if $n > 0 then $ticks / $hz * 1e6 / $n else null end)}' \
        >"$TMP/$name.json"
    results+=("$TMP/$name.json")
}
echo "== wrk JSON publish: $CONNS connections, $DURATION s" >&2
run http-json wrk -t 1 -c "$CONNS" -d "${DURATION}s" -s "$TMP/json.lua" "http://$HTTP_ADDR/api/publish"
echo "== wrk raw publish" >&2
run http-raw wrk -t 1 -c "$CONNS" -d "${DURATION}s" -s "$TMP/raw.lua" "http://$HTTP_ADDR/api/publish?room=bench"
echo "== redis-benchmark PUBLISH -P 1" >&2
n=$(jq -r '.per_s * '"$DURATION"' | floor' "$TMP/http-raw.json")
run resp redis-benchmark -h "${CONTROL_ADDR%:*}" -p "${CONTROL_ADDR##*:}" -c "$CONNS" -P 1 -n "$n" -q \
    PUBLISH bench "$payload"
errors=$(info http_errors)

mkdir -p bench-results
out=bench-results/http-$(date +%Y%m%d-%H%M%S).json
jq -s --argjson subs "$SUBS" --argjson conns "$CONNS" --argjson bytes "$BYTES" --arg errors "$errors" \
    '{subscribers: $subs, connections: $conns, bytes: $bytes, http_errors: ($errors | tonumber), runs: .}' \
    "${results[@]}" >"$out"
printf '%-10s %12s %14s %22s\n' run requests "requests/s" "server CPU µs/request"
jq -r '.runs[] | [.run, .requests, (.per_s | floor), (.server_cpu_us_per_request * 100 | floor / 100)] | @tsv' "$out" |
    while IFS=$'\t' read -r a b c d; do printf '%-10s %12s %14s %22s\n' "$a" "$b" "$c" "$d"; done
echo "(SUBS=$SUBS subscribers in the room, $BYTES-byte payload, http_errors=$errors; $out)"
