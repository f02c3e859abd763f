#!/usr/bin/env bash
# pyvenv.sh — prints the path of a Python that has PyJWT, cryptography, redis-py and
# prometheus_client (whose parser tests/metrics.rs reads /metrics with) and
# websockets (an independent permessage-deflate client for tests/compression.rs),
# creating the venv (target/pyvenv, or $WSPUSH_TEST_PYVENV) on first use. The tests and
# the token benchmark mint tokens with it (an implementation independent of wspush's),
# and the client-library tests talk to the control port with redis-py at its defaults.
# Installs Debian's python3-venv if the machine lacks it (as root, or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVENV=${WSPUSH_TEST_PYVENV:-$PWD/target/pyvenv}
if ! "$PYVENV/bin/python" -c 'import jwt, cryptography, redis, prometheus_client, websockets' >/dev/null 2>&1; then
  echo "pyvenv.sh: creating $PYVENV with PyJWT, cryptography, redis, prometheus_client and websockets" >&2
  if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_=sudo
    $sudo_ apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq python3-venv >&2
  fi
  rm -rf "$PYVENV"
  python3 -m venv "$PYVENV" >&2
  "$PYVENV/bin/pip" install -q 'PyJWT>=2.8' 'cryptography>=41' 'redis>=5' 'prometheus_client>=0.17' 'websockets>=13' >&2
fi
echo "$PYVENV/bin/python"
