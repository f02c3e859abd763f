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
#   SERVER_BIN=target/release/wspush   server binary (any server with the same ready line;
#                    benches/floor/target/release/wspush-floor is the handshake floor, the
#                    same system calls and nothing else: `cargo build --release
#                    --manifest-path benches/floor/Cargo.toml`)
#   SERVER_ARGS=     extra server flags
#   SERVER_CPU=      run the server under a CPU quota of this many cores (e.g. 0.25), through
#                    a cgroup of its own (cgroup v2 cpu.max, or v1 cpu.cfs_quota_us; needs
#                    root; removed at exit). The load generator shares this machine's cores
#                    and costs more per connection than the server (on loopback its connect
#                    and send run the server side's TCP receive path too), so without a
#                    quota it, not the server, sets the handshake rate; under a quota the
#                    rate is the server's: quota / server CPU per handshake
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
SERVER_CPU=${SERVER_CPU:-}
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

# The server's CPU quota (SERVER_CPU): a cgroup made for this run, removed at exit.
CPU_CGROUP=
limit_server_cpu() {
    local quota
    quota=$(awk -v c="$SERVER_CPU" 'BEGIN { q = int(c * 10000); if (c !~ /^[0-9]*\.?[0-9]+$/ || q < 100) exit 1; print q }') ||
        die "SERVER_CPU must be a number of cores of at least 0.01, e.g. 0.25 (got '$SERVER_CPU')"
    if grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
        grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control ||
            echo +cpu >/sys/fs/cgroup/cgroup.subtree_control ||
            die "cannot enable the cgroup v2 cpu controller"
        CPU_CGROUP=/sys/fs/cgroup/wspush-bench-$$
        mkdir "$CPU_CGROUP" || die "cannot make $CPU_CGROUP (SERVER_CPU needs root)"
        echo "$quota 10000" >"$CPU_CGROUP/cpu.max"
    elif [ -w /sys/fs/cgroup/cpu ] || [ -d /sys/fs/cgroup/cpu ]; then
        CPU_CGROUP=/sys/fs/cgroup/cpu/wspush-bench-$$
        mkdir "$CPU_CGROUP" || die "cannot make $CPU_CGROUP (SERVER_CPU needs root)"
        echo 10000 >"$CPU_CGROUP/cpu.cfs_period_us"
        echo "$quota" >"$CPU_CGROUP/cpu.cfs_quota_us"
    else
        die "SERVER_CPU needs the cgroup cpu controller (v2 cpu.max or v1 cpu.cfs_quota_us)"
    fi
    # Every thread of the server moves with its process.
    echo "$SERVER_PID" >"$CPU_CGROUP/cgroup.procs" || die "cannot move the server into $CPU_CGROUP"
}
release_cpu_limit() {
    # Empty once the server is gone; a cgroup with no process in it is removed by rmdir.
    if [ -n "$CPU_CGROUP" ]; then
        rmdir "$CPU_CGROUP" 2>/dev/null || echo "$BENCH_NAME: could not remove $CPU_CGROUP" >&2
        CPU_CGROUP=
    fi
}
trap 'stop_server; release_cpu_limit; rm -rf "$TMP"' EXIT

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
[ -n "$SERVER_CPU" ] && limit_server_cpu

echo "== wspush-load conns: $CONNS connections at $RATE/s over $PROCS processes, hold $HOLD s, query '${QUERY%%token=*}${TOKEN:+token=<$TOKEN>}'" >&2
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
rc=0
"$LOAD_BIN" conns --url "ws://$WS_ADDR/ws$QUERY" -n "$CONNS" --rate "$RATE" --hold "$HOLD" \
    --procs "$PROCS" --src "$SRC" --pid "$SERVER_PID" --duration "$DURATION" --json \
    >"$JSON" || rc=$?
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
stop_server
release_cpu_limit

if [ "$rc" -eq 2 ] || ! jq -e . "$JSON" >/dev/null 2>&1; then
    die "the load run did not complete (exit $rc); see the messages above"
fi

echo
echo "conns benchmark ($CONNS connections, $PROCS load processes, query '${QUERY%%token=*}${TOKEN:+token=<$TOKEN>}', server $SERVER_BIN --threads $THREADS${SERVER_CPU:+, server CPU quota $SERVER_CPU cores})"
jq -r --arg load_before "$LOAD_BEFORE" --arg load_after "$LOAD_AFTER" --arg quota "$SERVER_CPU" '
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
    ["load generator CPU us/handshake", (.connections.load_cpu_us_per_handshake | f(1))]
  ]
  + (if $quota == "" then [] else [
    # Near 1: the server used its whole quota, so the rate above is the server'"'"'s.
    ["server CPU used / quota (connect phase)",
      (if .connections.handshakes_per_s > 0 then
         .server.cpu_seconds / ((.connections.opened / .connections.handshakes_per_s) * ($quota | tonumber))
       else null end | f(2))]
  ] end)
  + [
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
