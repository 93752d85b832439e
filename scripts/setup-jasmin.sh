#!/usr/bin/env bash
# Installs the third-party SMSC peer of the integration tests: Jasmin SMS Gateway 0.11.0 in its
# own venv (.venv-jasmin, so its pinned Twisted/txAMQP never meet the project's venv), plus the
# Redis and RabbitMQ servers it needs, from Debian. The tests start every daemon themselves on
# loopback (tests/jasmin_peer.py); nothing here starts a service.
#
# Pinned to 0.11.0: 0.11.1 never sends delivery receipts (jookies/jasmin#1236).
# Idempotent: a second run only checks and returns.
# Without root, missing system packages are reported and the Jasmin tests skip; with CI=true
# anything missing is an error, so CI cannot pass by skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

JASMIN_VERSION=0.11.0
VENV=.venv-jasmin
PY=${PYTHON:-python3}
DEBIAN_PACKAGES=(redis-server rabbitmq-server)
# What tests/jasmin_peer.py runs: the daemons by hand, not through the init scripts.
REQUIRED_BINARIES=(/usr/bin/redis-server /usr/lib/rabbitmq/bin/rabbitmq-server /usr/bin/epmd)

missing_binaries() {
  local binary
  for binary in "${REQUIRED_BINARIES[@]}"; do
    [ -x "$binary" ] || echo "$binary"
  done
}

install_system_packages() {
  if [ -z "$(missing_binaries)" ]; then
    return 0
  fi
  if [ "$(id -u)" -eq 0 ]; then
    echo "setup-jasmin: installing ${DEBIAN_PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q "${DEBIAN_PACKAGES[@]}" >/dev/null
  fi
  local still_missing
  still_missing=$(missing_binaries)
  if [ -n "$still_missing" ]; then
    echo "setup-jasmin: missing $(echo "$still_missing" | tr '\n' ' ')" >&2
    echo "setup-jasmin: install them with: sudo apt-get install ${DEBIAN_PACKAGES[*]}" >&2
    if [ "${CI:-}" = "true" ]; then
      echo "setup-jasmin: CI=true, so this is an error" >&2
      exit 1
    fi
    echo "setup-jasmin: the Jasmin integration tests will be skipped" >&2
    exit 0
  fi
}

jasmin_installed() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$JASMIN_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("jasmin") == sys.argv[1] else 1)
EOF
}

install_jasmin() {
  if jasmin_installed; then
    return 0
  fi
  echo "setup-jasmin: installing jasmin==$JASMIN_VERSION into $VENV"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q "jasmin==$JASMIN_VERSION"
}

# The wheel lacks the AMQP 0-9-1 spec Jasmin loads at start; txAMQP ships the same spec
# (stripped of documentation). The harness points jasmin.cfg [amqp-broker] spec at this copy.
install_amqp_spec() {
  local target="$VENV/etc/jasmin/resource/amqp0-9-1.xml"
  if [ -s "$target" ]; then
    return 0
  fi
  local source
  source=$("$VENV/bin/python" -c \
    'import os, txamqp; print(os.path.join(os.path.dirname(txamqp.__file__), "specs", "standard", "amqp0-9-1.stripped.xml"))')
  mkdir -p "$(dirname "$target")"
  cp "$source" "$target"
}

install_system_packages
install_jasmin
install_amqp_spec
echo "setup-jasmin: ready (jasmin $JASMIN_VERSION in $VENV)"
