#!/usr/bin/env bash
# The workers benchmark of issue 15: three `--shard auto` workers against three
# fixed shards (`--shard I/3`) on a skewed table, side by side in the same rounds.
#
#   scripts/bench-workers.sh [N]      # default N = 100,000
#   ROUNDS=5 scripts/bench-workers.sh
#
# Seeds `skew (id bigint primary key, pad text)` in a new source database: 48
# partitions of N ids each, partition k holding N * max(0.1, 10^(-k/4)) rows: the
# density falls along the key, steeply at first, so the first partition holds
# 10x the rows of each of the last 44. Each round
# runs both ways into a freshly prepared target (`stride prepare --restart`,
# truncate mode), the three processes started together, each copying one
# partition at a time (run.parallelism = 1), then `stride finish`; the target must
# hold every source row.
#
# A worker's busy time is the sum of its partitions' copy times (from its
# --summary-json), so a worker that waits at the end for another's partition is
# not counted as busy. Prints as markdown, per way: the median over the rounds of
# the ratio of the busiest worker's busy time to the least busy one's (the issue
# asks within 1.3x for auto), and of the wall time of the three processes
# (start to the last one's end), and auto's wall time over the fixed shards'.
#
# Env: ROUNDS (default 3), BENCH_URL (a database on the server; default: the one
# scripts/pg-local.sh finds or starts), STRIDE_BIN (default target/release/stride,
# built first), BENCH_KEEP=1 keeps the databases and logs.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench-workers: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

n=${1:-100000}
n=${n//[,_]/}
rounds=${ROUNDS:-3}
[[ $n =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, not '${1:-}'"
((n >= 10)) || die "N must be at least 10"
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
command -v psql >/dev/null || die "psql not found"

stride_bin=${STRIDE_BIN:-target/release/stride}
if [ -z "${STRIDE_BIN:-}" ]; then
    log "building stride (release)"
    cargo build --release --quiet >&2
fi
[ -x "$stride_bin" ] || die "$stride_bin not found"

base=${BENCH_URL:-}
[ -n "$base" ] || base=$(scripts/pg-local.sh)
with_db() {
    local url=${1%%\?*} query=""
    [[ $1 == *\?* ]] && query="?${1#*\?}"
    printf '%s/%s%s\n' "${url%/*}" "$2" "$query"
}
sql() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$@"; }

prefix="stride_wbench_$$"
src_url=$(with_db "$base" "${prefix}_src")
dst_url=$(with_db "$base" "${prefix}_dst")
tmp=$(mktemp -d "${TMPDIR:-/tmp}/stride-bench-workers.XXXXXX")
cleanup() {
    local status=$?
    trap - EXIT
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        log "kept ${prefix}_src, ${prefix}_dst and $tmp"
    else
        sql "$base" -c "DROP DATABASE IF EXISTS ${prefix}_src WITH (FORCE)" \
            -c "DROP DATABASE IF EXISTS ${prefix}_dst WITH (FORCE)" || true
        rm -rf "$tmp"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT

sql "$base" -c "CREATE DATABASE ${prefix}_src" -c "CREATE DATABASE ${prefix}_dst"
log "seeding 48 partitions of $n ids, 10x denser at the start"
sql "$src_url" <<SQL
CREATE TABLE skew (id bigint PRIMARY KEY, pad text);
INSERT INTO skew
  SELECT k * $n + i, md5((k * $n + i)::text)
  FROM generate_series(0, 47) k, generate_series(0, $n - 1) i
  WHERE i < $n * greatest(0.1, power(10, -k / 4.0));
ANALYZE skew;
SQL
sql "$dst_url" -c "CREATE TABLE skew (id bigint PRIMARY KEY, pad text)"
source_rows=$(sql "$src_url" -Atc "SELECT count(*) FROM skew")

job="$tmp/job.toml"
cat >"$job" <<TOML
[source]
url = "$src_url"
table = "skew"

[partition]
column = "id"
lower_bound = 0
upper_bound = $((48 * n))
count = 48

[target]
url = "$dst_url"
mode = "truncate"

[run]
parallelism = 1
verify = "none"
TOML

now() { printf '%s\n' "${EPOCHREALTIME/,/.}"; }

# Busy seconds of a worker: its written partitions' times.
busy() {
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(p["seconds"] for p in d["detail"] if p["status"]=="written"))' "$1"
}

# One way ($1: auto or fixed) in round $2: prints "spread wall".
run_way() {
    local way=$1 round=$2 i pids=() start end b max=0 min=
    "$stride_bin" prepare --restart "$job" >"$tmp/$way.$round.prepare.log" 2>&1 ||
        die "prepare failed: $(tail -n 5 "$tmp/$way.$round.prepare.log")"
    start=$(now)
    for i in 0 1 2; do
        local shard=auto
        [ "$way" = fixed ] && shard="$i/3"
        "$stride_bin" run --shard "$shard" --summary-json "$tmp/$way.$round.$i.json" "$job" \
            >"$tmp/$way.$round.$i.log" 2>&1 &
        pids+=($!)
    done
    for i in 0 1 2; do
        wait "${pids[$i]}" || die "$way worker $i failed: $(tail -n 5 "$tmp/$way.$round.$i.log")"
    done
    end=$(now)
    "$stride_bin" finish "$job" >"$tmp/$way.$round.finish.log" 2>&1 ||
        die "finish failed: $(tail -n 5 "$tmp/$way.$round.finish.log")"
    [ "$(sql "$dst_url" -Atc "SELECT count(*) FROM skew")" = "$source_rows" ] ||
        die "$way round $round: the target does not hold the source's $source_rows rows"
    for i in 0 1 2; do
        b=$(busy "$tmp/$way.$round.$i.json")
        max=$(awk -v a="$max" -v b="$b" 'BEGIN { print (b > a) ? b : a }')
        min=$(awk -v a="${min:-$b}" -v b="$b" 'BEGIN { print (b < a) ? b : a }')
        log "round $round $way worker $i: busy $b s"
    done
    awk -v max="$max" -v min="$min" -v s="$start" -v e="$end" \
        'BEGIN { printf "%.3f %.3f\n", (min > 0 ? max / min : 999), e - s }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -a auto_spread fixed_spread auto_wall fixed_wall wall_ratio
for ((round = 1; round <= rounds; round++)); do
    read -r s w < <(run_way auto "$round")
    auto_spread+=("$s") auto_wall+=("$w")
    read -r s w2 < <(run_way fixed "$round")
    fixed_spread+=("$s") fixed_wall+=("$w2")
    wall_ratio+=("$(awk -v a="$w" -v b="$w2" 'BEGIN { printf "%.3f", a / b }')")
    log "round $round: auto busy spread ${auto_spread[-1]}x, wall $w s; fixed busy spread $s x, wall $w2 s"
done

m() { printf '%s\n' "$@" | median; }
echo "### workers on a skewed table: 48 partitions (10x), $source_rows rows, $rounds round(s), $(date -u +%Y-%m-%d)"
echo
echo "$(nproc) cores; three processes, one partition at a time each; medians over the rounds."
echo
echo "| way | busiest / least busy worker | wall time (s) |"
echo "|---|---|---|"
echo "| \`--shard auto\` x3 | $(m "${auto_spread[@]}")x | $(m "${auto_wall[@]}") |"
echo "| \`--shard I/3\` x3 | $(m "${fixed_spread[@]}")x | $(m "${fixed_wall[@]}") |"
echo
echo "auto's wall time / fixed shards' (median of the per-round ratios): $(m "${wall_ratio[@]}")x"
