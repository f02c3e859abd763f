#!/usr/bin/env bash
# bench-broker.sh — what one Redis instance can carry for a wspush cluster, measured on
# this machine: the memory one channel subscription costs, and how many PUBLISHes per
# second one instance delivers (and its CPU per message) when each message goes to
# NODES subscriber connections (one per wspush node holding the room). These are the
# figures behind the README's capacity table for 10M connections.
#
# Starts its own redis-server on a free loopback port (--save '' --appendonly no),
# NODES subscriber processes (python3, raw RESP, reading and discarding), and
# redis-benchmark as the publisher; stops only what it started, by PID (EXIT trap).
# Bounded: the publish run is MESSAGES messages, every step has a timeout.
#
# Environment:
#   CHANNELS=100000   channels each subscriber subscribes (memory measurement)
#   NODES=3           subscriber connections, i.e. nodes receiving every message
#   MESSAGES=300000 BYTES=100 CLIENTS=8 PIPELINE=16   the redis-benchmark publish run
#   REDIS_BIN=redis-server
# Prints a table and writes bench-results/broker-<time>.json. Exit 0, or 2 if it could
# not run.
set -euo pipefail
cd "$(dirname "$0")/.."

CHANNELS=${CHANNELS:-100000}
NODES=${NODES:-3}
MESSAGES=${MESSAGES:-300000}
BYTES=${BYTES:-100}
CLIENTS=${CLIENTS:-8}
PIPELINE=${PIPELINE:-16}
REDIS_BIN=${REDIS_BIN:-redis-server}

for tool in "$REDIS_BIN" redis-cli redis-benchmark python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench-broker: $tool not found" >&2; exit 2; }
done

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

PORT=$(free_port)
"$REDIS_BIN" --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --protected-mode no --loglevel warning >/dev/null 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
cli() { timeout 30 redis-cli -h 127.0.0.1 -p "$PORT" "$@"; }
for _ in $(seq 100); do cli PING >/dev/null 2>&1 && break; sleep 0.1; done
cli PING >/dev/null || { echo "bench-broker: redis-server did not start" >&2; exit 2; }
echo "== redis-server pid $REDIS_PID on 127.0.0.1:$PORT"

mem() { cli INFO memory | awk -F: '/^used_memory:/{print $2+0}'; }
MEM0=$(mem)

# A subscriber: SUBSCRIBE bench:room:0..CHANNELS-1 (batches of 500, like wspush), then
# read and discard until killed. Prints "ready" once every subscription is confirmed.
SUBSCRIBER=$(cat <<'PY'
import socket, sys
port, channels = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
def cmd(args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out
names = [b"bench:room:%d" % i for i in range(channels)] + [b"bench:hot"]
for i in range(0, len(names), 500):
    s.sendall(cmd([b"SUBSCRIBE"] + names[i:i + 500]))
need = len(names)
buf = b""
while True:
    data = s.recv(1 << 20)
    if not data:
        sys.exit(1)
    if need:
        buf += data
        need -= buf.count(b"$9\r\nsubscribe\r\n")
        buf = buf[-32:]
        if need <= 0:
            need = 0
            print("ready", flush=True)
PY
)
for i in $(seq "$NODES"); do
  fifo=$(mktemp -u)
  mkfifo "$fifo"
  python3 -c "$SUBSCRIBER" "$PORT" "$CHANNELS" >"$fifo" &
  PIDS+=("$!")
  if ! timeout 120 head -n1 "$fifo" | grep -q ready; then
    echo "bench-broker: subscriber $i did not finish subscribing" >&2
    rm -f "$fifo"
    exit 2
  fi
  rm -f "$fifo"
done
MEM1=$(mem)
SUBS=$(( NODES * (CHANNELS + 1) ))
PER_SUB=$(( (MEM1 - MEM0) / SUBS ))
echo "== $SUBS subscriptions: used_memory $MEM0 -> $MEM1 ($PER_SUB bytes each)"

PAYLOAD=$(head -c "$BYTES" /dev/zero | tr '\0' x)
T0=$(cpu_ticks "$REDIS_PID")
S0=$(date +%s.%N)
timeout 300 redis-benchmark -h 127.0.0.1 -p "$PORT" -c "$CLIENTS" -P "$PIPELINE" \
  -n "$MESSAGES" -q PUBLISH bench:hot "$PAYLOAD" >/tmp/bench-broker-$$.txt 2>&1 || true
S1=$(date +%s.%N)
T1=$(cpu_ticks "$REDIS_PID")
RATE=$(awk -v n="$MESSAGES" -v a="$S0" -v b="$S1" 'BEGIN{printf "%.0f", n/(b-a)}')
CPU_US=$(awk -v t=$((T1 - T0)) -v hz="$HZ" -v n="$MESSAGES" 'BEGIN{printf "%.2f", t/hz*1e6/n}')
rm -f /tmp/bench-broker-$$.txt

# Presence writes: what each node sends per changed room (HSET + EXPIRE), pipelined.
T2=$(cpu_ticks "$REDIS_PID")
timeout 300 redis-benchmark -h 127.0.0.1 -p "$PORT" -c "$CLIENTS" -P "$PIPELINE" \
  -n "$MESSAGES" -r 100000 -q HSET bench:presence:__rand_int__ node-0123456789abcdef 42 >/dev/null 2>&1 || true
T3=$(cpu_ticks "$REDIS_PID")
HSET_US=$(awk -v t=$((T3 - T2)) -v hz="$HZ" -v n="$MESSAGES" 'BEGIN{printf "%.2f", t/hz*1e6/n}')
# A subscriber Redis cut for falling behind (client-output-buffer-limit pubsub) would
# make the rate meaningless: all of them must still be there.
STILL=$(cli PUBSUB NUMSUB bench:hot | tail -n1)
if [ "$STILL" != "$NODES" ]; then
  echo "bench-broker: only $STILL of $NODES subscribers left after the run (cut by Redis?)" >&2
  exit 2
fi

printf '\nbroker benchmark (one redis-server, %s subscriber connections, %s-byte payloads)\n' "$NODES" "$BYTES"
printf '%-40s %s\n' "subscriptions" "$SUBS"
printf '%-40s %s\n' "memory per subscription (bytes)" "$PER_SUB"
printf '%-40s %s\n' "PUBLISH/s (each to $NODES connections)" "$RATE"
printf '%-40s %s\n' "Redis CPU per PUBLISH (us)" "$CPU_US"
printf '%-40s %s\n' "Redis CPU per presence HSET (us)" "$HSET_US"

mkdir -p bench-results
OUT=bench-results/broker-$(date +%Y%m%d-%H%M%S).json
printf '{"subscriptions":%s,"bytes_per_subscription":%s,"subscribers_per_message":%s,"payload_bytes":%s,"publish_per_s":%s,"redis_cpu_us_per_publish":%s,"redis_cpu_us_per_hset":%s,"clients":%s,"pipeline":%s}\n' \
  "$SUBS" "$PER_SUB" "$NODES" "$BYTES" "$RATE" "$CPU_US" "$HSET_US" "$CLIENTS" "$PIPELINE" >"$OUT"
echo "results: $OUT"
