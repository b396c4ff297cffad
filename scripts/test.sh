#!/usr/bin/env bash
# One command runs the tests: make sure PostgreSQL and MariaDB answer
# (scripts/pg-local.sh, scripts/mariadb-local.sh), point the tests at them and
# run cargo test. Extra arguments go to cargo test:
#   scripts/test.sh
#   scripts/test.sh copy_ -- --nocapture
#   STRIDE_TEST_PG_URL=postgres://postgres:stride@127.0.0.1:5433/postgres scripts/test.sh
#   STRIDE_TEST_MYSQL_URL=mysql://root:stride@127.0.0.1:3307/ scripts/test.sh
# Tests create (and drop) their own databases from these base URLs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${STRIDE_TEST_PG_URL:-}" ]; then
    STRIDE_TEST_PG_URL=$(scripts/pg-local.sh)
    export STRIDE_TEST_PG_URL
fi
echo "test: STRIDE_TEST_PG_URL=$STRIDE_TEST_PG_URL" >&2

if [ -z "${STRIDE_TEST_MYSQL_URL:-}" ]; then
    STRIDE_TEST_MYSQL_URL=$(scripts/mariadb-local.sh)
    export STRIDE_TEST_MYSQL_URL
fi
echo "test: STRIDE_TEST_MYSQL_URL=$STRIDE_TEST_MYSQL_URL" >&2

# The integration tests mostly wait on servers (sleeps, timeouts, other
# processes), so four at a time even on two cores: 444 s instead of 740 s for
# tests/it on the 2-core machine of docs/PERFORMANCE.md. RUST_TEST_THREADS
# overrides it.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}

# --all-targets covers lib, bins, tests, examples and benches (not doc tests).
exec cargo test --all-targets "$@"
