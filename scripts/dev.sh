#!/usr/bin/env bash
# Set-up and entry points for people and CI.
#   scripts/dev.sh demo   create .venv, install mcdaemon, run `mcdaemon demo`
#   scripts/dev.sh test   create .venv, install with test extras (and, as root, the system
#                         packages the SMSC peer and the PostgreSQL tests need), run ruff,
#                         mypy and pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e ".$1"
}

case "${1:-}" in
  demo)
    shift
    ensure_venv ""
    exec "$VENV/bin/mcdaemon" demo "$@"
    ;;
  test)
    shift
    ensure_venv "[test]"
    bash scripts/setup-jasmin.sh
    bash scripts/setup-postgresql.sh
    "$VENV/bin/ruff" check .
    "$VENV/bin/mypy" mcdaemon
    exec "$VENV/bin/pytest" -q "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh demo|test" >&2
    exit 2
    ;;
esac
