# bench-lib.sh — shared parts of bench-conns.sh, bench-fanout.sh and bench-compare.sh.
# shellcheck shell=bash
# It is sourced, not run: each script sets BENCH_NAME (the prefix of its error messages),
# changes to the repository root and then does `source scripts/bench-lib.sh`.
#
# Provides:
#   LOAD_BIN                  the load generator, target/release/wspush-load
#   die MSG...                "BENCH_NAME: MSG" on stderr, exit 2
#   bench_build FAIL_MSG      cargo build --release --bins unless SKIP_BUILD is set
#   bench_require_exec PATH WHAT   die "no WHAT at PATH" unless PATH is executable
#   bench_setup               checks LOAD_BIN and jq, raises `ulimit -n` to the hard limit,
#                             makes the scratch directory TMP and installs the EXIT trap
#                             (stop_server, remove TMP)
#   start_server BIN ARGS...  starts BIN ARGS on free loopback ports, waits up to 15 s for
#                             its ` ready: ` line; sets SERVER_PID, WS_ADDR, CONTROL_ADDR
#   stop_server               SIGTERM to SERVER_PID (SIGKILL after 10 s), waits for it
#   BENCH_SERVER_LABEL        how start_server names the server in its messages: "server"
#                             by default; set it empty to name it by its binary path
# Only the server started here is ever stopped, by its PID.

LOAD_BIN=target/release/wspush-load
BENCH_SERVER_LABEL=server
SERVER_PID=

die() { echo "$BENCH_NAME: $*" >&2; exit 2; }

# bench_build FAIL_MSG — the release build of this crate, unless SKIP_BUILD is set.
bench_build() {
    if [ -z "${SKIP_BUILD:-}" ]; then
        echo "== cargo build --release --bins" >&2
        cargo build --release --bins >&2 || die "$1"
    fi
}

# bench_require_exec PATH WHAT
bench_require_exec() {
    [ -x "$1" ] || die "no $2 at $1"
}

bench_setup() {
    bench_require_exec "$LOAD_BIN" "load generator"
    command -v jq >/dev/null || die "jq is needed to print the table (apt-get install jq)"

    # The server and the load processes inherit the raised descriptor limit.
    ulimit -n "$(ulimit -Hn)"

    TMP=$(mktemp -d)
    SERVER_PID=
    trap 'stop_server; rm -rf "$TMP"' EXIT
}

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "$BENCH_NAME: server $SERVER_PID ignored SIGTERM for 10 s, sending SIGKILL" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}

# start_server BIN ARGS... — sets SERVER_PID, WS_ADDR, CONTROL_ADDR.
start_server() {
    local label=${BENCH_SERVER_LABEL:-$1}
    "$@" --listen 127.0.0.1:0 --control 127.0.0.1:0 >"$TMP/server.out" 2>"$TMP/server.err" &
    SERVER_PID=$!
    local line=
    for _ in $(seq 1 150); do
        line=$(grep -m1 ' ready: ' "$TMP/server.out" 2>/dev/null || true)
        [ -n "$line" ] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "$BENCH_NAME: $label exited before its ready line; its stderr:" >&2
            cat "$TMP/server.err" >&2
            SERVER_PID=
            exit 2
        fi
        sleep 0.1
    done
    [ -n "$line" ] || die "$label printed no ready line within 15 s (stdout: $(head -c 300 "$TMP/server.out"))"
    WS_ADDR=$(sed -n 's/.* ws=\([^ ]*\).*/\1/p' <<<"$line" | sed 's/^0\.0\.0\.0:/127.0.0.1:/')
    CONTROL_ADDR=$(sed -n 's/.* control=\([^ ]*\).*/\1/p' <<<"$line" | sed 's/^0\.0\.0\.0:/127.0.0.1:/')
    if [ -z "$WS_ADDR" ] || [ -z "$CONTROL_ADDR" ]; then
        die "cannot parse ws=/control= from: $line"
    fi
    echo "== $label pid $SERVER_PID ready: ws=$WS_ADDR control=$CONTROL_ADDR" >&2
}
