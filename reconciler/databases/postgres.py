"""PostgreSQL: the queries and commands the reconciler needs, whatever the runtime.

Design decision: identifiers and literals are always composed with ``psycopg.sql`` (never string
formatting), and a password travels as a bound literal inside one statement that is not logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from reconciler.errors import TransientError
from reconciler.runtimes.base import Endpoint

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


def facts(endpoint: Endpoint, database: str) -> PostgresFacts:
    with connect(endpoint) as conn:
        rows = conn.execute(
            "SELECT (SELECT array_agg(datname::text) FROM pg_database WHERE NOT datistemplate),"
            " (SELECT array_agg(rolname::text) FROM pg_roles),"
            " (SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s),"
            " current_setting('server_version')",
            (database,),
        ).fetchone()
    assert rows is not None
    dbs, roles, size, version = rows
    return PostgresFacts(
        frozenset(dbs or ()),  # type: ignore[call-overload]
        frozenset(roles or ()),  # type: ignore[call-overload]
        int(size) if size is not None else None,  # type: ignore[call-overload]
        str(version),
    )


def ensure_role_and_database(endpoint: Endpoint, role: str, database: str, password: str | None) -> None:
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
