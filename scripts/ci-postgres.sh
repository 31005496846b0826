#!/usr/bin/env bash
# Installs and starts PostgreSQL for the platform's storage tests on Debian 12, as root: the
# distribution's cluster, reached over its unix socket (/var/run/postgresql) by a superuser role
# `root` (peer authentication: the tests connect as the user running them). Idempotent, quiet
# (details in $LOG). Fails when PostgreSQL cannot be made to answer: CI must run those tests.
set -uo pipefail

LOG=${LOG:-/tmp/heron-ci-postgres.log}
SOCKET_DIR=/var/run/postgresql
: >"$LOG"
say() { echo "ci-postgres: $*" >&2; }
answers() { timeout 10 psql -h "$SOCKET_DIR" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1 \
            || timeout 10 runuser -u postgres -- psql -h "$SOCKET_DIR" -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; }

if [ "$(id -u)" != 0 ]; then say "not root: not installing; the storage tests use whatever server answers"; exit 0; fi

# 1. Packages (no-op when present). Only refresh the package lists if the install needs it.
if ! command -v pg_ctlcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 300 apt-get install -y -q --no-install-recommends postgresql >>"$LOG" 2>&1; then
        timeout 180 apt-get update -q >>"$LOG" 2>&1
        timeout 300 apt-get install -y -q --no-install-recommends postgresql >>"$LOG" 2>&1 \
            || { say "apt-get install postgresql failed (see $LOG)"; exit 1; }
    fi
    say "installed postgresql"
fi

# 2. A cluster, started (the package creates one; a minimal image may not have run its hooks).
if ! answers; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -1)
    if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
        pg_createcluster "$version" main >>"$LOG" 2>&1 || { say "pg_createcluster failed (see $LOG)"; exit 1; }
    fi
    read -r ver name _ < <(pg_lsclusters -h | head -1)
    pg_ctlcluster "$ver" "$name" start >>"$LOG" 2>&1 || service postgresql start >>"$LOG" 2>&1
    for _ in $(seq 1 30); do answers && break; sleep 1; done
    answers || { say "PostgreSQL does not answer on $SOCKET_DIR (see $LOG)"; exit 1; }
    say "started cluster $ver/$name"
fi

# 3. The superuser role the tests connect as.
if ! runuser -u postgres -- psql -h "$SOCKET_DIR" -d postgres -Atqc \
        "SELECT 1 FROM pg_roles WHERE rolname = 'root'" 2>>"$LOG" | grep -q 1; then
    runuser -u postgres -- psql -h "$SOCKET_DIR" -d postgres -qc "CREATE ROLE root SUPERUSER LOGIN" >>"$LOG" 2>&1 \
        || { say "cannot create role root (see $LOG)"; exit 1; }
    say "created superuser role root"
fi
psql -h "$SOCKET_DIR" -U root -d postgres -Atqc 'SELECT 1' >/dev/null 2>>"$LOG" \
    || { say "root cannot connect (see $LOG)"; exit 1; }
say "PostgreSQL ready on $SOCKET_DIR"
