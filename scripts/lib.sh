# Shared by scripts/*: privilege helpers and a throwaway PostgreSQL cluster owned by `postgres`.
# Postgres refuses to run as root, so the server always runs as the `postgres` OS user, whether
# the caller is root (CI) or an ordinary user with sudo.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Every supported PostgreSQL major. 15 is Debian 12's own (apt); the others are PyPI's
# relocatable server builds, pinned in scripts/postgresql-servers.txt and unpacked by
# scripts/setup into $PG_SERVERS/<major>.
PG_MAJORS=(14 15 16 17 18)
# Overrides (defaults: PostgreSQL 15, clusters in /var/tmp, ports from 5491):
#   TOTP_VERIFY_PG          the major the scripts work with (14..18; default 15)
#   TOTP_VERIFY_PG_CONFIG   pg_config of the PostgreSQL 15 to build against and install into
#                           (default Debian's /usr/lib/postgresql/15/bin/pg_config)
#   TOTP_VERIFY_PG_SERVERS  where the other majors' servers live (default /opt/totp_verify-postgresql)
#   TOTP_VERIFY_RUN_DIR     parent directory of the throwaway clusters
#   TOTP_VERIFY_PORT_BASE   first port of PostgreSQL 15's clusters; major M uses base+10*(M-15)
#                           onwards: +0 (test), +6 (demo), +7 (upgrade), +8/+9 (major upgrade, package)
PG_SERVERS=${TOTP_VERIFY_PG_SERVERS:-/opt/totp_verify-postgresql}
RUN_DIR=${TOTP_VERIFY_RUN_DIR:-/var/tmp}
PORT_BASE=${TOTP_VERIFY_PORT_BASE:-5491}

# pg_config_of MAJOR: that major's pg_config.
pg_config_of() {
    if [ "$1" = 15 ]; then echo "${TOTP_VERIFY_PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
    else echo "$PG_SERVERS/$1/bin/pg_config"; fi
}
# check_major MAJOR: refuses (exit 2) a major that is not supported.
check_major() {
    case " ${PG_MAJORS[*]} " in *" $1 "*) ;; *) echo "unsupported PostgreSQL major: $1 (supported: ${PG_MAJORS[*]})" >&2; exit 2 ;; esac
}
# use_pg MAJOR: point PG_MAJOR, PG_CONFIG, PG_BIN (and the tests' TOTP_VERIFY_PG_BIN) at MAJOR,
# for this script and the scripts it runs (TOTP_VERIFY_PG).
use_pg() {
    check_major "$1"
    PG_MAJOR=$1
    export TOTP_VERIFY_PG=$1
    PG_CONFIG=$(pg_config_of "$1")
    PG_BIN=$("$PG_CONFIG" --bindir 2>/dev/null || dirname "$PG_CONFIG")
    export TOTP_VERIFY_PG_BIN=$PG_BIN
    export PATH="$PG_BIN:$PATH"   # psql, pg_dump, pgbench of this major first
}
use_pg "${TOTP_VERIFY_PG:-15}"
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

# port_of OFFSET: a cluster's port for the current major.
port_of() { echo $(( PORT_BASE + 10 * (PG_MAJOR - 15) + $1 )); }

# cluster_dir NAME: the current major's cluster NAME, $RUN_DIR/totp_verify-pg<major>-NAME.
cluster_dir() { echo "$RUN_DIR/totp_verify-pg$PG_MAJOR-$1"; }

# cluster_start NAME PORT: initdb + start a cluster of the current major in $(cluster_dir NAME)
# (socket there too). Sets PGHOST, PGPORT, PGUSER for the caller's clients.
cluster_start() { cluster_init "$1"; cluster_run "$1" "$2"; }

# cluster_init NAME: a new, stopped cluster (an existing one of that name is stopped and removed).
cluster_init() {
    local name=$1
    CLUSTER_DIR=$(cluster_dir "$name")
    as_root mkdir -p "$RUN_DIR"
    cluster_stop "$name" 2>/dev/null || true
    as_root rm -rf "$CLUSTER_DIR"
    as_root mkdir -p "$CLUSTER_DIR"
    as_root chown postgres:postgres "$CLUSTER_DIR"
    # PostgreSQL 18's initdb turns data checksums on by default; every major gets the same
    # cluster (pg_upgrade needs old and new to match).
    local checksums=()
    [ "$PG_MAJOR" -lt 18 ] || checksums=(--no-data-checksums)
    as_postgres "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 "${checksums[@]}" >/dev/null
    # Readable by the caller (tests/test_hostile_input.py scans it for leaked secrets); pg_ctl
    # appends to an existing file and keeps its mode.
    as_postgres install -m 644 /dev/null "$CLUSTER_DIR/server.log"
}

# cluster_run NAME PORT: starts the current major's cluster NAME with the extension preloaded.
cluster_run() {
    local name=$1 port=$2
    CLUSTER_DIR=$(cluster_dir "$name")
    as_postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w \
        -o "-p $port -k $CLUSTER_DIR -c listen_addresses='' -c fsync=off -c max_connections=100 -c shared_preload_libraries=totp_verify ${CLUSTER_OPTS:-}" \
        start >/dev/null
    export PGHOST=$CLUSTER_DIR PGPORT=$port PGUSER=postgres
}

cluster_stop() {
    local dir
    dir=$(cluster_dir "$1")
    if [ -d "$dir/data" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}
