#!/usr/bin/env bash
# One command, a real copy: make sure PostgreSQL runs, create and seed
# stride_source (public.covid_cases), reset stride_target, build stride and
# copy with configs/covid_cases.toml, then print the row counts of both sides.
#
#   scripts/quickstart.sh                 # local server (scripts/pg-local.sh)
#   ROWS=100000 scripts/quickstart.sh     # smaller seed (only when seeding)
#   SOURCE_URL=postgres://postgres:stride@127.0.0.1:5433/stride_source \
#   TARGET_URL=postgres://postgres:stride@127.0.0.1:5434/stride_target \
#     scripts/quickstart.sh               # your own databases (docker compose up)
#
# With your own URLs the databases must exist; the source is seeded if it has
# no covid_cases table, and covid_cases is dropped from the target.
set -euo pipefail
cd "$(dirname "$0")/.."

seed_args=()
[ -n "${ROWS:-}" ] && seed_args=(-v "rows=$ROWS")

# psql quietly (no NOTICEs either), stopping at the first error.
sql() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$@"; }

if [ -n "${SOURCE_URL:-}" ] && [ -n "${TARGET_URL:-}" ]; then
    echo "quickstart: using SOURCE_URL=$SOURCE_URL TARGET_URL=$TARGET_URL" >&2
    sql "$TARGET_URL" -c 'DROP TABLE IF EXISTS public.covid_cases'
else
    base=$(scripts/pg-local.sh)          # postgres://postgres@HOST:PORT/postgres
    server=${base%/postgres}
    export SOURCE_URL="$server/stride_source" TARGET_URL="$server/stride_target"
    exists=$(sql "$base" -Atc "SELECT 1 FROM pg_database WHERE datname = 'stride_source'")
    [ -n "$exists" ] || sql "$base" -c 'CREATE DATABASE stride_source'
    sql "$base" -c 'DROP DATABASE IF EXISTS stride_target WITH (FORCE)' -c 'CREATE DATABASE stride_target'
fi

if [ "$(sql "$SOURCE_URL" -Atc "SELECT to_regclass('public.covid_cases') IS NULL")" = t ]; then
    echo "quickstart: seeding covid_cases in the source (${ROWS:-1000000} rows)" >&2
    time sql "$SOURCE_URL" "${seed_args[@]}" -f scripts/seed-covid.sql
fi

cargo build --release
time target/release/stride run configs/covid_cases.toml

for side in SOURCE TARGET; do
    url_var="${side}_URL"
    count=$(sql "${!url_var}" -Atc 'SELECT count(*) FROM public.covid_cases')
    printf '%-6s %s rows in public.covid_cases\n' "$side" "$count"
done
