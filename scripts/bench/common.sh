# Shared by the benchmark scripts (sourced, not run): messages, the stride
# binary under test, and psql against the benchmark's databases. The sourcing
# script sets `bench_name` (the prefix of its messages) first.

log() { printf '%s: %s\n' "${bench_name:-bench}" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Sets stride_bin: $STRIDE_BIN, else target/release/stride built with cargo.
find_stride() {
    if [ -n "${STRIDE_BIN:-}" ]; then
        stride_bin=$STRIDE_BIN
        [ -x "$stride_bin" ] || die "STRIDE_BIN=$stride_bin is not an executable"
    else
        stride_bin=target/release/stride
        if command -v cargo >/dev/null; then
            log "cargo build --release (a no-op when the binary is up to date)"
            cargo build --release --quiet >&2
        fi
        [ -x "$stride_bin" ] || die "$stride_bin not found and cargo is not installed; set STRIDE_BIN"
    fi
}

# $1 with its database replaced by $2 (any ?query is kept).
url_with_db() {
    local url=$1 db=$2 query="" scheme rest
    [[ $url == *://* ]] || die "BENCH_URL must be a postgres:// URL"
    if [[ $url == *\?* ]]; then
        query="?${url#*\?}"
        url=${url%%\?*}
    fi
    scheme=${url%%://*}
    rest=${url#*://}
    printf '%s://%s/%s%s\n' "$scheme" "${rest%%/*}" "$db" "$query"
}

# psql quietly (no NOTICEs either), stopping at the first error; never ~/.psqlrc.
sql() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 "$@"; }

# Sets measure_memory: 1 when GNU /usr/bin/time reports peak memory.
find_time() {
    if [[ $(/usr/bin/time -f "%M" true 2>&1) =~ ^[0-9]+$ ]]; then
        measure_memory=1
    else
        measure_memory=0
        log "no GNU /usr/bin/time: stride's peak memory is not reported"
    fi
}

# The scripts comparing stride with other tools (bench-engines.sh,
# bench-mysql.sh) set rows, tmp (a scratch directory) and times (an
# associative array: configuration -> its seconds, one per round) first.

# Stops unless a run left $rows rows: check GOT WHAT.
check() {
    local got=$1 what=$2
    [ "$got" = "$rows" ] || die "$what left $got rows, expected $rows"
}
seconds() {
    local start=$EPOCHREALTIME
    "$@"
    echo "$EPOCHREALTIME - $start" | bc
}

# stride under GNU time when there is one: its peak memory, in KiB, appended to
# $tmp/NAME.rss; its messages to $tmp/stride.log.
stride_measured() {
    local name=$1 job=$2
    if [ "$measure_memory" = 1 ]; then
        /usr/bin/time -f "%M" -a -o "$tmp/$name.rss" "$stride_bin" --quiet run "$job" >/dev/null 2>>"$tmp/stride.log"
    else
        "$stride_bin" --quiet run "$job" >/dev/null 2>>"$tmp/stride.log"
    fi
}

# The median of the numbers on stdin; each round's ratio of A's time to B's.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratios() {
    local -a a b
    read -ra a <<<"${times[$1]}"
    read -ra b <<<"${times[$2]}"
    for i in "${!a[@]}"; do echo "${a[$i]} / ${b[$i]}" | bc -l; done | tr '\n' ' '
}

# The largest peak memory of NAME's runs, in MiB (n/a without GNU time).
peak() {
    if [ -s "$tmp/$1.rss" ]; then
        sort -n "$tmp/$1.rss" | tail -1 | awk '{printf "%.1f", $1 / 1024}'
    else
        printf 'n/a'
    fi
}
