#!/bin/sh
# A stand-in for the application (Loomio's app and worker): writes to PostgreSQL and Redis every
# second, and says which mode it was told it runs in (RAM_MODE, set by the reconciler).
set -eu
trap "exit 0" TERM INT  # PID 1 in its container: without a handler, SIGTERM would be ignored until the stop timeout
: "${PGPORT:=5432}" "${REDIS_PORT:=6379}" "${PGDATABASE:=loomio_production}" "${PGUSER:=loomio}"
export PGHOST=127.0.0.1 PGPORT PGDATABASE PGUSER
until psql -Atqc "CREATE TABLE IF NOT EXISTS ticks (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())" 2>/dev/null; do
  sleep 1
done
echo "stand-in app writing to postgres:$PGPORT and redis:$REDIS_PORT (RAM_MODE=${RAM_MODE:-unset})"
while true; do
  psql -Atqc "INSERT INTO ticks DEFAULT VALUES" >/dev/null 2>&1 || echo "postgres unavailable (drained?)"
  redis-cli -p "$REDIS_PORT" INCR ticks >/dev/null 2>&1 || echo "redis unavailable (drained?)"
  sleep 1
done
