#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on $PGHOST:$PGPORT (user postgres, no
# password), for machines without Docker. If none answers, create and start a
# throwaway cluster in $STRIDE_PG_DIR, installing PostgreSQL first if needed.
# Prints the base URL on stdout (all other output goes to stderr), e.g.
#   postgres://postgres@127.0.0.1:5432/postgres
#
# Env: PGHOST (127.0.0.1), PGPORT (5432), STRIDE_PG_DIR (/tmp/stride-pg),
# STRIDE_PG_MAX_CONNECTIONS (200): max_connections of the cluster when this script
# starts it (an already answering or running server keeps its own setting).
# Idempotent: re-running reuses an answering server or restarts the cluster.
# Stop the throwaway cluster with (drop "runuser -u postgres --" if not root):
#   runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D /tmp/stride-pg stop
set -euo pipefail

host=${PGHOST:-127.0.0.1}
port=${PGPORT:-5432}
dir=${STRIDE_PG_DIR:-/tmp/stride-pg}
max_connections=${STRIDE_PG_MAX_CONNECTIONS:-200}
url="postgres://postgres@$host:$port/postgres"

log() { echo "pg-local: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $max_connections =~ ^[1-9][0-9]*$ ]] ||
    die "STRIDE_PG_MAX_CONNECTIONS must be a positive integer, not '$max_connections'"

answers() {
    command -v psql >/dev/null &&
        PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5} psql -h "$host" -p "$port" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1
}

if answers; then
    log "server already answers on $host:$port"
    echo "$url"
    exit 0
fi

is_root() { [ "$(id -u)" -eq 0 ]; }

# Something listens on the port but does not let `postgres` in without a
# password (or is not PostgreSQL): our cluster could not start there.
if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    die "a server listens on $host:$port but user postgres cannot connect to it without a password (or it is not PostgreSQL).
Start the throwaway cluster on a free port instead, e.g.:
  PGPORT=5440 scripts/pg-local.sh   (or: PGPORT=5440 scripts/quickstart.sh, PGPORT=5440 scripts/test.sh)
or use that server: SOURCE_URL=... TARGET_URL=... scripts/quickstart.sh, STRIDE_TEST_PG_URL=... scripts/test.sh"
fi

# Newest server binaries. (/usr/local/bin/{initdb,pg_ctl} may exist as symlinks
# into one of these; we go to the versioned directory directly.)
find_bindir() {
    local d
    d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && echo "$d"
}

bindir=$(find_bindir || true)
if [ -z "$bindir" ]; then
    sudo=()
    if ! is_root; then
        # Passwordless sudo (e.g. hosted CI runners) is as good as root here.
        sudo -n true 2>/dev/null || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin;
install them (e.g. sudo apt-get install postgresql) or run this script as root"
        sudo=(sudo -n)
    fi
    command -v apt-get >/dev/null || die "no PostgreSQL and no apt-get; install PostgreSQL manually"
    # Debian's package would otherwise create (and on systemd machines start) its
    # own 'main' cluster on port 5432 with peer/scram auth, which would block our
    # port. postgresql-common reads this drop-in (createcluster.conf include_dir).
    "${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" |
        "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/stride.conf >/dev/null
    log "installing PostgreSQL with apt-get"
    "${sudo[@]}" apt-get update >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
    bindir=$(find_bindir) || die "PostgreSQL installed but no initdb/pg_ctl under /usr/lib/postgresql/*/bin"
fi

# PostgreSQL refuses to run as root: as root, act as the 'postgres' OS user.
as_pg=()
if is_root; then
    id -u postgres >/dev/null 2>&1 ||
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    as_pg=(runuser -u postgres --)
    mkdir -p "$dir"
    chown postgres: "$dir"
    chmod 700 "$dir"
    "${as_pg[@]}" test -w "$dir" ||
        die "user postgres cannot reach $dir (a parent directory is not traversable); choose another STRIDE_PG_DIR"
fi

if [ ! -f "$dir/PG_VERSION" ]; then
    if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
        die "$dir exists, is not empty and is not a PostgreSQL cluster"
    fi
    log "creating cluster in $dir ($bindir)"
    out=$("${as_pg[@]}" "$bindir/initdb" -D "$dir" -A trust -U postgres -E UTF8 --no-locale 2>&1) ||
        { echo "$out" >&2; die "initdb failed"; }
fi

if "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    # postmaster.pid line 4 is the port the running server listens on.
    running_port=$(sed -n 4p "$dir/postmaster.pid" 2>/dev/null || true)
    [ "$running_port" = "$port" ] ||
        die "cluster in $dir is already running on port ${running_port:-?}, not $port; stop it or set STRIDE_PG_DIR"
    log "cluster in $dir is already running; waiting for it to answer"
else
    log "starting cluster in $dir on $host:$port (log: $dir/server.log)"
    # Test cluster only: fsync/full_page_writes/synchronous_commit off trade
    # crash safety for speed; the data is throwaway.
    opts="-c listen_addresses=$host -p $port -k '$dir' -c max_connections=$max_connections"
    opts+=" -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
    "${as_pg[@]}" "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -o "$opts" -w -t 30 start >&2 ||
        { tail -n 20 "$dir/server.log" >&2 || true; die "pg_ctl start failed (port $port in use?)"; }
fi

# Bounded wait until it accepts connections on the TCP address.
for _ in $(seq 60); do
    if answers; then
        echo "$url"
        exit 0
    fi
    sleep 0.5
done
tail -n 20 "$dir/server.log" >&2 || true
die "server in $dir did not answer on $host:$port within 30 s"
