#!/usr/bin/env bash
# The benchmark of issue 6: stride against the psql binary COPY pipe.
#
#   scripts/bench.sh [ROWS]          # default 5,000,000 rows
#   ROUNDS=5 scripts/bench.sh 1000000
#
# scripts/bench-workers.sh measures --shard auto against --shard I/3 on a skewed
# table (issue 15); see docs/PERFORMANCE.md.
#
# Seeds a covid_cases-like table (scripts/bench/table.sql, seed.sql) with ROWS
# rows in a new source database, creates the same table with its primary key in
# a new target database on the same server, then runs ROUNDS rounds. Each round
# runs every configuration once, in this order, each into the freshly emptied
# target (TRUNCATE, then CHECKPOINT when the user may, so no run pays for the
# previous one's dirty pages):
#   psql pipe x1      psql -c "COPY t TO STDOUT (FORMAT binary)" | psql -c "COPY t FROM STDIN (FORMAT binary)"
#   stride copy, 1 partition
#   psql pipes x2     2 such pipes at once, on disjoint id ranges
#   stride copy, 2 partitions
#   psql pipes x4
#   stride copy, 4 partitions
#   stride copy, 8 partitions (4 at once: the default run.parallelism)
#   stride copy, 8 partitions, all 8 at once (run.parallelism = 8)
#   stride insert, 1 and 4 partitions, batch_size 1000 and 10000
#   stride insert, 8 partitions at once, batch_size 10000 (for the memory target)
#   stride plan of the 8-partition copy job (timed, not copied)
#   psql pipe x1 into an indexed copy of the table (primary key and two
#   secondary indexes), and stride copy, 4 partitions, into it with
#   `defer_indexes = true` (indexes dropped, then built again after the copy)
# stride runs with the defaults a user gets (checkpoints on, run.parallelism 4:
# at most 4 partitions at once), `mode = "truncate"`, partitioned on id with
# bounds read from the source; the configurations marked "all at once" set
# run.parallelism to their partition count. After every run the target's row
# count must be ROWS, or the script stops with exit 1.
#
# Prints on stdout, as markdown: the machine, the data, and one table row per
# configuration with the median wall time (the whole process: connecting,
# planning, copying, committing), rows/s, MB/s (the table's binary COPY stream,
# 10^6 bytes per MB, over the median time), peak client memory (maximum
# resident set size from /usr/bin/time -v, the largest over the rounds; for the
# pipes the sum over all their psql processes) and the ratio of its time to its
# reference's time in the same round (median over the rounds):
#   stride copy, N partitions    vs  psql pipes xN   (N = 1, 2, 4)
#   stride copy, 8 partitions    vs  psql pipes x2   (8 partitions on 2 cores vs 2), both
#   stride insert                vs  psql pipe x1
#   psql pipes x2, x4            vs  psql pipe x1
#   stride copy, indexed target  vs  psql pipe x1, indexed target
# Progress goes to stderr.
#
# Env:
#   ROUNDS       rounds (default 3)
#   BENCH_URL    a URL to any database on the server to use (default: the one
#                scripts/pg-local.sh finds or starts); the user must be allowed to
#                create databases
#   STRIDE_BIN   the stride binary (default target/release/stride, built with
#                cargo build --release first)
#   BENCH_KEEP=1 keep the two databases (stride_bench_<pid>_src, _dst) and the job
#                files and logs instead of dropping them at the end
set -euo pipefail
cd "$(dirname "$0")/.."

bench_name=bench
# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh

rows=${1:-5000000}
rows=${rows//[,_]/}
rounds=${ROUNDS:-3}
[[ $rows =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive integer, not '${1:-}'"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
((rows >= 8)) || die "ROWS must be at least 8 (one row per partition of the largest configuration)"

# ---------------------------------------------------------------- tools

command -v psql >/dev/null || die "psql not found (scripts/pg-local.sh installs it with the server)"

time_bin=/usr/bin/time
if [ ! -x "$time_bin" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian's time package for /usr/bin/time -v"
    DEBIAN_FRONTEND=noninteractive apt-get install -y time >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y time >&2; } ||
        log "could not install time"
fi
# (Captured first: grep -q stopping early could kill time with SIGPIPE.)
if [ -x "$time_bin" ] && [[ $("$time_bin" -v true 2>&1) == *"Maximum resident set size"* ]]; then
    measure_memory=1
else
    measure_memory=0
    log "no GNU /usr/bin/time: peak client memory is not reported"
fi

find_stride

# ---------------------------------------------------------------- server, databases

base=${BENCH_URL:-}
[ -n "$base" ] || base=$(scripts/pg-local.sh)

prefix="stride_bench_$$"
src_db="${prefix}_src"
dst_db="${prefix}_dst"
BENCH_SOURCE_URL=$(url_with_db "$base" "$src_db")
BENCH_TARGET_URL=$(url_with_db "$base" "$dst_db")
export BENCH_SOURCE_URL BENCH_TARGET_URL # read by the job files as ${...}
table=public.covid_cases
indexed_table=public.covid_cases_indexed

tmp=$(mktemp -d "${TMPDIR:-/tmp}/stride-bench.XXXXXX")
mkdir -p "$tmp/jobs" "$tmp/logs" "$tmp/mem"
created_dbs=0

cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    # Pipes still running after a failure or an interruption (their psql
    # processes go when DROP DATABASE ... WITH (FORCE) ends their sessions).
    for pid in $(jobs -pr); do
        kill "$pid" 2>/dev/null || true
    done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept databases $src_db and $dst_db, job files and logs in $tmp"
    else
        if ((created_dbs)); then
            sql "$base" -c "DROP DATABASE IF EXISTS $src_db WITH (FORCE)" \
                -c "DROP DATABASE IF EXISTS $dst_db WITH (FORCE)" ||
                log "could not drop $src_db and $dst_db"
        fi
        rm -rf "$tmp"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers

now() { printf '%s\n' "${EPOCHREALTIME/,/.}"; }

# Runs "$@" under /usr/bin/time -v when available, the report in $tmp/mem/$1.
timed() {
    local name=$1
    shift
    if ((measure_memory)); then
        "$time_bin" -v -o "$tmp/mem/$name" "$@"
    else
        "$@"
    fi
}

# Sum of the peak RSS (KiB) in the reports of run $1 ($tmp/mem/$1.*).
mem_kib() {
    ((measure_memory)) || {
        echo -
        return
    }
    local f total=0 kib
    for f in "$tmp/mem/$1".*; do
        kib=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): //p' "$f")
        [[ $kib =~ ^[0-9]+$ ]] || die "no peak memory in $f: $(cat "$f")"
        total=$((total + kib))
    done
    echo "$total"
}

# Row i of n of the pipes' ranges over ids 1..rows, split as evenly as stride
# splits them: first part also takes everything below, the last everything above.
range_predicate() {
    local i=$1 n=$2 lo hi
    lo=$((1 + rows * i / n))
    hi=$((1 + rows * (i + 1) / n))
    if ((i == 0)); then
        echo "id < $hi"
    elif ((i == n - 1)); then
        echo "id >= $lo"
    else
        echo "id >= $lo AND id < $hi"
    fi
}

can_checkpoint=1
# The target table of configuration $1: the indexed one for names ending in idx.
target_of() {
    if [[ $1 == *idx ]]; then echo "$indexed_table"; else echo "$table"; fi
}

# An empty target, its dirty pages on disk: every run starts from the same state.
reset_target() {
    sql "$BENCH_TARGET_URL" -c "TRUNCATE $table, $indexed_table"
    if ((can_checkpoint)); then
        if ! sql "$BENCH_TARGET_URL" -c CHECKPOINT 2>"$tmp/logs/checkpoint.err"; then
            can_checkpoint=0
            log "CHECKPOINT is not allowed ($(head -n 1 "$tmp/logs/checkpoint.err")); runs start without one"
        fi
    fi
}

check_rows() {
    local what=$1 into=$2 got
    got=$(sql "$BENCH_TARGET_URL" -Atc "SELECT count(*) FROM $into")
    [ "$got" = "$rows" ] || die "WRONG ROW COUNT after $what: the target holds $got rows, not $rows"
}

# Sets $elapsed (seconds) and $mem (KiB or -) for one run of configuration $1 in
# round $2.
run_pipes() {
    local n=$1 tag=$2 into=$3 i select start pids=() failed=0 pid
    start=$(now)
    for ((i = 0; i < n; i++)); do
        if ((n == 1)); then
            select=$table
        else
            select="(SELECT * FROM $table WHERE $(range_predicate "$i" "$n"))"
        fi
        (
            set -o pipefail
            timed "$tag.$i.out" psql -X -q -v ON_ERROR_STOP=1 -d "$BENCH_SOURCE_URL" \
                -c "COPY $select TO STDOUT (FORMAT binary)" |
                timed "$tag.$i.in" psql -X -q -v ON_ERROR_STOP=1 -d "$BENCH_TARGET_URL" \
                    -c "COPY $into FROM STDIN (FORMAT binary)"
        ) >"$tmp/logs/$tag.$i.log" 2>&1 &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    elapsed=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
    if ((failed)); then
        tail -n 20 "$tmp/logs/$tag".*.log >&2 || true
        die "a psql pipe failed ($tag)"
    fi
    mem=$(mem_kib "$tag")
}

run_stride() {
    local job=$1 tag=$2 start status=0
    start=$(now)
    timed "$tag.stride" "$stride_bin" run "$job" >"$tmp/logs/$tag.log" 2>&1 || status=$?
    elapsed=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
    if ((status != 0)); then
        tail -n 30 "$tmp/logs/$tag.log" >&2 || true
        die "stride exited with $status ($tag, job $job)"
    fi
    mem=$(mem_kib "$tag")
}

# A job file: $1 name, $2 method, $3 partitions, $4 batch size (insert only);
# into the indexed table, with its secondary indexes deferred, for names ending
# in idx; every partition at once (run.parallelism = partitions) for names
# ending in p8.
write_job() {
    local file="$tmp/jobs/$1.toml"
    # The URLs stay ${VARIABLES}, filled in by stride from the environment.
    # shellcheck disable=SC2016
    {
        printf '[source]\nurl = "${BENCH_SOURCE_URL}"\ntable = "%s"\n\n' "$table"
        if (($3 > 1)); then
            printf '[partition]\ncolumn = "id"\ncount = %s\n\n' "$3"
        fi
        if [[ $1 == *p8 ]]; then
            printf '[run]\nparallelism = %s\n\n' "$3"
        fi
        printf '[target]\nurl = "${BENCH_TARGET_URL}"\ntable = "%s"\n' "$(target_of "$1")"
        if [[ $1 == *idx ]]; then
            printf 'defer_indexes = true\n'
        fi
        printf 'mode = "truncate"\ncreate = "never"\nmethod = "%s"\n' "$2"
        if [ "$2" = insert ]; then
            printf 'batch_size = %s\n' "$4"
        fi
    } >"$file"
}

median() {
    printf '%s\n' "$@" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# 1234567.8 -> 1,234,568
grouped() {
    awk -v x="$1" 'BEGIN {
        s = sprintf("%.0f", x); out = ""
        while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
        print s out
    }'
}

# Bytes as MB (10^6), one decimal.
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }

# ---------------------------------------------------------------- configurations

# name|kind|partitions|batch size|reference|label
configs=(
    "pipe1|pipe|1|-|pipe1|psql pipe x1"
    "copy1|copy|1|-|pipe1|stride copy, 1 partition"
    "pipe2|pipe|2|-|pipe1|psql pipes x2"
    "copy2|copy|2|-|pipe2|stride copy, 2 partitions"
    "pipe4|pipe|4|-|pipe1|psql pipes x4"
    "copy4|copy|4|-|pipe4|stride copy, 4 partitions"
    "copy8|copy|8|-|pipe2|stride copy, 8 partitions (4 at once)"
    "copy8p8|copy|8|-|pipe2|stride copy, 8 partitions, all at once"
    "insert1b1000|insert|1|1000|pipe1|stride insert, 1 partition, batch 1000"
    "insert1b10000|insert|1|10000|pipe1|stride insert, 1 partition, batch 10000"
    "insert4b1000|insert|4|1000|pipe1|stride insert, 4 partitions, batch 1000"
    "insert4b10000|insert|4|10000|pipe1|stride insert, 4 partitions, batch 10000"
    "insert8b10000p8|insert|8|10000|pipe1|stride insert, 8 partitions, all at once, batch 10000"
    "pipeidx|pipe|1|-|pipeidx|psql pipe x1, indexed target"
    "copy4idx|copy|4|-|pipeidx|stride copy, 4 partitions, indexed target, defer_indexes"
)
# The order of the table: pipes, copy, insert.
table_order=(pipe1 pipe2 pipe4 copy1 copy2 copy4 copy8 copy8p8 insert1b1000 insert1b10000 insert4b1000 insert4b10000 insert8b10000p8 pipeidx copy4idx)
declare -A label ref kind parts
for c in "${configs[@]}"; do
    IFS='|' read -r name k p b r l <<<"$c"
    label[$name]=$l
    ref[$name]=$r
    kind[$name]=$k
    parts[$name]=$p
    if [ "$k" != pipe ]; then
        write_job "$name" "$k" "$p" "$b"
    fi
done

# ---------------------------------------------------------------- seed

log "databases $src_db and $dst_db; seeding $rows rows"
created_dbs=1
sql "$base" -c "DROP DATABASE IF EXISTS $src_db WITH (FORCE)" -c "CREATE DATABASE $src_db" \
    -c "DROP DATABASE IF EXISTS $dst_db WITH (FORCE)" -c "CREATE DATABASE $dst_db"
seed_start=$(now)
sql "$BENCH_SOURCE_URL" -f scripts/bench/table.sql
sql "$BENCH_SOURCE_URL" -v rows="$rows" -f scripts/bench/seed.sql
sql "$BENCH_SOURCE_URL" -c "ALTER TABLE $table ADD PRIMARY KEY (id)" -c "VACUUM (FREEZE, ANALYZE) $table"
sql "$BENCH_TARGET_URL" -f scripts/bench/table.sql
sql "$BENCH_TARGET_URL" -c "ALTER TABLE $table ADD PRIMARY KEY (id)" \
    -c "CREATE TABLE $indexed_table (LIKE $table INCLUDING ALL)" \
    -c "CREATE INDEX ON $indexed_table (state, district)" \
    -c "CREATE INDEX ON $indexed_table (date, confirmed)"
log "seeded in $(awk -v a="$seed_start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s"
[ "$(sql "$BENCH_SOURCE_URL" -Atc "SELECT count(*) FROM $table")" = "$rows" ] ||
    die "the seed did not make $rows rows"

total_bytes=$(sql "$BENCH_SOURCE_URL" -Atc "SELECT pg_total_relation_size('$table')")
copy_bytes=$(psql -X -q -v ON_ERROR_STOP=1 -d "$BENCH_SOURCE_URL" \
    -c "COPY $table TO STDOUT (FORMAT binary)" | wc -c)

# ---------------------------------------------------------------- rounds

declare -A times mems
declare -a plan_ms
load_start=$(cut -d ' ' -f 1-3 /proc/loadavg 2>/dev/null || echo unknown)
bench_start=$(now)
for ((round = 1; round <= rounds; round++)); do
    for c in "${configs[@]}"; do
        name=${c%%|*}
        tag="r$round.$name"
        reset_target
        if [ "${kind[$name]}" = pipe ]; then
            run_pipes "${parts[$name]}" "$tag" "$(target_of "$name")"
        else
            run_stride "$tmp/jobs/$name.toml" "$tag"
        fi
        check_rows "${label[$name]} (round $round)" "$(target_of "$name")"
        times[$name,$round]=$elapsed
        mems[$name,$round]=$mem
        log "round $round/$rounds  ${label[$name]}: $elapsed s"
    done
    # `stride plan` of the 8-partition job: connecting, reading the catalogue and
    # the key bounds, printing the split; nothing is copied.
    start=$(now)
    "$stride_bin" plan "$tmp/jobs/copy8.toml" >"$tmp/logs/r$round.plan.log" 2>&1 ||
        die "stride plan failed: $(tail -n 5 "$tmp/logs/r$round.plan.log")"
    plan_ms[$round]=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
    log "round $round/$rounds  stride plan, 8 partitions: ${plan_ms[$round]} ms"
done
log "rounds done in $(awk -v a="$bench_start" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }') s"

# ---------------------------------------------------------------- report

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
mem_total=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || true)
load_end=$(cut -d ' ' -f 1-3 /proc/loadavg 2>/dev/null || echo unknown)
server=$(sql "$base" -Atc "SELECT current_setting('server_version')")
settings=$(sql "$base" -Atc "SELECT string_agg(name || ' ' || current_setting(name), ', ' ORDER BY name)
    FROM unnest(ARRAY['shared_buffers', 'fsync', 'synchronous_commit', 'full_page_writes',
                      'wal_level', 'max_wal_size', 'max_connections']) AS name")
version=$("$stride_bin" --version 2>/dev/null || echo stride)
if [ -n "${STRIDE_BIN:-}" ]; then
    version+=" ($stride_bin)"
else
    version+=" built from $(git rev-parse --short HEAD 2>/dev/null || echo 'an unknown revision')"
    if [ -n "$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
        version+=" with uncommitted changes"
    fi
    version+=" ($stride_bin)"
fi

echo "### $(grouped "$rows") rows, $rounds round(s), $(date -u +%Y-%m-%d)"
echo
echo "- machine: $(nproc) CPUs (${cpu:-unknown CPU}), ${mem_total:-unknown} RAM, $(uname -sr), load average $load_start before the rounds, $load_end after"
echo "- PostgreSQL $server, source and target databases on the same server: $settings"
echo "- client: $(psql --version); $version"
echo "- data: $table, $(grouped "$rows") rows, pg_total_relation_size $(mb "$total_bytes") MB (heap, TOAST and primary key), binary COPY stream $(mb "$copy_bytes") MB"
echo "- MB/s: binary COPY stream bytes (10^6 a MB) over the median time; memory: peak resident set size (/usr/bin/time -v), the largest of the rounds, summed over the processes of the pipes"
echo
# Median over the rounds of configuration $1's time over configuration $2's.
median_ratio() {
    local round ratios=()
    for ((round = 1; round <= rounds; round++)); do
        ratios+=("$(awk -v a="${times[$1,$round]}" -v b="${times[$2,$round]}" 'BEGIN { printf "%.4f", a / b }')")
    done
    median "${ratios[@]}"
}

# Configuration $1's peak client memory over the rounds in MiB (one decimal), or
# n/a when it was not measured.
peak_mib() {
    local round m peak=0
    for ((round = 1; round <= rounds; round++)); do
        m=${mems[$1,$round]}
        [ "$m" = - ] && {
            echo n/a
            return
        }
        ((m > peak)) && peak=$m
    done
    awk -v k="$peak" 'BEGIN { printf "%.1f", k / 1024 }'
}

echo "| configuration | median s | runs s | rows/s | MB/s | peak client MiB | ratio | reference (same round) |"
echo "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"
for name in "${table_order[@]}"; do
    run_times=()
    for ((round = 1; round <= rounds; round++)); do
        run_times+=("${times[$name,$round]}")
    done
    med=$(median "${run_times[@]}")
    printf '| %s | %.2f | %s | %s | %.1f | %s | %.2f | %s |\n' \
        "${label[$name]}" "$med" "$(printf '%.2f ' "${run_times[@]}" | sed 's/ $//')" \
        "$(grouped "$(awk -v r="$rows" -v t="$med" 'BEGIN { print r / t }')")" \
        "$(awk -v b="$copy_bytes" -v t="$med" 'BEGIN { print b / 1e6 / t }')" \
        "$(peak_mib "$name")" "$(median_ratio "$name" "${ref[$name]}")" \
        "$([ "${ref[$name]}" = "$name" ] && echo itself || echo "${label[${ref[$name]}]}")"
done
echo
for name in copy8 copy8p8; do
    printf '%s vs stride copy, 2 partitions (same round, median): %.2f (target: at most 1.10)\n\n' \
        "${label[$name]}" "$(median_ratio "$name" copy2)"
done
printf 'indexed target: stride copy with defer_indexes is %.2fx faster than the psql pipe (same round, median; target: at least 1.3x)\n' \
    "$(median_ratio pipeidx copy4idx)"
echo
for name in copy8p8 insert8b10000p8; do
    peak=$(peak_mib "$name")
    if [ "$peak" = n/a ]; then
        echo "${label[$name]}: peak client memory not measured"
    else
        printf '%s: peak client memory %s MiB (target: at most 32 MiB)\n' "${label[$name]}" "$peak"
    fi
    echo
done
printf 'stride plan, 8 partitions (whole process): median %s ms, runs %s ms (target: under 100 ms)\n' \
    "$(median "${plan_ms[@]}")" "${plan_ms[*]}"
