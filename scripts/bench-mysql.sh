#!/usr/bin/env bash
# The benchmark of issue 14: stride between MySQL/MariaDB and PostgreSQL (and
# MySQL to MySQL) against what a user runs instead, measured in the same run.
#
#   scripts/bench-mysql.sh [ROWS]          # default 1,000,000 rows
#   ROUNDS=5 scripts/bench-mysql.sh 200000
#
# Seeds the covid_cases-like table of scripts/bench.sh (scripts/bench/table.sql,
# seed.sql) in a new PostgreSQL database; a first stride run copies it into a new
# MySQL database (the source of the other directions). Then ROUNDS rounds of:
#   mysql -> pg pipe     mariadb --quick --batch -N -e "SELECT ..." | psql -c "\copy t FROM STDIN (NULL 'NULL')"
#   pgloader             mysql:// -> postgresql://, data only, into the same table (when installed)
#   stride mysql -> pg   4 partitions, truncate mode
#   LOAD DATA LOCAL      the same rows from a tab-separated file on disk into MySQL
#                        (the file is written once, before the rounds; only the load is timed)
#   stride pg -> mysql   4 partitions, truncate mode
#   mydumper | myloader  MySQL to MySQL with 4 threads (when installed): dump, then load
#   stride mysql -> mysql  4 partitions, truncate mode
# Every target is emptied before its run (not timed), and must hold ROWS rows
# after it, or the script stops with exit 1.
#
# Prints, as markdown, each configuration's median wall time, its ratio to the
# reference of its direction in the same round (median over the rounds), and
# stride's peak memory (maximum resident set size, GNU /usr/bin/time -v).
#
# Env: ROUNDS (default 3); BENCH_URL (a URL to any PostgreSQL database; default:
# the one scripts/pg-local.sh finds or starts); BENCH_MYSQL_URL (a mysql:// URL
# of a user who may create databases, with no database; default: the one
# scripts/mariadb-local.sh finds or starts); STRIDE_BIN (default
# target/release/stride, built first); BENCH_KEEP=1 keeps the databases and files.
set -euo pipefail
cd "$(dirname "$0")/.."

bench_name=bench-mysql
# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh

rows=${1:-1000000}
rows=${rows//[,_]/}
rounds=${ROUNDS:-3}
[[ $rows =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive integer, not '${1:-}'"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
command -v psql >/dev/null || die "psql not found (scripts/pg-local.sh installs it with the server)"
client=$(command -v mariadb || command -v mysql) || die "the mariadb (or mysql) client is not installed"

find_stride
find_time

base=${BENCH_URL:-}
[ -n "$base" ] || base=$(scripts/pg-local.sh)
my_base=${BENCH_MYSQL_URL:-}
[ -n "$my_base" ] || my_base=$(scripts/mariadb-local.sh)
[[ $my_base =~ ^(mysql|mariadb)://([^:@/]+)(:([^@/]*))?@([^:/]+)(:([0-9]+))?/?$ ]] ||
    die "BENCH_MYSQL_URL must look like mysql://user[:password]@host[:port]/ (no database), not '$my_base'"
my_user=${BASH_REMATCH[2]}
my_password=${BASH_REMATCH[4]}
my_host=${BASH_REMATCH[5]}
my_port=${BASH_REMATCH[7]:-3306}
# The password goes to the clients through the environment, never on a command line.
if [ -n "$my_password" ]; then export MYSQL_PWD=$my_password; fi
my() { "$client" --protocol=tcp -h "$my_host" -P "$my_port" -u "$my_user" "$@"; }

prefix="stride_bench_mysql_$$"
src_url=$(url_with_db "$base" "${prefix}_src")
dst_url=$(url_with_db "$base" "${prefix}_dst")
my_src="${prefix}_msrc"
my_dst="${prefix}_mdst"
my_src_url="${my_base%/}/$my_src"
my_dst_url="${my_base%/}/$my_dst"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/stride-bench-mysql.XXXXXX")
cleanup() {
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept: $tmp, databases ${prefix}_src, ${prefix}_dst, $my_src and $my_dst"
        return
    fi
    sql "$base" -c "DROP DATABASE IF EXISTS ${prefix}_src" -c "DROP DATABASE IF EXISTS ${prefix}_dst" || true
    my -e "DROP DATABASE IF EXISTS $my_src; DROP DATABASE IF EXISTS $my_dst" || true
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
my -e "CREATE DATABASE $my_src CHARACTER SET utf8mb4; CREATE DATABASE $my_dst CHARACTER SET utf8mb4"

columns="id, state, district, confirmed, recovered, deceased, other, tested, date, updated_at, ratio, note"
job() {
    local name=$1 from=$2 from_table=$3 to=$4 to_table=$5
    cat >"$tmp/$name.toml" <<EOF
[source]
url = "$from"
table = "$from_table"
[partition]
column = "id"
count = 4
[target]
url = "$to"
table = "$to_table"
mode = "truncate"
EOF
}
job pg-to-mysql "$src_url" public.covid_cases "$my_dst_url" covid_cases
job mysql-to-pg "$my_src_url" covid_cases "$dst_url" public.covid_cases
job mysql-to-mysql "$my_src_url" covid_cases "$my_dst_url" covid_cases

# The MySQL tables: stride creates the target's, and the source is a copy of it
# in the collation MySQL tables usually have (pgloader 3.6 cannot read the
# exact utf8mb4_nopad_bin that stride gives the tables it creates).
log "creating the MySQL tables"
"$stride_bin" --quiet run "$tmp/pg-to-mysql.toml" >/dev/null 2>"$tmp/first.log" ||
    die "stride pg -> mysql failed: $(tail -3 "$tmp/first.log")"
my -e "CREATE TABLE $my_src.covid_cases LIKE $my_dst.covid_cases;
    ALTER TABLE $my_src.covid_cases CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
    INSERT INTO $my_src.covid_cases SELECT * FROM $my_dst.covid_cases"
# The file LOAD DATA reads: PostgreSQL's text format (tabs, \N for NULL) is what
# LOAD DATA's defaults read.
sql "$src_url" -c "\\copy (SELECT $columns FROM public.covid_cases) TO '$tmp/rows.tsv'"


pipe_to_pg() {
    my --quick --batch -N "$my_src" -e "SELECT $columns FROM covid_cases" |
        sql "$dst_url" -c "\\copy public.covid_cases FROM STDIN (NULL 'NULL')"
}
pgloader_to_pg() {
    cat >"$tmp/pgloader.load" <<EOF
LOAD DATABASE
    FROM mysql://$my_user${my_password:+:$my_password}@$my_host:$my_port/$my_src
    INTO ${dst_url/postgres:\/\//postgresql://}
WITH data only, workers = 4, concurrency = 1
ALTER SCHEMA '$my_src' RENAME TO 'public';
EOF
    pgloader --quiet "$tmp/pgloader.load" >"$tmp/pgloader.log" 2>&1 || {
        tail -5 "$tmp/pgloader.log" >&2
        return 1
    }
}
stride_to_pg() { stride_measured stride_to_pg "$tmp/mysql-to-pg.toml"; }
load_data() {
    my --local-infile=1 "$my_dst" -e "LOAD DATA LOCAL INFILE '$tmp/rows.tsv' INTO TABLE covid_cases ($columns)"
}
stride_to_mysql() { stride_measured stride_to_mysql "$tmp/pg-to-mysql.toml"; }
mydumper_myloader() {
    rm -rf "$tmp/dump"
    mydumper --host "$my_host" --port "$my_port" --user "$my_user" ${my_password:+--password "$my_password"} \
        --database "$my_src" --no-schemas --threads 4 \
        --outputdir "$tmp/dump" >"$tmp/mydumper.log" 2>&1
    myloader --host "$my_host" --port "$my_port" --user "$my_user" ${my_password:+--password "$my_password"} \
        --source-db "$my_src" --database "$my_dst" --threads 4 --directory "$tmp/dump" >"$tmp/myloader.log" 2>&1
}
stride_mysql_to_mysql() { stride_measured stride_mysql_to_mysql "$tmp/mysql-to-mysql.toml"; }

pg_count() { sql "$dst_url" -At -c "SELECT count(*) FROM public.covid_cases"; }
my_count() { my -N "$my_dst" -e "SELECT count(*) FROM covid_cases"; }
empty_pg() { sql "$dst_url" -c "TRUNCATE public.covid_cases"; }
empty_my() { my "$my_dst" -e "TRUNCATE covid_cases"; }

configs=(pipe_to_pg)
if command -v pgloader >/dev/null; then configs+=(pgloader_to_pg); else log "pgloader not installed (apt-get install pgloader): left out"; fi
configs+=(stride_to_pg load_data stride_to_mysql)
if command -v mydumper >/dev/null && command -v myloader >/dev/null; then
    configs+=(mydumper_myloader)
else
    log "mydumper/myloader not installed (apt-get install mydumper): left out"
fi
configs+=(stride_mysql_to_mysql)

declare -A times
for round in $(seq 1 "$rounds"); do
    log "round $round of $rounds"
    for config in "${configs[@]}"; do
        case $config in
        *_pg) empty_pg ;;
        *) empty_my ;;
        esac
        t=$(seconds "$config") || die "$config failed (see $tmp/stride.log)"
        case $config in
        *_pg) check "$(pg_count)" "$config" ;;
        *) check "$(my_count)" "$config" ;;
        esac
        times[$config]+="$t "
        log "  $config ${t}s"
    done
done

row() {
    local name=$1 config=$2 reference=$3
    [ -n "${times[$config]:-}" ] || return 0
    printf '| %s | %.2f | %.2fx | %s |\n' "$name" "$(echo "${times[$config]}" | median)" \
        "$(ratios "$config" "$reference" | median)" "$([[ $config == stride_* ]] && peak "$config")"
}

echo "### MySQL/MariaDB and PostgreSQL, $(echo "$rows" | sed ':a;s/\B[0-9]\{3\}\>/,&/;ta') rows, $rounds round(s) ($(nproc) cores, $(my -N -e 'SELECT version()'), psql $(psql --version | awk '{print $3}'))"
echo
echo "| configuration | median s | vs the reference | peak stride MiB |"
echo "|---|---:|---:|---:|"
row "mysql --quick piped into psql copy (reference)" pipe_to_pg pipe_to_pg
row "pgloader, data only" pgloader_to_pg pipe_to_pg
row "stride mysql -> pg, 4 partitions" stride_to_pg pipe_to_pg
row "LOAD DATA LOCAL INFILE from a file (reference)" load_data load_data
row "stride pg -> mysql, 4 partitions" stride_to_mysql load_data
row "mydumper then myloader, 4 threads (reference)" mydumper_myloader mydumper_myloader
if [ -n "${times[mydumper_myloader]:-}" ]; then
    row "stride mysql -> mysql, 4 partitions" stride_mysql_to_mysql mydumper_myloader
else
    row "stride mysql -> mysql, 4 partitions (vs LOAD DATA)" stride_mysql_to_mysql load_data
fi
