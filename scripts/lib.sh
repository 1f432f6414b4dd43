# Shared by scripts/*: privilege helpers and a throwaway PostgreSQL cluster owned by `postgres`.
# Postgres refuses to run as root, so the server always runs as the `postgres` OS user, whether
# the caller is root (CI) or an ordinary user with sudo.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Overrides (defaults are the system PostgreSQL 15, clusters in /var/tmp, ports 5491..5498):
#   TOTP_VERIFY_PG_CONFIG   pg_config of the PostgreSQL 15 to build against and install into
#   TOTP_VERIFY_RUN_DIR     parent directory of the throwaway clusters
#   TOTP_VERIFY_PORT_BASE   first port; clusters use base+0 (test), +6 (demo), +7 (upgrade)
PG_CONFIG=${TOTP_VERIFY_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir 2>/dev/null || dirname "$PG_CONFIG")
RUN_DIR=${TOTP_VERIFY_RUN_DIR:-/var/tmp}
PORT_BASE=${TOTP_VERIFY_PORT_BASE:-5491}
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Run as root (directly when we are root).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Run as the postgres OS user, from / (postgres may not enter the caller's directory: a
# mode-700 home). Arguments must be absolute paths.
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else
        ( cd / && { as_root runuser -u postgres -- "$@" 2>/dev/null || as_root sudo -u postgres "$@"; } )
    fi
}

# port_of OFFSET: a cluster's port, TOTP_VERIFY_PORT_BASE + OFFSET.
port_of() { echo $(( PORT_BASE + $1 )); }

# cluster_start NAME PORT: initdb + start a cluster in $RUN_DIR/totp_verify-NAME (socket there
# too). Sets PGHOST, PGPORT, PGUSER for the caller's clients.
cluster_start() {
    local name=$1 port=$2
    CLUSTER_DIR=$RUN_DIR/totp_verify-$name
    as_root mkdir -p "$RUN_DIR"
    cluster_stop "$name" 2>/dev/null || true
    as_root rm -rf "$CLUSTER_DIR"
    as_root mkdir -p "$CLUSTER_DIR"
    as_root chown postgres:postgres "$CLUSTER_DIR"
    as_postgres "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    # Readable by the caller (tests/test_hostile_input.py scans it for leaked secrets); pg_ctl
    # appends to an existing file and keeps its mode.
    as_postgres install -m 644 /dev/null "$CLUSTER_DIR/server.log"
    as_postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w \
        -o "-p $port -k $CLUSTER_DIR -c listen_addresses='' -c fsync=off -c max_connections=100 -c shared_preload_libraries=totp_verify ${CLUSTER_OPTS:-}" \
        start >/dev/null
    export PGHOST=$CLUSTER_DIR PGPORT=$port PGUSER=postgres
}

cluster_stop() {
    local dir=$RUN_DIR/totp_verify-$1
    if [ -d "$dir/data" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}
