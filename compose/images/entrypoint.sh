#!/bin/sh
# Entrypoint of the locally built test images, modelled on the official postgres and redis images:
# `postgres` initialises $PGDATA on first start from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB
# and runs the server as the postgres user; `redis-server` runs as the redis user in /data; anything
# else is executed as given (the stand-in app, a shell).
set -eu
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}  # the base image sets it (13 on bullseye)
case "${1:-}" in
  postgres)
    shift
    : "${PGDATA:=/var/lib/postgresql/data}"
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 0700 "$PGDATA"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
      user="${POSTGRES_USER:-postgres}"
      db="${POSTGRES_DB:-$user}"
      # Over TCP always a password (scram-sha-256), never trust: without POSTGRES_PASSWORD nobody can log
      # in over the network at all. The superuser connects over the socket (local trust), which only
      # reaches processes in the container and whoever can enter the bind-mounted socket directory.
      auth=scram-sha-256
      pwopt=
      if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        pwfile=$(mktemp)
        printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
        chown postgres "$pwfile"
        pwopt="--pwfile=$pwfile"
      fi
      su postgres -s /bin/sh -c "$PG_BIN/initdb -D '$PGDATA' -U '$user' $pwopt --auth-local=trust --auth-host=$auth -E UTF8 --locale=C.UTF-8" >/dev/null
      [ -n "$pwopt" ] && rm -f "$pwfile"
      echo "listen_addresses = '${POSTGRES_LISTEN_ADDRESSES:-127.0.0.1}'" >> "$PGDATA/postgresql.conf"
      echo "host all all all $auth" >> "$PGDATA/pg_hba.conf"
      if [ "$db" != "postgres" ]; then
        su postgres -s /bin/sh -c "$PG_BIN/postgres -D '$PGDATA' -c listen_addresses='' -k /run/postgresql" &
        until su postgres -s /bin/sh -c "$PG_BIN/pg_isready -q -h /run/postgresql -U '$user' -d postgres"; do sleep 0.2; done
        su postgres -s /bin/sh -c "psql -q -h /run/postgresql -U '$user' -d postgres -c 'CREATE DATABASE \"$db\"'"
        su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D '$PGDATA' -m fast -w stop" >/dev/null
      fi
    fi
    # A data directory initialised by an older image may still trust the network: it never will again.
    if grep -Eq '^host[[:space:]].*[[:space:]]trust[[:space:]]*$' "$PGDATA/pg_hba.conf"; then
      sed -i -E 's/^(host[[:space:]].*[[:space:]])trust[[:space:]]*$/\1scram-sha-256/' "$PGDATA/pg_hba.conf"
      chown postgres:postgres "$PGDATA/pg_hba.conf"
    fi
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$PG_BIN/postgres" -D "$PGDATA" -k /run/postgresql "$@"
    ;;
  redis-server)
    # Protected mode: without a password, Redis answers only loopback clients (apps on the host network
    # reach it on 127.0.0.1); everyone else gets an error, whatever --bind says.
    shift
    mkdir -p /data
    chown -R redis:redis /data
    cd /data
    exec setpriv --reuid=redis --regid=redis --init-groups redis-server --dir /data --protected-mode yes "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
