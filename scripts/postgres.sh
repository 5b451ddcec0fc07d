#!/usr/bin/env bash
# A throwaway PostgreSQL server from the installed binaries (initdb, pg_ctl), for the
# tests, the benchmarks and trying retrieval on PostgreSQL without a server of your own.
#
#   scripts/postgres.sh start DIR [PORT]   # initdb DIR (once), start, print the URL
#   scripts/postgres.sh stop DIR           # stop the server by the pid in DIR
#   scripts/postgres.sh url DIR            # print the URL of the server in DIR
#
# The server listens on 127.0.0.1 only and trusts local logins (no password): it is for
# tests, never for data you want to keep. As root, initdb and pg_ctl refuse to run, so
# they run as the `postgres` user, which then owns DIR. With RETRIEVAL_PG_DURABLE=1 the
# server keeps PostgreSQL's durable defaults (benchmarks); otherwise fsync is off, which
# only matters if the machine itself crashes.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 start DIR [PORT] | stop DIR | url DIR" >&2
    exit 2
fi

as_owner() {
    if [ "$(id -u)" = "0" ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

url() {
    echo "postgresql+psycopg://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
}

case "$cmd" in
start)
    port="${3:-}"
    if [ -z "$port" ]; then
        port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    fi
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [ "$(id -u)" = "0" ]; then
        chown postgres: "$dir"
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner initdb -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    opts="-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200"
    if [ "${RETRIEVAL_PG_DURABLE:-0}" != "1" ]; then
        opts="$opts -c fsync=off -c full_page_writes=off"
    fi
    as_owner pg_ctl -D "$dir/data" -l "$dir/server.log" -w -o "$opts" start >/dev/null \
        || { cat "$dir/server.log" >&2; exit 1; }
    echo "$port" >"$dir/port"
    url
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        pid="$(head -1 "$dir/data/postmaster.pid")"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    ;;
url)
    url
    ;;
*)
    echo "unknown command: $cmd" >&2
    exit 2
    ;;
esac
