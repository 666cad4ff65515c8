"""PostgreSQL: the queries and commands the reconciler needs, whatever the runtime.

Design decisions:
- Identifiers and literals are always composed with ``psycopg.sql`` (never string formatting). A
  role's password never reaches the server: it gets a SCRAM-SHA-256 verifier computed here (what
  psql's ``\\password`` does), so neither a failing statement in the server log nor
  ``log_statement = all`` can show it. Reconciling compares the stored verifier with one recomputed
  from the desired password with the stored salt and iterations.
- ``facts`` (run on every observation) asks ``psql`` instead of psycopg: importing psycopg costs
  ~78 ms here, a psql round trip ~15 ms, and ``plan`` must stay well under 300 ms as a whole. psql
  ships with the server binaries the local runtime needs anyway, and inside containers it is the
  only client there is.
- The application role owns its database, so it can create functions, operators and casts there.
  Every session the reconciler opens as the superuser therefore resolves names in ``pg_catalog``
  only (``SAFE_SEARCH_PATH``: ``connect`` sets it at login, the psql queries set it first):
  PostgreSQL prefers an exact-type match in ``public`` to a ``pg_catalog`` function that needs a
  cast, so ``hash_record_extended(t, 0)`` would otherwise call ``public.hash_record_extended(t,
  integer)`` with superuser rights (CVE-2018-1058). Casts are not schema-qualified and the owner of a
  table's row type may create one to ``text``, so a row is turned into text by calling
  ``record_out`` itself, never by ``::text``. Only ``run_script_as`` (a session that logs in as the
  application role) keeps the default search path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler.databases.engine import staging_name as engine_staging_name
from reconciler.errors import CommandFailed, PermanentError, ReconcilerError, TransientError
from reconciler.runtimes.base import Endpoint
from reconciler.system import proc

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

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
SAFE_SEARCH_PATH = "pg_catalog, pg_temp"
"""Where superuser sessions resolve unqualified names: the catalog only (pg_temp explicitly last)."""
_SAFE_PREAMBLE = f"SET search_path = {SAFE_SEARCH_PATH};\n".encode()


@dataclass(frozen=True)
class PostgresFacts:
    databases: frozenset[str]
    roles: frozenset[str]
    size_bytes: int | None
    version: str


def client_args(endpoint: Endpoint) -> list[str]:
    """``-h -p -U`` for psql, pg_dump and pg_restore (no password: local socket or PGPASSWORD)."""
    host = endpoint.container_host if endpoint.container and endpoint.container_host else endpoint.host
    return ["-h", host, "-p", str(endpoint.port), "-U", endpoint.user]


def tool(
    endpoint: Endpoint,
    argv: list[str],
    env: dict[str, str] | None = None,
    stdin: Any = proc.DEVNULL,
    stdout: Any = proc.DEVNULL,
) -> Any:
    """``proc.streaming`` for a client program: local, or inside the server's container (docker exec)."""
    if endpoint.container is None:
        return proc.streaming(argv, env=env, stdin=stdin, stdout=stdout)
    from reconciler.runtimes import docker

    return docker.streaming(endpoint.container, argv, "postgres", env, stdin, stdout)


def run_tool(endpoint: Endpoint, argv: list[str], input_bytes: bytes, timeout: float) -> bytes:
    """Run a client program to completion with ``input_bytes`` on stdin; return its stdout."""
    if endpoint.container is None:
        return proc.run(argv, input_bytes=input_bytes, timeout=timeout).stdout
    import threading

    output: list[bytes] = []
    with tool(endpoint, argv, stdin=proc.PIPE, stdout=proc.PIPE) as process:
        reader = threading.Thread(target=lambda: output.append(process.stdout.read()))
        reader.start()
        process.stdin.write(input_bytes)
        process.stdin.close()
        reader.join(timeout)
    return b"".join(output)


def connect(
    endpoint: Endpoint, dbname: str = "postgres", autocommit: bool = True, *, safe_search_path: bool = True
) -> psycopg.Connection[tuple[object, ...]]:
    """A session; unless ``safe_search_path`` is False it resolves names in ``pg_catalog`` only."""
    import psycopg

    try:
        return psycopg.connect(
            host=endpoint.host,
            port=endpoint.port,
            user=endpoint.user,
            dbname=dbname,
            connect_timeout=CONNECT_TIMEOUT,
            autocommit=autocommit,
            options=f"-c search_path={SAFE_SEARCH_PATH.replace(' ', '')}" if safe_search_path else None,
        )
    except psycopg.OperationalError as exc:
        raise TransientError(
            f"cannot connect to postgres on port {endpoint.port}: {str(exc).strip()}"
        ) from None


def _host_side(endpoint: Endpoint) -> tuple[Endpoint, str] | None:
    """A container's server, reached by the host's psql through its bind-mounted socket directory.

    The docker runtime binds a host directory at the container's /run/postgresql, so the server's
    socket is on the host too. A host psql process costs ~15 ms; an exec (create, start, inspect,
    plus a process in the container) ~50 ms. Used for read-only observation queries only, and only
    when both the socket and a host psql exist; anything else (a container adopted from Compose without
    that bind, a host without PostgreSQL's client) runs psql inside the container as before.
    """
    if endpoint.container is None or not os.path.exists(
        os.path.join(endpoint.host, f".s.PGSQL.{endpoint.port}")
    ):
        return None
    from reconciler.runtimes.local import postgres_bindir

    try:
        bindir = postgres_bindir()
    except PermanentError:
        return None
    if not os.access(os.path.join(bindir, "psql"), os.X_OK):
        return None
    return Endpoint(endpoint.host, endpoint.port, endpoint.user), bindir


def _read_query(endpoint: Endpoint, bindir: str, args: list[str], script: bytes) -> bytes:
    """stdout of a read-only psql script (``-w``: never wait for a password prompt)."""
    host_side = _host_side(endpoint)
    if host_side is not None:
        local, local_bindir = host_side
        argv = [os.path.join(local_bindir, "psql"), *client_args(local), "-w", *args]
        try:
            return run_tool(local, argv, script, timeout=10)
        except (
            ReconcilerError
        ) as exc:  # e.g. a socket left by a server that is gone: ask inside the container
            log.debug(
                "host psql on %s failed (%s); asking inside container %s", local.host, exc, endpoint.container
            )
    argv = [os.path.join(bindir, "psql"), *client_args(endpoint), *args]
    try:
        return run_tool(endpoint, argv, script, timeout=10)
    except CommandFailed as exc:
        raise TransientError(
            f"cannot query postgres on port {endpoint.port}: {exc.stderr_tail.strip()}"
        ) from None


def facts(endpoint: Endpoint, database: str, bindir: str) -> PostgresFacts:
    args = ["-d", "postgres", "-XAtq", "-F", _FIELD, "-v", f"db={database}", "-v", "ON_ERROR_STOP=1"]
    stdout = _read_query(endpoint, bindir, args, _SAFE_PREAMBLE + _FACTS_QUERY.encode())
    fields = stdout.decode().rstrip("\n").split(_FIELD)
    if len(fields) != 4:
        raise TransientError(f"unexpected answer from postgres on port {endpoint.port}")
    dbs, roles, size, version = fields
    return PostgresFacts(
        frozenset(filter(None, dbs.split(_ITEM))),
        frozenset(filter(None, roles.split(_ITEM))),
        int(size) if size else None,
        version,
    )


def _saslprep(password: str) -> bytes:
    """SASLprep (RFC 4013) as PostgreSQL applies it; a password it rejects is used as raw UTF-8."""
    import stringprep
    import unicodedata

    if password.isascii():
        return password.encode()
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else "" if stringprep.in_table_b1(ch) else ch for ch in password
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21,
        stringprep.in_table_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if any(check(ch) for ch in normalized for check in prohibited):
        return password.encode()
    # RFC 3454 section 6 (bidi), as PostgreSQL's pg_saslprep and libpq check it: right-to-left letters
    # exclude left-to-right ones, and must start and end the string. A password failing it is used raw.
    if any(stringprep.in_table_d1(ch) for ch in normalized) and (
        any(stringprep.in_table_d2(ch) for ch in normalized)
        or not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1]))
    ):
        return password.encode()
    return normalized.encode()


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores in pg_authid.rolpassword (as psql's \\password
    computes it): the server only ever sees this, never the password."""
    import base64
    import hashlib
    import hmac

    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(hashlib.sha256(client_key).digest()).decode()}:{b64(server_key).decode()}"
    )


def verifier_matches(stored: str | None, password: str) -> bool:
    """Does a stored SCRAM verifier belong to ``password``? (Recomputed with its salt and iterations.)"""
    import base64
    import binascii
    import hmac

    if not stored or not stored.startswith("SCRAM-SHA-256$"):
        return False  # no password, or an md5 one: reset it as SCRAM
    try:
        iterations, salt = stored.split("$")[1].split(":")
        expected = scram_verifier(password, base64.b64decode(salt, validate=True), int(iterations))
    except (ValueError, IndexError, binascii.Error):
        return False
    return hmac.compare_digest(expected, stored)


def role_verifier(endpoint: Endpoint, role: str, bindir: str) -> str | None:
    """The role's stored verifier (pg_authid, superuser only), or None when it has no password."""
    args = ["-d", "postgres", "-XAtq", "-v", f"role={role}", "-v", "ON_ERROR_STOP=1"]
    query = b"SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = :'role'"
    return _read_query(endpoint, bindir, args, _SAFE_PREAMBLE + query).decode().strip() or None


def ensure_role_and_database(endpoint: Endpoint, role: str, database: str, password: str | None) -> None:
    """Create the role and database when missing; set the role's password when it differs.

    The password never leaves this process: the server gets a SCRAM verifier computed here, and the
    session does not log its statements, even failing ones (``log_min_error_statement = panic``).
    ``password=None`` leaves an existing role's password as it is.
    """
    from psycopg import sql

    with connect(endpoint) as conn:
        conn.execute("SET log_statement = 'none'")
        conn.execute("SET log_min_error_statement = 'panic'")
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
        if row is None:
            statement = sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role))
            if password is not None:
                statement = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(scram_verifier(password))
                )
            conn.execute(statement)
        elif password is not None and not verifier_matches(str(row[0]) if row[0] else None, password):
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(scram_verifier(password))
                )
            )
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                    sql.Identifier(database), sql.Identifier(role)
                )
            )


RoleState = tuple[str | None, list[tuple[int, list[str]]]]
"""A role's stored verifier and its settings (``ALTER ROLE ... [IN DATABASE ...] SET``) by database oid."""


def role_state(endpoint: Endpoint, role: str) -> RoleState:
    """What a role may change about itself (superuser session): its password and its settings."""
    with connect(endpoint) as conn:
        row = conn.execute("SELECT oid, rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
        if row is None:
            return (None, [])
        settings = conn.execute(
            "SELECT setdatabase, setconfig FROM pg_db_role_setting WHERE setrole = %s ORDER BY 1", (row[0],)
        ).fetchall()
    return (
        None if row[1] is None else str(row[1]),
        [(int(str(db)), [str(c) for c in config or []]) for db, config in settings],  # type: ignore[attr-defined]
    )


def put_role_state(endpoint: Endpoint, role: str, state: RoleState) -> None:
    """Put back what ``role_state`` read (the verifier as is; the settings rows exactly)."""
    from psycopg import sql

    password, settings = state
    with connect(endpoint, autocommit=False) as conn:
        conn.execute("SET log_statement = 'none'")
        conn.execute("SET log_min_error_statement = 'panic'")
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password) if password is not None else sql.SQL("NULL")
            )
        )
        oid = conn.execute("SELECT oid FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
        assert oid is not None
        conn.execute("DELETE FROM pg_db_role_setting WHERE setrole = %s", (oid[0],))
        for database, config in settings:
            conn.execute(
                "INSERT INTO pg_db_role_setting (setdatabase, setrole, setconfig) VALUES (%s, %s, %s)",
                (database, oid[0], config),
            )
        conn.commit()


def database_settings(endpoint: Endpoint, database: str) -> list[str]:
    """A database's own settings (``ALTER DATABASE ... SET``, for every role) and a connection limit."""
    with connect(endpoint) as conn:
        rows = conn.execute(
            "SELECT unnest(s.setconfig) FROM pg_database d JOIN pg_db_role_setting s ON s.setdatabase = d.oid"
            " WHERE d.datname = %s UNION ALL"
            " SELECT 'CONNECTION LIMIT ' || datconnlimit FROM pg_database WHERE datname = %s AND datconnlimit <> -1",
            (database, database),
        ).fetchall()
    return sorted(str(row[0]) for row in rows)


def run_script_as(endpoint: Endpoint, dbname: str, parts: list[tuple[bytes, bytes | None]]) -> None:
    """Run an untrusted plain-SQL script in one transaction, logged in as ``endpoint.user``.

    Over the wire protocol only (no psql, so no backslash commands); COPY data goes through COPY
    FROM STDIN (``parts``: SQL text and None, or a COPY statement and its rows). Any server error
    rolls the whole script back and becomes a ``PermanentError``.
    """
    import psycopg

    with connect(endpoint, dbname, autocommit=False, safe_search_path=False) as conn:
        if conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() != (False,):
            raise PermanentError(f"refusing to run an untrusted script as {endpoint.user}: it is a superuser")
        try:
            with conn.transaction(), conn.cursor() as cursor:
                for statements, copy_data in parts:
                    if copy_data is None:
                        cursor.execute(statements)  # untrusted SQL, no parameters: simple query protocol
                    else:
                        with cursor.copy(statements) as copy:
                            copy.write(copy_data)
        except psycopg.Error as exc:
            raise PermanentError(str(exc).strip().splitlines()[0]) from None


# -- backup support ---------------------------------------------------------------------------------

_TABLES_QUERY = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 1, 2
"""


# How a row is hashed for the table checksums. ``record`` (hash_record_extended, PostgreSQL >= 14)
# hashes the record itself; ``text`` (hashtextextended over the row's text form) works on every
# version and for column types without a hash function (json, point). The manifest records the
# method per table, and a check recomputes with the recorded one: the two give different sums.
# Both run with the safe search path; ``text`` calls record_out (what ``t::text`` does unless the
# table's owner created a cast from its row type).
ROW_HASHES = {
    "record": "hash_record_extended(t, 0)",
    "text": "hashtextextended(textin(record_out(t)), 0)",
}


def table_stats(
    conn: psycopg.Connection[tuple[object, ...]], methods: Mapping[str, str] | None = None
) -> dict[str, list[Any]]:
    """Per table: [row count, order-independent checksum of every row, the row-hash method used].

    The checksum is the sum of a 64-bit hash of each row, so it does not depend on physical order
    (a restore or a VACUUM FULL reorders rows) but changes when any value of any row changes. By
    default it hashes the record itself (``record``, ~3x faster than hashing each row's text form, and
    it parallelises), falling back to ``text`` where the record cannot be hashed (a json column, or a
    server older than 14). ``methods`` forces a method per table (to recompute what a manifest
    recorded); a forced method this server cannot compute yields the checksum ``None``.
    """
    from psycopg import errors, sql

    stats: dict[str, list[Any]] = {}
    for schema, table in conn.execute(_TABLES_QUERY).fetchall():
        key = f"{schema}.{table}"
        name = sql.SQL("{}.{}").format(sql.Identifier(str(schema)), sql.Identifier(str(table)))
        forced = (methods or {}).get(key)
        candidates = [forced] if forced in ROW_HASHES else list(ROW_HASHES)
        row, used = None, None
        for method in candidates:
            assert method is not None
            query = sql.SQL(
                "SELECT count(*), coalesce(sum(" + ROW_HASHES[method] + "), 0)::text FROM {} t"
            ).format(name)
            try:
                with conn.transaction():
                    row = conn.execute(query).fetchone()
                used = method
                break
            except errors.UndefinedFunction:
                continue  # e.g. a json or point column, or PostgreSQL 13: no hash function for the record
        if row is None:  # the forced method cannot be computed here: count rows only
            counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()
            assert counted is not None
            stats[key] = [int(counted[0]), None, forced]  # type: ignore[call-overload]
            continue
        stats[key] = [int(row[0]), str(row[1]), str(used)]  # type: ignore[call-overload]
    return stats


def stats_differ(expected: Mapping[str, Any], restored: Mapping[str, Any]) -> list[str]:
    """Tables whose row count or checksum differ; a checksum missing on either side is not compared
    (a method the restoring server cannot compute), and old two-element entries compare as they are."""
    differing = []
    for table in sorted(set(expected) | set(restored)):
        want, have = expected.get(table), restored.get(table)
        counts_differ = want is None or have is None or int(want[0]) != int(have[0])
        comparable = bool(want and have and want[1] is not None and have[1] is not None)
        if counts_differ or (comparable and str(want[1]) != str(have[1])):  # type: ignore[index]
            differing.append(table)
    return differing


def dump_argv(
    bindir: str, endpoint: Endpoint, database: str, snapshot: str | None, options: list[str]
) -> list[str]:
    """pg_dump in custom format, uncompressed: zstd compresses better and faster downstream."""
    argv = [
        os.path.join(bindir, "pg_dump"),
        *client_args(endpoint),
        "-Fc",
        "-Z0",
        "-d",
        database,
    ]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    return argv + list(options)


def restore_argv(bindir: str, endpoint: Endpoint, database: str, role: str) -> list[str]:
    """pg_restore from stdin into an empty side database, objects owned by the application role.

    No ``--single-transaction``: the side database already makes the restore all-or-nothing (it
    replaces the live one only after it is complete and checked), and one huge transaction costs ~10%.
    """
    return [
        os.path.join(bindir, "pg_restore"),
        *client_args(endpoint),
        "-d",
        database,
        "--no-owner",
        f"--role={role}",
        "--exit-on-error",
    ]


# Index builds during a restore are the slow part; give them more memory than the 64 MB default.
RESTORE_ENV = {"PGOPTIONS": "-c maintenance_work_mem=256MB -c synchronous_commit=off"}


def terminate_connections(conn: psycopg.Connection[tuple[object, ...]], database: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    )


# PostgreSQL truncates a longer identifier to 63 bytes without an error: `<63-byte name>__restoring` *is*
# the live database, and staging a restore into it, or dropping it when a restore rolls back, would drop
# the live data.
MAX_NAME_BYTES = 63


def staging_name(database: str, suffix: str) -> str:
    """``<database><suffix>`` whole, never truncated to the live name (``engine.staging_name``)."""
    return engine_staging_name(database, suffix, MAX_NAME_BYTES, "postgres")


def recreate_database(endpoint: Endpoint, database: str, owner: str) -> None:
    from psycopg import sql

    with connect(endpoint) as conn:
        terminate_connections(conn, database)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                sql.Identifier(database), sql.Identifier(owner)
            )
        )


def swap_databases(endpoint: Endpoint, live: str, replacement: str) -> None:
    """Put ``replacement`` in place of ``live`` by renames; the old data is dropped only afterwards."""
    from psycopg import sql

    old = staging_name(live, "__replaced")
    with connect(endpoint) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(old)))
        terminate_connections(conn, live)
        terminate_connections(conn, replacement)
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (live,)).fetchone()
        if exists:
            conn.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(live), sql.Identifier(old))
            )
        conn.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(replacement), sql.Identifier(live)
            )
        )
        if exists:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(old)))


def drop_database(endpoint: Endpoint, database: str) -> None:
    from psycopg import sql

    with connect(endpoint) as conn:
        terminate_connections(conn, database)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))
