#!/usr/bin/env bash
# bench-upgrade.sh — zero-downtime upgrade benchmark of wspush (issue 13): the longest
# pause in delivery while CONNS connections are handed over to a new process, the
# freeze per handed-over connection, the peak memory of both processes, and checks
# that nothing was lost, duplicated or reconnected.
#
# Builds the release binary, then runs scripts/bench-upgrade.py, which starts the
# server itself on free loopback ports, opens the connections (PROBES of them in room
# "probe", the rest idle in 100 rooms), publishes to "probe" at RATE messages/s on the
# control port, sends SIGUSR2 (the new process is the same binary), measures, checks
# and stops both processes by their PIDs. Bounded: DURATION seconds at most. Prints a
# table and writes bench-results/upgrade-<time>.json. Only ever talks to 127.0.0.1.
#
# Environment (defaults fit a 2-core machine with 20,000 fds per process):
#   CONNS=19000      connections to hand over (one client process holds them all)
#   PROBES=50        of them, in the probe room (every one gets every message)
#   RATE=200         probe messages per second during the run
#   THREADS=2        server --threads
#   BEFORE=2 AFTER=3 seconds of steady publishing before the upgrade / after it ends
#   DURATION=300     hard bound on the run, seconds
#   SERVER_BIN=target/release/wspush
#   SERVER_ARGS=     extra server flags
#   SKIP_BUILD=      set to 1 to use the binary already built
# Exit status: 0 every check passed, 1 a check failed, 2 could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "bench-upgrade: $*" >&2; exit 2; }

if [ -z "${SKIP_BUILD:-}" ]; then
    echo "== cargo build --release --bin wspush" >&2
    cargo build --release --bin wspush >&2 || die "release build failed"
fi
SERVER_BIN=${SERVER_BIN:-target/release/wspush}
[ -x "$SERVER_BIN" ] || die "no server binary at $SERVER_BIN"
command -v python3 >/dev/null || die "python3 is needed"
command -v jq >/dev/null || die "jq is needed to print the table (apt-get install jq)"
# The client holds every connection; the server processes inherit the limit.
ulimit -n "$(ulimit -Hn)"
CONNS=${CONNS:-19000}
[ "$(ulimit -n)" -gt $((CONNS + 100)) ] || die "CONNS=$CONNS needs more than $(ulimit -n) descriptors"

mkdir -p bench-results
OUT=bench-results/upgrade-$(date +%Y%m%d-%H%M%S).json
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
status=0
SERVER_BIN=$SERVER_BIN CONNS=$CONNS SERVER_LOG=$LOG timeout "${DURATION:-300}" \
    python3 scripts/bench-upgrade.py >"$OUT" || status=$?
if [ ! -s "$OUT" ]; then
    echo "bench-upgrade: no result (status $status); server log tail:" >&2
    tail -20 "$LOG" >&2
    exit 2
fi
jq -r '
  "connections handed over      \(.handed_over) of \(.connections)",
  "probe messages published     \(.published) at \(.publish_rate)/s",
  "longest pause in delivery    \(.longest_pause_ms) ms",
  "freeze (old process)         \(.freeze_ms) ms",
  "upgrade total (spawn..exit)  \(.upgrade_total_ms) ms",
  "freeze per connection        \(.per_connection_us) µs",
  "extrapolated pause at 1M     \(.extrapolated_pause_1M_ms) ms",
  "peak RSS old / new / both    \(.peak_rss_old_mib) / \(.peak_rss_new_mib) / \(.peak_rss_both_mib) MiB",
  "lost / duplicated / reconn.  \(.lost) / \(.duplicated) / \(.reconnects)",
  (if (.problems | length) > 0 then "PROBLEMS: \(.problems | join("; "))" else "checks: all passed" end)
' "$OUT"
echo "== $OUT" >&2
exit "$status"
