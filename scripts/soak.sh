#!/usr/bin/env bash
# soak.sh — a bounded churn soak that shows memory comes back: waves of up to CONNS
# WebSocket connections with fresh user, room and grant-set names (token `rooms`,
# `?rooms=`, `{"op":"join"}` by token pattern and by --client-join, control JOIN /
# LEAVE / KICK), PUBLISH / SEND / BROADCAST to them, slow readers closed as slow
# consumers, short tokens expiring (4001), wspush.v1 clients recovering from history,
# TCP resets and FINs without a close, short-lived control and HTTP API clients (and
# malformed RESP); every wave ends with everyone gone. The server's VmRSS and INFO are
# sampled every second. After DURATION the churn stops; once the history TTL and a full
# sweep of the per-address table have passed (at most SETTLE seconds), every table in
# INFO must be back to 0 and RSS back within the bound stated in scripts/soak.py of its
# level after the first wave.
#
# Starts the release server itself on free loopback ports (bench-lib.sh), drives it with
# scripts/soak.py (websockets + PyJWT + redis-py from the venv of scripts/pyvenv.sh: an
# independent client), prints a table, writes bench-results/soak-<time>.json and stops
# the server by its PID. It only ever talks to 127.0.0.0/8 and only stops the server it
# started. Bounded: DURATION of churn, then at most SETTLE seconds of settling.
#
# Environment:
#   DURATION=300   seconds of churn (the wave in progress finishes)
#   CONNS=5000     connections per wave (at most 5,000: the machine allows 20,000 fds)
#   SOURCES=50     client addresses 127.0.0.2.. (the per-address table churns with them)
#   SETTLE=120     most seconds to wait for the tables after the churn
#   THREADS=2 SERVER_BIN=target/release/wspush SERVER_ARGS= SKIP_BUILD=
# Exit status: 0 everything came back, 1 something did not, 2 could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-300}
CONNS=${CONNS:-5000}
SOURCES=${SOURCES:-50}
SETTLE=${SETTLE:-120}
THREADS=${THREADS:-2}
SERVER_BIN=${SERVER_BIN:-target/release/wspush}
SERVER_ARGS=${SERVER_ARGS:-}

BENCH_NAME=soak
# shellcheck source-path=SCRIPTDIR/..
source scripts/bench-lib.sh

[ "$CONNS" -le 5000 ] || die "CONNS=$CONNS: at most 5,000 concurrent connections here"
PY=$(scripts/pyvenv.sh) || die "scripts/pyvenv.sh could not make the Python venv"
bench_build "release build failed"
bench_require_exec "$SERVER_BIN" "server binary"
bench_setup

mkdir -p bench-results
STAMP=$(date +%Y%m%d-%H%M%S)
JSON=bench-results/soak-$STAMP.json
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

# The flags put every table on the churn path: per-address limits on (so the address
# table and the reactors' slots are used), history on with a short TTL (rooms with
# history come and go within the run), a small --max-pending (slow readers are closed
# after a few pushes), a short leeway (short tokens expire within the wave).
# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
WSPUSH_JWT_SECRET=$SECRET start_server "$SERVER_BIN" --threads "$THREADS" \
    --http 127.0.0.1:0 --jwt-leeway 1s --client-join 'cj-*' \
    --max-pending 256KiB --history-size 20 --history-ttl 10s --history-memory 16MiB \
    --max-conns-per-ip 5000 --handshake-rate-per-ip 100000 $SERVER_ARGS
HTTP_ADDR=$(grep -m1 ' ready: ' "$TMP/server.out" | sed -n 's/.* http=\([^ ]*\).*/\1/p')
[ -n "$HTTP_ADDR" ] || die "no http= in the ready line"

echo "== soak: DURATION=${DURATION}s CONNS=$CONNS SOURCES=$SOURCES SETTLE=${SETTLE}s" >&2
status=0
"$PY" scripts/soak.py --ws "$WS_ADDR" --control "$CONTROL_ADDR" --http "$HTTP_ADDR" \
    --pid "$SERVER_PID" --secret "$SECRET" --duration "$DURATION" --conns "$CONNS" \
    --sources "$SOURCES" --settle "$SETTLE" --out "$JSON" || status=$?
kill -0 "$SERVER_PID" 2>/dev/null || { echo "soak: the server died; its stderr:" >&2; tail -20 "$TMP/server.err" >&2; status=1; }
[ -f "$JSON" ] && echo "== $JSON" >&2
exit "$status"
