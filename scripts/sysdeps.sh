#!/usr/bin/env bash
# Installs the system packages the tests and the demo need (PostgreSQL 15 server and client).
set -euo pipefail
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
need=()
[ -x "$PG_BIN/initdb" ] || need+=(postgresql-15)
command -v psql >/dev/null || need+=(postgresql-client-15)
command -v pgbench >/dev/null || need+=(postgresql-client-15)
command -v npm >/dev/null || need+=(nodejs npm)  # node-postgres for the TLS client tests (tests/node)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]} ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's package starts a cluster of its own on 5432; we never use it, and it holds the port.
if [ "$(id -u)" = 0 ] && command -v pg_lsclusters >/dev/null; then
  pg_lsclusters -h 2>/dev/null | awk '$4=="online"{print $1, $2}' | while read -r v c; do
    pg_ctlcluster "$v" "$c" stop || true
  done
fi
