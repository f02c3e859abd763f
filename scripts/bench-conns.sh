#!/usr/bin/env bash
# bench-conns.sh — connection benchmark of wspush: handshake rate, handshake latency,
# failures by cause, server CPU per handshake (user + system CPU time of the server
# during the connect phase / handshakes completed) and server memory per connection
# (user space from VmRSS, kernel from /proc/net/sockstat).
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
#   RATE=3000        target handshakes per second (all processes together; 0 = as fast
#                    as possible)
#   TOKEN=           HS256, RS256 or ES256: every connection presents a token of that kind
#                    (minted once with PyJWT; keys made here), to measure verification cost
#   QUERY=           query string for every upgrade request, e.g. '?rooms=all' (the load
#                    generator appends user=c<i> to it)
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
QUERY=${QUERY:-}
case "$QUERY" in
    '' | '?'*) ;;
    *) QUERY="?$QUERY" ;;
esac

BENCH_NAME=bench-conns
# shellcheck source-path=SCRIPTDIR/..
source scripts/bench-lib.sh

bench_build "release build failed"
bench_require_exec "$SERVER_BIN" "server binary"
bench_setup

if [ -n "${TOKEN:-}" ]; then
    PY=$(./scripts/pyvenv.sh)
    KEYDIR=$TMP/keys
    mkdir -p "$KEYDIR"
    # shellcheck disable=SC2016 # the Python program is single-quoted on purpose
    TOKEN_VALUE=$("$PY" -c '
import sys, time, jwt
from cryptography.hazmat.primitives.asymmetric import rsa, ec
from cryptography.hazmat.primitives import serialization as s
alg, d = sys.argv[1], sys.argv[2]
claims = {"sub": "bench", "exp": int(time.time()) + 3600, "rooms": ["all"]}
if alg == "HS256":
    secret = "bench-secret-bench-secret-bench-secret-0123"
    open(f"{d}/secret", "w").write(secret)
    print(jwt.encode(claims, secret, algorithm=alg))
else:
    k = rsa.generate_private_key(65537, 2048) if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())
    open(f"{d}/public.pem", "wb").write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    print(jwt.encode(claims, k, algorithm=alg))
' "$TOKEN" "$KEYDIR")
    case "$TOKEN" in
        HS256) SERVER_ARGS="$SERVER_ARGS --jwt-secret-file $KEYDIR/secret" ;;
        *) SERVER_ARGS="$SERVER_ARGS --jwt-public-key $KEYDIR/public.pem" ;;
    esac
    case "$QUERY" in
        '') QUERY="?token=$TOKEN_VALUE" ;;
        *) QUERY="$QUERY&token=$TOKEN_VALUE" ;;
    esac
fi


mkdir -p bench-results
STAMP=$(date +%Y%m%d-%H%M%S)
JSON=bench-results/conns-$STAMP.json

# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
start_server "$SERVER_BIN" --threads "$THREADS" $SERVER_ARGS

echo "== wspush-load conns: $CONNS connections at $RATE/s over $PROCS processes, hold $HOLD s, query '${QUERY%%token=*}${TOKEN:+token=<$TOKEN>}'" >&2
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
rc=0
"$LOAD_BIN" conns --url "ws://$WS_ADDR/ws$QUERY" -n "$CONNS" --rate "$RATE" --hold "$HOLD" \
    --procs "$PROCS" --src "$SRC" --pid "$SERVER_PID" --duration "$DURATION" --json \
    >"$JSON" || rc=$?
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
stop_server

if [ "$rc" -eq 2 ] || ! jq -e . "$JSON" >/dev/null 2>&1; then
    die "the load run did not complete (exit $rc); see the messages above"
fi

echo
echo "conns benchmark ($CONNS connections, $PROCS load processes, query '${QUERY%%token=*}${TOKEN:+token=<$TOKEN>}', server $SERVER_BIN --threads $THREADS)"
jq -r --arg load_before "$LOAD_BEFORE" --arg load_after "$LOAD_AFTER" '
  def f(d): if . == null then "n/a" else (. * pow(10; d) | round) / pow(10; d) | tostring end;
  [
    ["connections opened", "\(.connections.opened) / \(.connections.requested)"],
    ["failed / dropped", "\(.connections.failed) / \(.connections.dropped)"],
    ["handshakes/s", (.connections.handshakes_per_s | f(0))],
    ["handshake p50 ms", (.connections.handshake.p50_ms | f(3))],
    ["handshake p99 ms", (.connections.handshake.p99_ms | f(3))],
    ["handshake max ms", (.connections.handshake.max_ms | f(3))],
    ["server CPU s (connect phase)", (.server.cpu_seconds | f(3))],
    ["server CPU us/handshake", (.server.cpu_us_per_handshake | f(1))],
    ["load average before / after", "\($load_before) / \($load_after)"],
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
