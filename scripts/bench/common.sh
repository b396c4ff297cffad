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
