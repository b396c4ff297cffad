#!/usr/bin/env bash
# The benchmark of issue 13: stride between PostgreSQL and SQLite against the
# pipes a user would write instead, measured in the same run.
#
#   scripts/bench-engines.sh [ROWS]          # default 1,000,000 rows
#   ROUNDS=5 scripts/bench-engines.sh 200000
#
# Seeds the covid_cases-like table of scripts/bench.sh (scripts/bench/table.sql,
# seed.sql) in a new PostgreSQL database, then runs ROUNDS rounds of:
#   pg -> sqlite pipe    psql -c "\copy (SELECT ...) TO STDOUT (FORMAT csv)" | sqlite3 out.db ".import --csv /dev/stdin covid_cases"
#                        into the table stride creates (same declared types), in one transaction
#   stride pg -> sqlite  4 partitions, truncate mode, into the same SQLite table
#   sqlite -> pg pipe    sqlite3 -csv src.db "SELECT ..." | psql -c "\copy covid_cases FROM STDIN (FORMAT csv)"
#                        into an empty PostgreSQL table with the source's types and primary key
#   stride sqlite -> pg  4 partitions, truncate mode, into that table
# After every run the target must hold ROWS rows, or the script stops with exit 1.
# The CSV pipes are what a user writes, not an equal: they turn NULL into ''
# in SQLite and cannot tell '' from NULL coming back; stride keeps both.
#
# Prints, as markdown, each configuration's median wall time, its ratio to the
# pipe of the same direction in the same round (median over the rounds), and
# stride's peak memory (maximum resident set size, GNU /usr/bin/time -v; the
# largest over the rounds).
#
# Env: ROUNDS (default 3); BENCH_URL (a URL to any database on the server; default:
# the one scripts/pg-local.sh finds or starts); STRIDE_BIN (default
# target/release/stride, built first); BENCH_KEEP=1 keeps the databases and files.
set -euo pipefail
cd "$(dirname "$0")/.."

bench_name=bench-engines
# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh

rows=${1:-1000000}
rows=${rows//[,_]/}
rounds=${ROUNDS:-3}
[[ $rows =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive integer, not '${1:-}'"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
command -v psql >/dev/null || die "psql not found (scripts/pg-local.sh installs it with the server)"
command -v sqlite3 >/dev/null || die "sqlite3 not found (apt-get install sqlite3): the pipes need it"

find_stride
find_time

base=${BENCH_URL:-}
[ -n "$base" ] || base=$(scripts/pg-local.sh)


prefix="stride_bench_engines_$$"
src_url=$(url_with_db "$base" "${prefix}_src")
dst_url=$(url_with_db "$base" "${prefix}_dst")
tmp=$(mktemp -d "${TMPDIR:-/tmp}/stride-bench-engines.XXXXXX")
cleanup() {
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept: $tmp, databases ${prefix}_src and ${prefix}_dst"
        return
    fi
    sql "$base" -c "DROP DATABASE IF EXISTS ${prefix}_src" -c "DROP DATABASE IF EXISTS ${prefix}_dst" || true
    rm -rf "$tmp"
}
trap cleanup EXIT

log "seeding $rows rows"
sql "$base" -c "CREATE DATABASE ${prefix}_src" -c "CREATE DATABASE ${prefix}_dst"
sql "$src_url" -f scripts/bench/table.sql
sql "$src_url" -v rows="$rows" -f scripts/bench/seed.sql
sql "$src_url" -c "ALTER TABLE public.covid_cases ADD PRIMARY KEY (id)" -c "ANALYZE public.covid_cases"
sql "$dst_url" -f scripts/bench/table.sql
sql "$dst_url" -c "ALTER TABLE public.covid_cases ADD PRIMARY KEY (id)"

columns="id, state, district, confirmed, recovered, deceased, other, tested, date, updated_at, ratio, note"
cat >"$tmp/pg-to-sqlite.toml" <<EOF
[source]
url = "$src_url"
table = "public.covid_cases"
[partition]
column = "id"
count = 4
[target]
url = "sqlite://$tmp/out.db"
table = "covid_cases"
mode = "truncate"
EOF
cat >"$tmp/sqlite-to-pg.toml" <<EOF
[source]
url = "sqlite://$tmp/src.db"
table = "covid_cases"
[partition]
column = "id"
count = 4
[target]
url = "$dst_url"
table = "public.covid_cases"
mode = "truncate"
EOF

# The SQLite tables: stride creates out.db's (the pipe then loads into the same
# declared types), and the first stride run fills src.db for the other direction.
log "creating the SQLite files"
"$stride_bin" --quiet run "$tmp/pg-to-sqlite.toml" >/dev/null 2>"$tmp/first.log" || die "stride pg -> sqlite failed: $(tail -3 "$tmp/first.log")"
cp "$tmp/out.db" "$tmp/src.db"
sqlite3 "$tmp/src.db" "DROP TABLE stride_checkpoints; VACUUM"

sqlite_count() { sqlite3 "$tmp/out.db" "SELECT count(*) FROM covid_cases"; }
pg_count() { sql "$dst_url" -At -c "SELECT count(*) FROM public.covid_cases"; }

pipe_to_sqlite() {
    sqlite3 "$tmp/out.db" "DELETE FROM covid_cases"
    sql "$src_url" -c "\\copy (SELECT $columns FROM public.covid_cases) TO STDOUT (FORMAT csv)" |
        sqlite3 "$tmp/out.db" ".import --csv /dev/stdin covid_cases"
}
stride_to_sqlite() { stride_measured stride_to_sqlite "$tmp/pg-to-sqlite.toml"; }
pipe_to_pg() {
    sql "$dst_url" -c "TRUNCATE public.covid_cases"
    sqlite3 -csv "$tmp/src.db" "SELECT $columns FROM covid_cases" |
        sql "$dst_url" -c "\\copy public.covid_cases FROM STDIN (FORMAT csv)"
}
stride_to_pg() { stride_measured stride_to_pg "$tmp/sqlite-to-pg.toml"; }

declare -A times
for round in $(seq 1 "$rounds"); do
    log "round $round of $rounds"
    for config in pipe_to_sqlite stride_to_sqlite pipe_to_pg stride_to_pg; do
        t=$(seconds "$config") || die "$config failed (see $tmp/stride.log)"
        case $config in
        *sqlite) check "$(sqlite_count)" "$config" ;;
        *) check "$(pg_count)" "$config" ;;
        esac
        times[$config]+="$t "
        log "  $config ${t}s"
    done
done


echo "### PostgreSQL and SQLite, $(echo "$rows" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta') rows, $rounds round(s) ($(nproc) cores, $(sqlite3 --version | cut -d' ' -f1) CLI, $(psql --version | awk '{print $3}') psql)"
echo
echo "| configuration | median s | vs the pipe | peak stride MiB |"
echo "|---|---:|---:|---:|"
printf '| pipe psql csv into sqlite3 .import | %.2f | 1.00x | |\n' "$(echo "${times[pipe_to_sqlite]}" | median)"
printf '| stride pg -> sqlite, 4 partitions | %.2f | %.2fx | %s |\n' "$(echo "${times[stride_to_sqlite]}" | median)" "$(ratios stride_to_sqlite pipe_to_sqlite | median)" "$(peak stride_to_sqlite)"
printf '| pipe sqlite3 -csv into psql copy | %.2f | 1.00x | |\n' "$(echo "${times[pipe_to_pg]}" | median)"
printf '| stride sqlite -> pg, 4 partitions | %.2f | %.2fx | %s |\n' "$(echo "${times[stride_to_pg]}" | median)" "$(ratios stride_to_pg pipe_to_pg | median)" "$(peak stride_to_pg)"
