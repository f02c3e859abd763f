#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this).
# Installs what the tests need (redis-cli from Debian's redis-tools, redis-server from
# redis-server, node, npm and chromium from Debian, the e2e npm packages), then runs the
# format and lint gates, each criterion benchmark once in test mode, and every unit /
# property / integration test.
set -euo pipefail
cd "$(dirname "$0")/.."

install_debian_package() {
  echo "test.sh: installing $1 ($2)"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1"
  fi
}
if ! command -v curl >/dev/null 2>&1; then
  install_debian_package curl "tests/http_api.rs drives the HTTP API with curl"
fi
if ! command -v redis-cli >/dev/null 2>&1; then
  install_debian_package redis-tools "redis-cli is used by the control-port tests"
fi
if ! command -v redis-server >/dev/null 2>&1; then
  install_debian_package redis-server "the cluster tests run real Redis instances"
fi
if ! command -v node >/dev/null 2>&1; then
  install_debian_package nodejs "the browser client's tests run under node --test"
fi
if ! command -v npm >/dev/null 2>&1; then
  install_debian_package npm "the client's end-to-end test installs ws where node has no WebSocket"
fi
if [ ! -x /usr/bin/chromium ]; then
  install_debian_package chromium "tests/browser.rs runs the demo page in headless Chromium"
fi
# The client's end-to-end test (tests/js_client.rs) uses node's own WebSocket where it
# has one, else the `ws` package pinned in clients/js/e2e/package-lock.json; the
# browser test (tests/browser.rs) drives Debian's /usr/bin/chromium with playwright-core,
# which must never download a browser of its own.
(cd clients/js/e2e && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
# Mainstream Redis client libraries (tests/redis_clients.rs): ioredis and node-redis,
# pinned in tests/clients/package-lock.json; redis-py comes with scripts/pyvenv.sh.
(cd tests/clients && npm ci --no-audit --no-fund --silent)

# tests/metrics.rs checks /metrics with promtool from Debian's prometheus package: only
# the binary is extracted under target/ (the package's service is never installed or
# started). WSPUSH_TEST_PROMTOOL may name another promtool.
if [ -z "${WSPUSH_TEST_PROMTOOL:-}" ] && [ ! -x target/promtool/usr/bin/promtool ] \
    && ! command -v promtool >/dev/null 2>&1; then
  echo "test.sh: extracting promtool from Debian's prometheus package into target/promtool"
  rm -rf target/promtool && mkdir -p target/promtool
  (cd target/promtool && { apt-get download prometheus >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get download prometheus; }; } \
    && dpkg-deb -x prometheus_*.deb . && rm -f prometheus_*.deb)
fi

# Tokens in the authentication tests are minted by an independent implementation:
# PyJWT (with `cryptography` for RS256/ES256), in a venv kept under target/; the same
# venv has `websockets`, the independent permessage-deflate client of
# tests/compression.rs.
WSPUSH_TEST_PYTHON=$(./scripts/pyvenv.sh)
export WSPUSH_TEST_PYTHON

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# Each criterion benchmark once (test mode): they must still build and run.
cargo test --benches
# The handshake floor server that bench-conns.sh measures wspush against
# (benches/floor, a crate of its own): lint-clean, and its tests run below.
cargo fmt --manifest-path benches/floor/Cargo.toml -- --check
cargo clippy --manifest-path benches/floor/Cargo.toml --all-targets -- -D warnings
# Unit, property and integration tests; the summary line below adds them up.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --lib --bins --tests 2>&1 | tee "$log"
cargo test --manifest-path benches/floor/Cargo.toml 2>&1 | tee -a "$log"
# The browser client (clients/js): its pure parts and the whole client against a
# scripted WebSocket, under node's own test runner (no npm packages).
(cd clients/js && node --test) 2>&1 | tee -a "$log" | tail -n 9
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
