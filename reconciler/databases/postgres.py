"""PostgreSQL: the queries and commands the reconciler needs, whatever the runtime.

Design decisions:
- Identifiers and literals are always composed with ``psycopg.sql`` (never string formatting), and
  a password travels as a bound literal inside one statement that is not logged.
- ``facts`` (run on every observation) asks ``psql`` instead of psycopg: importing psycopg costs
  ~78 ms here, a psql round trip ~15 ms, and ``plan`` must stay well under 300 ms as a whole. psql
  ships with the server binaries the local runtime needs anyway, and inside containers it is the
  only client there is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.errors import CommandFailed, TransientError
from reconciler.runtimes.base import Endpoint
from reconciler.system import proc

if TYPE_CHECKING:
    import psycopg

_FIELD = "\x1f"
_ITEM = "\x1e"
# psql interpolates :'db' as a quoted literal (scripts on stdin only, not -c).
_FACTS_QUERY = (
    "SELECT (SELECT string_agg(datname, E'\\x1e') FROM pg_database WHERE NOT datistemplate),"
    " (SELECT string_agg(rolname, E'\\x1e') FROM pg_roles),"
    " (SELECT pg_database_size(datname) FROM pg_database WHERE datname = :'db'),"
    " current_setting('server_version')"
)

CONNECT_TIMEOUT = 5


@dataclass(frozen=True)
class PostgresFacts:
    databases: frozenset[str]
    roles: frozenset[str]
    size_bytes: int | None
    version: str


def connect(
    endpoint: Endpoint, dbname: str = "postgres", autocommit: bool = True
) -> psycopg.Connection[tuple[object, ...]]:
    import psycopg

    try:
        return psycopg.connect(
            host=endpoint.host,
            port=endpoint.port,
            user=endpoint.user,
            dbname=dbname,
            connect_timeout=CONNECT_TIMEOUT,
            autocommit=autocommit,
        )
    except psycopg.OperationalError as exc:
        raise TransientError(
            f"cannot connect to postgres on port {endpoint.port}: {str(exc).strip()}"
        ) from None


def facts(endpoint: Endpoint, database: str, bindir: str) -> PostgresFacts:
    argv = [
        os.path.join(bindir, "psql"),
        "-h",
        endpoint.host,
        "-p",
        str(endpoint.port),
        "-U",
        endpoint.user,
        "-d",
        "postgres",
        "-XAtq",
        "-F",
        _FIELD,
        "-v",
        f"db={database}",
        "-v",
        "ON_ERROR_STOP=1",
    ]
    try:
        result = proc.run(argv, input_bytes=_FACTS_QUERY.encode(), timeout=10)
    except CommandFailed as exc:
        raise TransientError(
            f"cannot query postgres on port {endpoint.port}: {exc.stderr_tail.strip()}"
        ) from None
    fields = result.stdout.decode().rstrip("\n").split(_FIELD)
    if len(fields) != 4:
        raise TransientError(f"unexpected answer from postgres on port {endpoint.port}")
    dbs, roles, size, version = fields
    return PostgresFacts(
        frozenset(filter(None, dbs.split(_ITEM))),
        frozenset(filter(None, roles.split(_ITEM))),
        int(size) if size else None,
        version,
    )


def ensure_role_and_database(endpoint: Endpoint, role: str, database: str, password: str | None) -> None:
    from psycopg import sql

    with connect(endpoint) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if not exists:
            statement = sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role))
            if password is not None:
                statement = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            conn.execute(statement)
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            )
