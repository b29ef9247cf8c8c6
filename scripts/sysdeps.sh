#!/usr/bin/env bash
# Installs the system packages the tests and the demo need (PostgreSQL 15 server and client; headless
# Chromium and its WebDriver for the dashboard's browser tests).
set -euo pipefail
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
need=()
[ -x "$PG_BIN/initdb" ] || need+=(postgresql-15)
command -v psql >/dev/null || need+=(postgresql-client-15)
command -v pgbench >/dev/null || need+=(postgresql-client-15)
# `heliosproxy plugin build` for AssemblyScript plugins: asc from npm (make plugin-toolchain)
command -v npm >/dev/null || need+=(nodejs npm)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# The PgBouncer-compatibility proof (tests/integration/test_pgbouncer_compat.py) scrapes the admin console with it.
[ -x /usr/bin/prometheus-pgbouncer-exporter ] || need+=(prometheus-pgbouncer-exporter)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "installing ${need[*]} ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# PostgreSQL clusters already on this machine (Debian's own on 5432 included) are never stopped, started
# or reconfigured: tests, the demo and the bench start throwaway servers of their own on free ports.
