#!/usr/bin/env bash
# Installs the PostgreSQL server the shared-store tests start themselves (tests/pg_server.py:
# initdb and pg_ctl into a temporary directory, on a free loopback port, as an unprivileged
# user). From Debian's `postgresql` package; no cluster is created and no service started here.
# Idempotent. Without root and without the package the PostgreSQL tests skip, saying so; with
# CI=true a missing server is an error, so CI cannot pass by skipping them.
set -euo pipefail

installed() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if installed; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  echo "setup-postgresql: installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends postgresql >/dev/null
  # the package's own cluster and service are not what the tests use
  if command -v pg_lsclusters >/dev/null && command -v pg_dropcluster >/dev/null; then
    pg_lsclusters -h 2>/dev/null | while read -r version name _; do
      pg_dropcluster --stop "$version" "$name" || true
    done
  fi
fi
if ! installed; then
  echo "setup-postgresql: no PostgreSQL server (/usr/lib/postgresql/*/bin/initdb)" >&2
  echo "setup-postgresql: install it with: sudo apt-get install postgresql" >&2
  if [ "${CI:-}" = "true" ]; then
    echo "setup-postgresql: CI=true, so this is an error" >&2
    exit 1
  fi
  echo "setup-postgresql: the PostgreSQL tests will be skipped" >&2
fi
