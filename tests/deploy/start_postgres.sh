#!/usr/bin/env bash
# A local PostgreSQL server for the deployment tests (tests/deploy/test_postgres.py), as root on
# Debian: installs `postgresql` when absent, starts its cluster, creates the role and database,
# and exports the DAGSTER_PG_* settings that docker/dagster.yaml reads. Idempotent: a second run
# reuses the server, the role and the database. Source it (`. tests/deploy/start_postgres.sh`)
# so the exports reach the test run.
set -euo pipefail

export DAGSTER_PG_HOST="${DAGSTER_PG_HOST:-127.0.0.1}"
export DAGSTER_PG_PORT="${DAGSTER_PG_PORT:-5432}"
export DAGSTER_PG_USER="${DAGSTER_PG_USER:-matter}"
export DAGSTER_PG_DB="${DAGSTER_PG_DB:-matter}"
# A fresh random password per CI run unless one is given: nothing secret lives in the repository.
export DAGSTER_PG_PASSWORD="${DAGSTER_PG_PASSWORD:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')}"

if ! command -v pg_ctlcluster >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
fi

pg_version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$pg_version main"; then
    pg_createcluster "$pg_version" main --port "$DAGSTER_PG_PORT"
fi
if ! pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main" {print $4}' | grep -qx online; then
    pg_ctlcluster "$pg_version" main start
fi

runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -p "$DAGSTER_PG_PORT" \
    -v role="$DAGSTER_PG_USER" -v password="$DAGSTER_PG_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" WITH LOGIN CREATEDB PASSWORD :'password';
SQL
runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -p "$DAGSTER_PG_PORT" \
    -v db="$DAGSTER_PG_DB" -v role="$DAGSTER_PG_USER" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
echo "PostgreSQL $pg_version on $DAGSTER_PG_HOST:$DAGSTER_PG_PORT, database $DAGSTER_PG_DB, role $DAGSTER_PG_USER"
