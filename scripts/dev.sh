#!/usr/bin/env bash
# Set-up and entry points for people and CI.
#   scripts/dev.sh demo   create .venv, install mcdaemon, run `mcdaemon demo`
#   scripts/dev.sh test   create .venv, install with test extras (and, as root, the system
#                         packages the SMSC peer and the compiled build need), run ruff,
#                         mypy and pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv

# The hot path compiles with mypyc where a C compiler and the Python headers are found
# (setup.py); without them mcdaemon installs as plain Python, which works the same, slower.
have_build_tools() {
  command -v cc >/dev/null 2>&1 && "$PY" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}

# For `test`: as root on Debian, install them, so that the suite runs on the compiled code;
# and where they are, insist on it (tests/conftest.py), so that a failed build cannot pass
# unnoticed as plain Python.
ensure_build_tools() {
  if ! have_build_tools && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "dev.sh: installing gcc and python3-dev, to compile the hot path"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q gcc python3-dev >/dev/null
  fi
  if have_build_tools; then
    export MCDAEMON_EXPECT_COMPILED=1
  fi
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e ".$1"
  "$VENV/bin/mcdaemon" --version  # says whether the hot path was compiled
}

case "${1:-}" in
  demo)
    shift
    ensure_venv ""
    exec "$VENV/bin/mcdaemon" demo "$@"
    ;;
  test)
    shift
    ensure_build_tools
    ensure_venv "[test]"
    bash scripts/setup-jasmin.sh
    "$VENV/bin/ruff" check .
    "$VENV/bin/mypy" mcdaemon
    exec "$VENV/bin/pytest" -q "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh demo|test" >&2
    exit 2
    ;;
esac
