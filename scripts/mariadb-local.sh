#!/usr/bin/env bash
# Make sure a MariaDB/MySQL server answers on $MYSQL_HOST:$MYSQL_PORT (user root,
# empty password, over TCP), for machines without Docker. If none answers, create
# and start a throwaway MariaDB in $STRIDE_MYSQL_DIR, installing mariadb-server
# first if needed. Prints the base URL on stdout (all other output goes to
# stderr), e.g.
#   mysql://root@127.0.0.1:3306/
#
# Env: MYSQL_HOST (127.0.0.1), MYSQL_PORT (3306), STRIDE_MYSQL_DIR
# (/tmp/stride-mysql), STRIDE_MYSQL_MAX_CONNECTIONS (200): max_connections of the
# server when this script starts it (an already answering server keeps its own).
# The throwaway server has local_infile=ON, max_allowed_packet=64M, utf8mb4 as its
# default character set, and InnoDB's durability defaults untouched
# (innodb_flush_log_at_trx_commit=1), so crash-safety tests mean something.
# No database is created: the tests create (and drop) their own, uniquely named.
# Layout of the directory: data/ (datadir), mysqld.sock, mysqld.pid, server.log,
# port (the port it was started on).
# Idempotent: re-running reuses an answering server or starts the one in the
# directory again.
# Stop the throwaway server with:
#   mariadb-admin --no-defaults --protocol=TCP -h 127.0.0.1 -P 3306 -u root shutdown
# (or: kill "$(cat /tmp/stride-mysql/mysqld.pid)"); remove /tmp/stride-mysql to
# start afresh next time.
set -euo pipefail

host=${MYSQL_HOST:-127.0.0.1}
port=${MYSQL_PORT:-3306}
dir=${STRIDE_MYSQL_DIR:-/tmp/stride-mysql}
max_connections=${STRIDE_MYSQL_MAX_CONNECTIONS:-200}
url="mysql://root@$host:$port/"

log() { echo "mariadb-local: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $port =~ ^[1-9][0-9]*$ ]] || die "MYSQL_PORT must be a port number, not '$port'"
[[ $max_connections =~ ^[1-9][0-9]*$ ]] ||
    die "STRIDE_MYSQL_MAX_CONNECTIONS must be a positive integer, not '$max_connections'"
case $dir in /*) ;; *) dir="$PWD/$dir" ;; esac

is_root() { [ "$(id -u)" -eq 0 ]; }

client() { command -v mariadb || command -v mysql || true; }

# --no-defaults: a password in ~/.my.cnf (or MYSQL_PWD) must not make a server
# look as if root got in without one.
answers() {
    local c
    c=$(client)
    [ -n "$c" ] &&
        env -u MYSQL_PWD "$c" --no-defaults --protocol=TCP -h "$host" -P "$port" -u root \
            --connect-timeout=5 -N -e 'SELECT 1' >/dev/null 2>&1
}

listening() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

sudo=()
need_root() {
    if ! is_root; then
        # Passwordless sudo (e.g. hosted CI runners) is as good as root here.
        sudo -n true 2>/dev/null || die "$1"
        sudo=(sudo -n)
    fi
}

apt_install() {
    command -v apt-get >/dev/null || die "no apt-get to install $*; install it manually"
    # Debian's mariadb-server would start its own server on 3306 during the
    # install (root by unix_socket only, so it would hold our port and refuse us).
    # invoke-rc.d and deb-systemd-invoke start nothing while policy-rc.d says
    # 101; an existing policy-rc.d (Docker images have one) is left alone.
    local policy=/usr/sbin/policy-rc.d ours=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# scripts/mariadb-local.sh: no service starts during its apt-get install\nexit 101\n' |
            "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        ours=1
    fi
    log "installing $* with apt-get"
    local rc=0
    { "${sudo[@]}" apt-get update </dev/null &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" </dev/null; } >&2 || rc=$?
    [ -z "$ours" ] || "${sudo[@]}" rm -f "$policy"
    [ "$rc" -eq 0 ] || die "apt-get install $* failed"
}

find_server() {
    local b
    for b in mariadbd /usr/sbin/mariadbd /usr/libexec/mariadbd mysqld /usr/sbin/mysqld; do
        if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
    done
    return 1
}
find_install_db() { command -v mariadb-install-db || command -v mysql_install_db; }

# A client is needed to tell whether a server answers: just the client when a
# server listens or the server's binaries are here, else mariadb-server (which
# brings the client).
if [ -z "$(client)" ]; then
    pkg=mariadb-server
    if listening || { find_server && find_install_db; } >/dev/null; then pkg=mariadb-client; fi
    need_root "no mariadb/mysql client is installed to ask $host:$port with;
install one (sudo apt-get install $pkg) or run this script as root"
    apt_install "$pkg"
    [ -n "$(client)" ] || die "$pkg installed but no mariadb/mysql client found"
fi

if answers; then
    log "server already answers on $host:$port"
    echo "$url"
    exit 0
fi

# Something listens on the port but does not let root in without a password
# (or is not MySQL at all): our server could not start there.
if listening; then
    die "a server listens on $host:$port but user root cannot log in to it without a password (or it is not MySQL/MariaDB).
Start the throwaway server on a free port instead, e.g.:
  MYSQL_PORT=3310 scripts/mariadb-local.sh   (or: MYSQL_PORT=3310 scripts/test.sh)
or use that server: STRIDE_TEST_MYSQL_URL=mysql://user:password@$host:$port/ scripts/test.sh"
fi

server=$(find_server || true)
install_db=$(find_install_db || true)
if [ -z "$server" ] || [ -z "$install_db" ]; then
    need_root "MariaDB server binaries (mariadbd, mariadb-install-db) not found;
install them (e.g. sudo apt-get install mariadb-server) or run this script as root"
    apt_install mariadb-server
    server=$(find_server) || die "mariadb-server installed but no mariadbd found"
    install_db=$(find_install_db) || die "mariadb-server installed but no mariadb-install-db found"
fi

# mariadbd refuses to run as root (unless told --user=root): as root, act as the
# 'mysql' OS user, as the packaged service does; otherwise as ourselves.
as_my=()
if is_root; then
    id -u mysql >/dev/null 2>&1 ||
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mysql
    as_my=(runuser -u mysql --)
    mkdir -p "$dir"
    chown mysql: "$dir"
    chmod 700 "$dir"
    "${as_my[@]}" test -w "$dir" ||
        die "user mysql cannot reach $dir (a parent directory is not traversable); choose another STRIDE_MYSQL_DIR"
else
    mkdir -p "$dir"
fi

data="$dir/data"
sock="$dir/mysqld.sock"
pidfile="$dir/mysqld.pid"
logfile="$dir/server.log"
# A Unix socket path longer than sun_path (108 bytes) cannot be bound.
[ ${#sock} -lt 108 ] || die "socket path $sock is too long; choose a shorter STRIDE_MYSQL_DIR"

if [ ! -d "$data/mysql" ]; then
    if [ -n "$(ls -A "$dir")" ]; then
        die "$dir exists, is not empty and holds no MariaDB data directory (data/mysql)"
    fi
    log "creating data directory $data ($install_db)"
    # auth-root-authentication-method=normal: root@localhost without a password
    # (not Debian's unix_socket login), which the tests use over TCP.
    out=$("${as_my[@]}" "$install_db" --no-defaults --datadir="$data" \
        --auth-root-authentication-method=normal --skip-test-db 2>&1) ||
        { echo "$out" >&2; rm -rf "$data"; die "$install_db failed"; }
fi

running_pid() {
    local pid
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

if pid=$(running_pid); then
    running_port=$(cat "$dir/port" 2>/dev/null || true)
    [ "$running_port" = "$port" ] ||
        die "the server in $dir is already running (pid $pid) on port ${running_port:-?}, not $port; stop it or set STRIDE_MYSQL_DIR"
    log "the server in $dir is already running (pid $pid); waiting for it to answer"
else
    log "starting MariaDB in $dir on $host:$port (log: $logfile)"
    # --no-defaults: none of /etc/mysql's settings (port, socket, datadir of the
    # packaged server) apply. Error log on stderr, appended to server.log, which
    # the mysql user must be able to write when root opens it for append.
    "${as_my[@]}" touch "$logfile"
    echo "$port" >"$dir/port"
    opts=(
        --no-defaults
        --datadir="$data"
        --bind-address="$host"
        --port="$port"
        --socket="$sock"
        --pid-file="$pidfile"
        --skip-name-resolve
        --character-set-server=utf8mb4
        --collation-server=utf8mb4_general_ci
        --local-infile=1
        --max-allowed-packet=64M
        --max-connections="$max_connections"
    )
    # setsid: the server outlives this script and a Ctrl-C of the test run; its
    # output goes to the log, so $(mariadb-local.sh) does not wait for it.
    setsid "${as_my[@]}" "$server" "${opts[@]}" </dev/null >>"$logfile" 2>&1 &
    started=$!
fi

# Bounded wait until it accepts root over TCP.
for _ in $(seq 120); do
    if answers; then
        echo "$url"
        exit 0
    fi
    if [ -n "${started:-}" ] && ! kill -0 "$started" 2>/dev/null; then
        tail -n 20 "$logfile" >&2 || true
        die "mariadbd exited at start (see $logfile above; port $port in use?)"
    fi
    sleep 0.5
done
tail -n 20 "$logfile" >&2 || true
die "the server in $dir did not answer on $host:$port within 60 s"
