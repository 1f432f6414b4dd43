# Shared by scripts/*: privilege helpers and a throwaway PostgreSQL cluster owned by `postgres`.
# Postgres refuses to run as root, so the server always runs as the `postgres` OS user, whether
# the caller is root (CI) or an ordinary user with sudo.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Run as root (directly when we are root).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Run as the postgres OS user.
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"; else as_root runuser -u postgres -- "$@" 2>/dev/null || as_root sudo -u postgres "$@"; fi
}

# cluster_start NAME PORT: initdb + start a cluster in /var/tmp/totp_verify-NAME (socket there too).
# Sets PGHOST, PGPORT, PGUSER for the caller's clients.
cluster_start() {
    local name=$1 port=$2
    CLUSTER_DIR=/var/tmp/totp_verify-$name
    cluster_stop "$name" 2>/dev/null || true
    as_root rm -rf "$CLUSTER_DIR"
    as_root mkdir -p "$CLUSTER_DIR"
    as_root chown postgres:postgres "$CLUSTER_DIR"
    as_postgres "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    as_postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w \
        -o "-p $port -k $CLUSTER_DIR -c listen_addresses='' -c fsync=off -c max_connections=100 -c shared_preload_libraries=totp_verify ${CLUSTER_OPTS:-}" \
        start >/dev/null
    export PGHOST=$CLUSTER_DIR PGPORT=$port PGUSER=postgres
}

cluster_stop() {
    local dir=/var/tmp/totp_verify-$1
    if [ -d "$dir/data" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}
