#!/usr/bin/env bash
# A 3-node PostgreSQL cluster on loopback for the replicated vault (issue
# 18): one primary and two streaming standbys with quorum commit
# (synchronous_commit = on, synchronous_standby_names = 'ANY 1 (...)'), so
# a commit is acknowledged only once one standby has it too.
#
#   scripts/pg-cluster.sh up            initdb, pg_basebackup -R twice, start all three
#   scripts/pg-cluster.sh status        each node's role, port and WAL position
#   scripts/pg-cluster.sh kill-standby  SIGKILL one standby (the first one alive)
#   scripts/pg-cluster.sh kill-primary  SIGKILL the primary (as a power cut would)
#   scripts/pg-cluster.sh promote       promote the most advanced standby, repoint the other
#   scripts/pg-cluster.sh rejoin NODE   bring a killed node back as a standby of the primary
#                                       (a former primary is cloned afresh from it)
#   scripts/pg-cluster.sh down          stop everything and delete the data
#
# `up` and `promote` print the current primary's URL (postgres://...) as
# their last line. Data lives under $PG_CLUSTER_DIR (default
# /tmp/tessera-pg-cluster); ports $PG_CLUSTER_PORT, +1, +2 (default 55432).
# PostgreSQL refuses to run as root, so as root the servers run as the
# `postgres` user. Authentication is `trust` on 127.0.0.1 only: a test
# cluster, never a deployment (docs/scale-out.md).
set -euo pipefail

DIR=${PG_CLUSTER_DIR:-/tmp/tessera-pg-cluster}
BASE_PORT=${PG_CLUSTER_PORT:-55432}
DB=tessera
NODES=(n1 n2 n3)
BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[[ -x "$BIN/pg_ctl" ]] || { echo "pg-cluster: no PostgreSQL server binaries (install postgresql-15)" >&2; exit 2; }
# The servers run as `postgres`, who may not be allowed into the caller's
# directory (a CI clone under a mode-700 temporary directory): work from
# /, with every path made absolute first.
DIR=$(realpath -m "$DIR")
cd /

# Run a PostgreSQL tool as the unprivileged user when we are root.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_of() { # n1 -> 55432
    local i=${1#n}
    echo $((BASE_PORT + i - 1))
}

url_of() { echo "postgres://postgres@127.0.0.1:$(port_of "$1")/$DB"; }

alive() { as_pg "$BIN/pg_ctl" -D "$DIR/$1" status >/dev/null 2>&1; }

sql() { # node, statement
    as_pg "$BIN/psql" -h 127.0.0.1 -p "$(port_of "$1")" -U postgres -d postgres -XAtqc "$2"
}

is_primary() { [[ $(sql "$1" "select not pg_is_in_recovery()") == t ]]; }

primary() {
    local n
    for n in "${NODES[@]}"; do
        if alive "$n" && is_primary "$n"; then
            echo "$n"
            return 0
        fi
    done
    return 1
}

others() { # every node but $1
    local n
    for n in "${NODES[@]}"; do [[ $n == "$1" ]] || echo "$n"; done
}

start_node() {
    as_pg "$BIN/pg_ctl" -D "$DIR/$1" -l "$DIR/$1.log" -w -t 60 start >/dev/null
}

# The standby names a primary waits for: its peers, any one of them.
quorum_for() {
    local peers
    peers=$(others "$1" | paste -sd, -)
    echo "ANY 1 ($peers)"
}

up() {
    if [[ -d $DIR ]]; then
        echo "pg-cluster: $DIR exists (run down first)" >&2
        exit 1
    fi
    mkdir -p "$DIR"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$DIR"
    as_pg "$BIN/initdb" -D "$DIR/n1" -U postgres --auth=trust -E UTF8 >/dev/null
    cat >>"$DIR/n1/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $(port_of n1)
unix_socket_directories = '$DIR'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
wal_log_hints = on
synchronous_commit = on
synchronous_standby_names = '$(quorum_for n1)'
EOF
    cat >"$DIR/n1/pg_hba.conf" <<EOF
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
local all all trust
EOF
    start_node n1
    # No standby yet: quorum commit would wait forever for CREATE DATABASE.
    sql n1 "alter system set synchronous_standby_names = ''" >/dev/null
    sql n1 "select pg_reload_conf()" >/dev/null
    sql n1 "create database $DB" >/dev/null
    local n
    for n in n2 n3; do
        as_pg "$BIN/pg_basebackup" -D "$DIR/$n" -R -X stream -c fast \
            -d "host=127.0.0.1 port=$(port_of n1) user=postgres application_name=$n" >/dev/null
        cat >>"$DIR/$n/postgresql.conf" <<EOF
port = $(port_of "$n")
synchronous_standby_names = '$(quorum_for "$n")'
EOF
        start_node "$n"
    done
    sql n1 "alter system reset synchronous_standby_names" >/dev/null
    sql n1 "select pg_reload_conf()" >/dev/null
    # Wait until both standbys stream and one is synchronous.
    for _ in $(seq 1 100); do
        [[ $(sql n1 "select count(*) from pg_stat_replication where state = 'streaming'") == 2 ]] && break
        sleep 0.1
    done
    status >&2
    url_of n1
}

status() {
    local n
    for n in "${NODES[@]}"; do
        if ! alive "$n"; then
            echo "$n port $(port_of "$n"): down"
        elif is_primary "$n"; then
            echo "$n port $(port_of "$n"): primary at $(sql "$n" "select pg_current_wal_lsn()"), sync $(sql "$n" "select coalesce(string_agg(application_name || '=' || sync_state, ' '), 'none') from pg_stat_replication")"
        else
            echo "$n port $(port_of "$n"): standby at $(sql "$n" "select pg_last_wal_replay_lsn()")"
        fi
    done
}

kill_node() { # SIGKILL the postmaster: no shutdown checkpoint, as a crash
    local pid
    pid=$(head -1 "$DIR/$1/postmaster.pid")
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    # Its children die with it; wait for the port to be free.
    sleep 0.2
    echo "killed $1 (pid $pid)" >&2
}

kill_standby() {
    local p n
    p=$(primary) || { echo "pg-cluster: no primary" >&2; exit 1; }
    for n in $(others "$p"); do
        if alive "$n"; then
            kill_node "$n"
            return
        fi
    done
    echo "pg-cluster: no standby alive" >&2
    exit 1
}

kill_primary() {
    local p
    p=$(primary) || { echo "pg-cluster: no primary" >&2; exit 1; }
    kill_node "$p"
}

promote() {
    if primary >/dev/null; then
        echo "pg-cluster: a primary is still up ($(primary)); kill it first" >&2
        exit 1
    fi
    # The most advanced standby: the one that received the most WAL.
    local best="" best_lsn="" n lsn
    for n in "${NODES[@]}"; do
        alive "$n" || continue
        lsn=$(sql "$n" "select coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())")
        if [[ -z $best ]] || [[ $(sql "$n" "select '$lsn'::pg_lsn > '$best_lsn'::pg_lsn") == t ]]; then
            best=$n
            best_lsn=$lsn
        fi
    done
    [[ -n $best ]] || { echo "pg-cluster: no standby alive to promote" >&2; exit 1; }
    as_pg "$BIN/pg_ctl" -D "$DIR/$best" -w -t 60 promote >/dev/null
    sql "$best" "alter system set synchronous_standby_names = '$(quorum_for "$best")'" >/dev/null
    sql "$best" "select pg_reload_conf()" >/dev/null
    # Repoint the other live standby at the new primary.
    for n in $(others "$best"); do
        alive "$n" || continue
        sql "$n" "alter system set primary_conninfo = 'host=127.0.0.1 port=$(port_of "$best") user=postgres application_name=$n'" >/dev/null
        sql "$n" "select pg_reload_conf()" >/dev/null
    done
    echo "promoted $best at $best_lsn" >&2
    url_of "$best"
}

rejoin() {
    local n=${1:?rejoin needs a node: n1, n2 or n3} p
    if alive "$n"; then
        echo "pg-cluster: $n is running" >&2
        exit 1
    fi
    p=$(primary) || { echo "pg-cluster: no primary to rejoin" >&2; exit 1; }
    if [[ ! -f $DIR/$n/standby.signal ]]; then
        # A former primary may hold WAL the new primary never had: clone it
        # afresh from the new primary (pg_rewind would need WAL back to
        # before the divergence, which a busy primary has recycled).
        rm -rf "${DIR:?}/$n"
        as_pg "$BIN/pg_basebackup" -D "$DIR/$n" -R -X stream -c fast \
            -d "host=127.0.0.1 port=$(port_of "$p") user=postgres application_name=$n" >/dev/null
        echo "port = $(port_of "$n")" | as_pg tee -a "$DIR/$n/postgresql.conf" >/dev/null
        echo "synchronous_standby_names = '$(quorum_for "$n")'" |
            as_pg tee -a "$DIR/$n/postgresql.auto.conf" >/dev/null
    else
        echo "primary_conninfo = 'host=127.0.0.1 port=$(port_of "$p") user=postgres application_name=$n'" |
            as_pg tee -a "$DIR/$n/postgresql.auto.conf" >/dev/null
    fi
    start_node "$n"
    echo "$n rejoined as a standby of $p" >&2
}

down() {
    local n
    for n in "${NODES[@]}"; do
        if [[ -d $DIR/$n ]] && alive "$n"; then
            as_pg "$BIN/pg_ctl" -D "$DIR/$n" -m immediate -w stop >/dev/null || true
        fi
    done
    rm -rf "$DIR"
}

case ${1:-} in
up) up ;;
status) status ;;
kill-standby) kill_standby ;;
kill-primary) kill_primary ;;
promote) promote ;;
rejoin) rejoin "${2:-}" ;;
down) down ;;
*)
    sed -n '2,22p' "$0" >&2
    exit 2
    ;;
esac
