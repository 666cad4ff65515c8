"""MariaDB: the queries and commands the reconciler needs (local runtime).

Design decisions:
- No Python driver: every statement goes through the ``mariadb`` command-line client over the server's
  unix socket, as root, which MariaDB authenticates by ``unix_socket`` (the OS user *is* the
  credential, like PostgreSQL's trust on a 0700 socket directory). A ``Session`` keeps one client
  running with a pipe on stdin, so a transaction can span several statements (a snapshot read while a
  dump runs); it reads results up to a sentinel row. That avoids a new dependency, costs ~10 ms per
  session, and works the same inside a container (``docker exec``) later.
- Secrets never travel in argv: SQL (``IDENTIFIED BY``) goes on the client's stdin, which no other
  user can read, and the server does not log it (the general log is off; a failing statement's text is
  not echoed by the client in batch mode, and our errors quote the client's stderr tail only after
  removing the password).
- What a failing client prints never reaches an error, event, status or log as it is: in batch mode
  the ``mariadb`` client echoes the whole failing statement (row data of a dump being loaded, a
  password hash) between dashed lines, and server messages quote values (``Duplicate entry '<row
  data>' for key``, ``near '<statement text>'``). ``scrub_client_error`` drops the echo and keeps
  only the client's ``ERROR <code> (<sqlstate>) at line <n>: ...`` lines, each cut to the text before
  its first quote and after its last (``Duplicate entry … for key``, ``The table … is full``: robust to
  values that hold quotes themselves), an errno at the end rewritten from its number, at most 300
  characters. The raw text stays on the exception as ``evidence`` for the fault policy only.
  Applied to every client that receives data (the loader, ``run_sql``, ``Session``); mariadb-dump's
  own messages quote only its own queries and stay whole (they name a bad option).
- Identifiers are quoted with backticks (a backtick doubled), literals with single quotes (a quote and a
  backslash escaped): the spec allows only plain names, and this keeps anything else inert.
- A backup is ``mariadb-dump --single-transaction`` (InnoDB: a consistent snapshot without locking
  writers for the duration). The manifest's per-table statistics must describe *exactly* what the dump
  holds, so they are read in a second transaction opened on the same instant: a session holds commits
  back (``BACKUP STAGE BLOCK_COMMIT``, what mariabackup uses; lighter than ``FLUSH TABLES WITH READ
  LOCK``: running statements and reads go on) while both snapshots are taken (ours first, then the
  dump's, recognised by the dump writing its first table), then lets go: commits wait milliseconds,
  not the length of the dump.
- Per-table checksum: row count plus the sum of the first 60 bits of sha256 over each row's quoted
  column values (``QUOTE`` tells NULL from the string 'NULL'), so it is order-independent and any
  server recomputes it after a restore. ``CHECKSUM TABLE`` was not used: it depends on the row format
  and the server version, and would reject a set restored into a newer server.
- The drain of a mode switch locks every account except the server's own (root, mysql, mariadb.sys,
  PUBLIC) with ``ALTER USER ... ACCOUNT LOCK`` and kills every other connection (its open transaction
  rolls back: never acknowledged); the engine stays in as root over the unix socket. The lock lives in
  the ``mysql`` schema, *inside the data directory*, so the copy starts closed exactly like
  PostgreSQL's pg_hba block; the accounts the drain locked are listed in a file in the data directory
  (copied too), so opening unlocks those and never an account an administrator locked.
- This module is the whole engine below the engine layer: ``MARIADB`` implements
  ``databases/engine.Engine`` and carries the local runtime's ``ServerRecipe``.
- Restore loads the dump into ``<db>__restoring`` and swaps all tables in with one ``RENAME TABLE``
  statement (atomic in MariaDB); the old tables go to ``<db>__replaced`` and are dropped after.
  MariaDB cannot move views, triggers, routines or events to another database (and refuses to move a
  table that has triggers), so those travel as their definitions: once the side database is checked,
  ``mark_staged`` reads each one's ``SHOW CREATE`` text (with its sql_mode, character set and time
  zone, as mariadb-dump writes them) into a table ``__reconciler_objects`` of the side database and
  drops the side's triggers, then sets the flag table. The swap drops the live triggers (their tables
  are being replaced), and the one ``RENAME TABLE`` moves the flag *and* the definitions table into
  ``<db>__replaced``. As long as that table exists there, the swap (re-)does the rest, idempotently:
  drop every live view, trigger, routine and event, create the backup's from their definitions
  (``EXECUTE IMMEDIATE``, views in dependency order by retrying), check each one's digest against
  the one recorded in the checked side database, and only then drop the definitions table. A crash
  before the rename redoes it (the flag is still in the side database); a crash after it redoes the
  objects. The application sees the restored tables with the old views/routines for the
  milliseconds between the rename and the re-creation (it is being restored over anyway).
- Views, triggers, routines and events are in the manifest's per-table check too, as
  ``[null, sha256 of the definition, "definition-sha256"]`` (no row count or sum: a view holds no
  rows of its own; its rows are its tables'). Views are keyed by name (they share the tables'
  namespace), the others as ``trigger:<name>``, ``procedure:<name>``, ``function:<name>``,
  ``event:<name>``. A set taken before that (no definition entries) is checked on its tables only.
- Known limit: a trigger or routine whose *text* names its own database (``CREATE TRIGGER shop.t ...
  ON shop.orders``) is written by mariadb-dump as written, so loading it into the side database
  would create it in the live one; MariaDB stores views normalised, so views are not affected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from reconciler.databases.engine import EngineFacts, staging_name
from reconciler.errors import CommandFailed, PermanentError, ReconcilerError, TransientError
from reconciler.runtimes.base import Endpoint
from reconciler.system import failpoints, fs, proc

_END = "\x1ereconciler-end"
RESTORING_SUFFIX = "__restoring"
REPLACED_SUFFIX = "__replaced"
PENDING_TABLE = "__reconciler_swap_pending"
OBJECTS_TABLE = "__reconciler_objects"  # the definitions a swap re-creates in the live database
DEFINITION = "definition-sha256"
DUMP_TABLE_MARKER = b"\n-- Table structure for table "
MAX_NAME_BYTES = 64  # MariaDB refuses a longer database name (ours are ASCII)
SYSTEM_DATABASES = frozenset({"mysql", "information_schema", "performance_schema", "sys"})


def ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0") + "'"


def client_args(endpoint: Endpoint) -> list[str]:
    return ["--socket", os.path.join(endpoint.host, "mariadb.sock"), "--user", endpoint.user]


def _client(endpoint: Endpoint, *extra: str) -> list[str]:
    return ["mariadb", "--no-defaults", *client_args(endpoint), *extra]


_ERROR_LINE = re.compile(r"^(?:ERROR|mariadb: |mysql: )", re.M)
_ERRNO = re.compile(r"\(Errcode: (\d+) \"[^\"]*\"\)\s*$")  # the server's own ending: an errno and its text
_QUOTE = re.compile(r"\"|(?<![A-Za-z])'|'(?![A-Za-z])")  # an apostrophe inside a word (Can't) is no quote
SCRUBBED_LIMIT = 300


def _scrub_line(line: str) -> str:
    """The server's own words of one message: its text before the first quote and after the last one
    (values, statements and paths are quoted; the message's own ending follows the closing quote
    even when a value holds quotes itself), and an errno at the end re-written from its number."""
    errno = _ERRNO.search(line)
    body = line[: errno.start()] if errno else line
    quotes = [m.start() for m in _QUOTE.finditer(body)]
    if len(quotes) >= 2:
        body = body[: quotes[0]] + "…" + body[quotes[-1] + 1 :]
    elif quotes:
        body = body[: quotes[0]] + "…"
    if errno:
        body += f'(Errcode: {errno.group(1)} "{os.strerror(int(errno.group(1)))}")'
    return body.strip()[:200]


def scrub_client_error(text: str) -> str:
    """A mariadb client's stderr without the row data or secrets it may hold (see the module docstring).

    Only the client's own lines (``ERROR ...``) are kept when there are any: the echoed statement
    before them may be cut anywhere by the stderr tail. Otherwise whatever follows the last dashed
    line (the end of an echo)."""
    lines = text.split("\n")  # the client's lines (splitlines would also split inside a value at \x1e)
    if any(_ERROR_LINE.match(line) for line in lines):
        lines = [line for line in lines if _ERROR_LINE.match(line)]
    else:
        dashes = [i for i, line in enumerate(lines) if line.strip() and set(line.strip()) == {"-"}]
        lines = lines[dashes[-1] + 1 :] if dashes else lines
    return "\n".join(_scrub_line(line) for line in lines if line.strip())[-SCRUBBED_LIMIT:]


class ScrubbedFailure(CommandFailed):
    """A client's failure with its stderr scrubbed for every message; ``evidence`` keeps the raw text
    only for the fault policy (``plan/faults`` reads the server's own words in it, e.g. "is full"),
    never shown."""

    def __init__(self, failed: CommandFailed) -> None:
        super().__init__(failed.argv, failed.returncode, scrub_client_error(failed.stderr_tail))
        self.evidence = failed.stderr_tail


@contextlib.contextmanager
def scrubbed() -> Iterator[None]:
    """Re-raise a client's ``CommandFailed`` scrubbed (and without the original chained)."""
    try:
        yield
    except ScrubbedFailure:
        raise
    except CommandFailed as exc:
        raise ScrubbedFailure(exc) from None


def run_sql(
    endpoint: Endpoint, sql: str, database: str | None = None, timeout: float = 120
) -> list[list[str]]:
    """Run ``sql`` (several statements allowed) and return the rows of its output, tab-separated fields."""
    argv = _client(endpoint, "--batch", "--skip-column-names", "--raw", *([database] if database else []))
    try:
        with scrubbed():
            out = proc.run(argv, input_bytes=sql.encode(), timeout=timeout).stdout.decode()
    except ScrubbedFailure as exc:
        if "Can't connect" in exc.evidence:
            raise TransientError(
                f"cannot connect to mariadb at {client_args(endpoint)[1]}: {exc.stderr_tail.strip()}"
            ) from None
        raise
    return [line.split("\t") for line in out.splitlines()]


class Session:
    """One ``mariadb`` client kept open: statements run in order in one connection (transactions)."""

    def __init__(self, endpoint: Endpoint, database: str | None = None) -> None:
        argv = _client(
            endpoint,
            "--batch",
            "--skip-column-names",
            "--raw",
            "--unbuffered",
            *([database] if database else []),
        )
        self.argv = argv
        self.process = proc.spawn(argv, stdin=proc.PIPE, stdout=proc.PIPE, stderr=proc.PIPE)

    def query(self, sql: str) -> list[list[str]]:
        process = self.process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(f"{sql.rstrip().rstrip(';')};\nSELECT '{_END}';\n".encode())
            process.stdin.flush()
        except BrokenPipeError:
            self._failed()
        rows: list[list[str]] = []
        while True:
            line = process.stdout.readline()
            if not line:
                self._failed()
            text = line.decode().rstrip("\n")
            if text == _END:
                return rows
            rows.append(text.split("\t"))

    def _failed(self) -> Any:
        self.process.kill()
        stderr = self.process.stderr.read() if self.process.stderr else b""
        code = self.process.wait()
        raise ScrubbedFailure(CommandFailed(self.argv, code, stderr.decode(errors="replace")[-2000:]))

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# -- facts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MariadbFacts:
    databases: frozenset[str]
    users: frozenset[str]
    size_bytes: int | None
    version: str
    password_hash: str | None  # the application user's stored mysql_native_password hash


def facts(endpoint: Endpoint, database: str, user: str) -> MariadbFacts:
    rows = run_sql(
        endpoint,
        "SELECT 'db', schema_name FROM information_schema.schemata;"
        f"SELECT 'user', user, authentication_string FROM mysql.user WHERE host = 'localhost' OR host = '127.0.0.1';"
        "SELECT 'size', COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
        f"WHERE table_schema = {literal(database)};"
        "SELECT 'version', VERSION();",
        timeout=10,
    )
    dbs = frozenset(r[1] for r in rows if r[0] == "db" and r[1] not in SYSTEM_DATABASES)
    users = frozenset(r[1] for r in rows if r[0] == "user")
    stored = next((r[2] for r in rows if r[0] == "user" and r[1] == user and len(r) > 2), None)
    size = next((int(r[1]) for r in rows if r[0] == "size"), None)
    version = next((r[1] for r in rows if r[0] == "version"), "")
    return MariadbFacts(dbs, users, size, version, stored)


def native_password_hash(password: str) -> str:
    """MariaDB's ``mysql_native_password`` hash: ``*`` + upper hex of sha1(sha1(password))."""
    return "*" + hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest().upper()


def ensure_user_and_database(endpoint: Endpoint, user: str, database: str, password: str | None) -> None:
    """Create the user (for localhost and 127.0.0.1) and the database, grant it; set the password.

    The password is sent as its hash (``IDENTIFIED BY PASSWORD '*...'``), so even a statement log
    would not show it; the SQL travels on stdin, never in argv."""
    statements = [f"CREATE DATABASE IF NOT EXISTS {ident(database)}"]
    for host in ("localhost", "127.0.0.1"):
        account = f"{literal(user)}@{literal(host)}"
        statements.append(f"CREATE USER IF NOT EXISTS {account}")
        if password is not None:
            statements.append(
                f"ALTER USER {account} IDENTIFIED BY PASSWORD {literal(native_password_hash(password))}"
            )
        statements.append(f"GRANT ALL PRIVILEGES ON {ident(database)}.* TO {account}")
    run_sql(endpoint, ";\n".join(statements) + ";")


# -- table statistics ------------------------------------------------------------------------------


def _tables(session: Session, database: str) -> dict[str, list[str]]:
    rows = session.query(
        "SELECT c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
        f"WHERE c.table_schema = {literal(database)} AND t.table_type = 'BASE TABLE' "
        "ORDER BY c.table_name, c.ordinal_position"
    )
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(table, []).append(column)
    return tables


def table_stats(session: Session, database: str) -> dict[str, list[Any]]:
    """``{table: [rows, checksum, "sha256-sum"]}`` for every base table, read in the session's snapshot."""
    stats: dict[str, list[Any]] = {}
    for table, columns in sorted(_tables(session, database).items()):
        row = ", ".join(f"QUOTE({ident(c)})" for c in columns)
        rows = session.query(
            f"SELECT COUNT(*), COALESCE(SUM(CAST(CONV(SUBSTRING(SHA2(CONCAT_WS(',', {row}), 256), 1, 15), 16, 10) "
            f"AS UNSIGNED)), 0) FROM {ident(database)}.{ident(table)}"
        )
        stats[table] = [int(rows[0][0]), rows[0][1], "sha256-sum"]
    for name, digest in object_digests(session, database).items():
        stats[name] = [None, digest, DEFINITION]
    return stats


def _object_digest_sql(database: str) -> str:
    """``(key, sha256)`` of every view, trigger, routine and event of ``database``, from the catalogue.

    Everything that makes the object behave, nothing that a faithful restore changes (creation times,
    the database's own collation); a view's definition with its database's qualifier removed (the
    server stores it qualified, so the side database's copy would differ by name only)."""
    db = literal(database)
    return (
        "SELECT table_name, SHA2(CONCAT_WS('|', REPLACE(view_definition, CONCAT('`', table_schema, '`.'), ''), "
        "check_option, definer, security_type, algorithm, character_set_client, collation_connection), 256) "
        f"FROM information_schema.views WHERE table_schema = {db} "
        "UNION ALL SELECT CONCAT('trigger:', trigger_name), SHA2(CONCAT_WS('|', event_object_table, action_timing, "
        "event_manipulation, action_order, action_statement, definer, sql_mode, character_set_client, "
        f"collation_connection), 256) FROM information_schema.triggers WHERE trigger_schema = {db} "
        "UNION ALL SELECT CONCAT(LOWER(type), ':', name), SHA2(CONCAT_WS('|', param_list, returns, body, definer, "
        "security_type, sql_data_access, is_deterministic, sql_mode, comment, character_set_client, "
        f"collation_connection, aggregate), 256) FROM mysql.proc WHERE db = {db} "
        "UNION ALL SELECT CONCAT('event:', event_name), SHA2(CONCAT_WS('|', event_definition, definer, event_type, "
        "execute_at, interval_value, interval_field, starts, ends, status, on_completion, sql_mode, time_zone, "
        f"event_comment, character_set_client, collation_connection), 256) FROM information_schema.events "
        f"WHERE event_schema = {db}"
    )


def object_digests(session: Session, database: str) -> dict[str, str]:
    return {key: digest for key, digest in session.query(_object_digest_sql(database))}


def stats_differ(expected: dict[str, list[Any]], actual: dict[str, list[Any]]) -> list[str]:
    """The tables (and views, triggers, routines, events) whose statistics differ. A set taken before
    definitions were recorded holds none: it is checked on its tables only."""
    if not any(len(v) > 2 and v[2] == DEFINITION for v in expected.values()):
        actual = {k: v for k, v in actual.items() if not (len(v) > 2 and v[2] == DEFINITION)}
    names = sorted(set(expected) | set(actual))
    return [n for n in names if list(expected.get(n, [])[:2]) != list(actual.get(n, [])[:2])]


def database_stats(endpoint: Endpoint, database: str) -> dict[str, list[Any]]:
    with Session(endpoint) as session:
        return table_stats(session, database)


# -- dump and restore --------------------------------------------------------------------------------


def dump_argv(endpoint: Endpoint, database: str, options: Iterable[str]) -> list[str]:
    return [
        "mariadb-dump",
        "--no-defaults",
        *client_args(endpoint),
        "--single-transaction",
        "--quick",
        "--triggers",
        "--routines",
        "--events",
        "--hex-blob",
        MAX_PACKET,  # before the user's options: a --max-allowed-packet of theirs wins
        *options,
        "--",
        database,
    ]


class SnapshotGate:
    """Hold commits back (``BACKUP STAGE BLOCK_COMMIT``) while the statistics transaction and the dump
    take their snapshots; ``release`` once the dump has started writing tables.

    Non-transactional tables (MyISAM, Aria, MEMORY, ...: any engine but InnoDB) have no snapshot: the
    dump and the statistics read them whenever they get there, so a writer in between makes the set
    disagree with its own manifest (and with the InnoDB tables). Before the gate, a third session
    takes ``FLUSH TABLES <just those> WITH READ LOCK`` and keeps it until the dump has ended and the
    statistics are read (``thaw``): their writers wait for the length of the dump, readers and every
    InnoDB writer go on. Measured choices: ``LOCK TABLES ... READ`` deadlocks (a waiting MyISAM writer
    queues at the table lock ahead of the dump's own read, and holds the backup lock the gate needs);
    the metadata lock of ``FLUSH TABLES ... WITH READ LOCK`` keeps writers waiting *before* either.
    Taken after the gate, it would wait for writers the gate holds back."""

    def __init__(self, endpoint: Endpoint, database: str) -> None:
        self.database = database
        self.lock = Session(endpoint)
        self.stats = Session(endpoint, database)
        self.freeze: Session | None = None
        try:
            self.frozen = [r[0] for r in self.lock.query(_non_transactional_sql(database))]
            if self.frozen:
                tables = ", ".join(f"{ident(database)}.{ident(t)}" for t in self.frozen)
                self.freeze = Session(endpoint)
                self.freeze.query(f"SET SESSION lock_wait_timeout = 60; FLUSH TABLES {tables} WITH READ LOCK")
            self.lock.query(
                "SET SESSION lock_wait_timeout = 60; BACKUP STAGE START; BACKUP STAGE BLOCK_COMMIT"
            )
            self.stats.query(
                "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
            )
            failpoints.hit("backup.mariadb.stats-snapshot")  # tests: a client commits right here
        except BaseException:
            self.close()
            raise
        self.locked = True
        self.released = threading.Event()  # commits flow again (or the gate was closed)

    def release(self) -> None:
        if self.locked:
            self.locked = False
            try:
                self.lock.query("BACKUP STAGE END")
            finally:
                self.released.set()

    def thaw(self) -> None:
        """Let writers of the non-transactional tables go on (the connection's end drops its locks)."""
        freeze, self.freeze = self.freeze, None
        if freeze is not None:
            freeze.close()

    def close(self) -> None:
        self.thaw()
        self.lock.close()
        self.stats.close()
        if hasattr(self, "released"):
            self.released.set()


def _non_transactional_sql(database: str) -> str:
    return (
        "SELECT table_name FROM information_schema.tables WHERE table_schema = "
        f"{literal(database)} AND table_type = 'BASE TABLE' AND engine <> 'InnoDB' ORDER BY table_name"
    )


class GateReader:
    """Pass the dump through unchanged; open the gate when its first table (or its end) goes by."""

    def __init__(self, source: IO[bytes], gate: SnapshotGate) -> None:
        self.source = source
        self.gate = gate
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        chunk = self.source.read(size)
        if self.gate.locked:
            window = self.tail + chunk
            if not chunk or DUMP_TABLE_MARKER in window:
                self.gate.release()
            self.tail = window[-len(DUMP_TABLE_MARKER) :]
        return chunk


def restore_argv(endpoint: Endpoint, database: str) -> list[str]:
    return _client(endpoint, "--batch", "--binary-mode", MAX_PACKET, database)


def recreate_database(endpoint: Endpoint, database: str) -> None:
    run_sql(endpoint, f"DROP DATABASE IF EXISTS {ident(database)}; CREATE DATABASE {ident(database)};")


def drop_database(endpoint: Endpoint, database: str) -> None:
    run_sql(endpoint, f"DROP DATABASE IF EXISTS {ident(database)};")


def database_exists(endpoint: Endpoint, database: str) -> bool:
    rows = run_sql(
        endpoint, f"SELECT 1 FROM information_schema.schemata WHERE schema_name = {literal(database)};"
    )
    return bool(rows)


# kind: SHOW CREATE statement and the columns of its row holding the definition, the sql_mode, the time
# zone and the character_set_client (collation_connection follows it)
_SHOW_CREATE: dict[str, tuple[str, int, int | None, int | None, int]] = {
    "view": ("SHOW CREATE VIEW", 1, None, None, 2),
    "trigger": ("SHOW CREATE TRIGGER", 2, 1, None, 3),
    "procedure": ("SHOW CREATE PROCEDURE", 2, 1, None, 3),
    "function": ("SHOW CREATE FUNCTION", 2, 1, None, 3),
    "event": ("SHOW CREATE EVENT", 3, 1, 2, 4),
}
_DROP = {
    "view": "VIEW",
    "trigger": "TRIGGER",
    "procedure": "PROCEDURE",
    "function": "FUNCTION",
    "event": "EVENT",
}
_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "0": "\0"}


def _unescape(field: str) -> str:
    """A field of the client's batch output (without ``--raw``): backslash, tab, newline, NUL escaped."""
    out, chars = [], iter(field)
    for char in chars:
        out.append(_UNESCAPE.get(next(chars, ""), "") if char == "\\" else char)
    return "".join(out)


def _key(kind: str, name: str) -> str:
    """An object's name in the statistics (views share the tables' namespace)."""
    return name if kind == "view" else f"{kind}:{name}"


def _objects(session: Session, database: str) -> list[tuple[str, str]]:
    """``(kind, name)`` of every view, trigger, routine and event, in the order to re-create them:
    views (dependencies are resolved by retrying), routines, triggers by table and firing order, events."""
    db = literal(database)
    rows = session.query(
        f"SELECT 'view', table_name, 0, '' FROM information_schema.views WHERE table_schema = {db} "
        f"UNION ALL SELECT LOWER(type), name, 1, '' FROM mysql.proc WHERE db = {db} "
        "UNION ALL SELECT 'trigger', trigger_name, 2, CONCAT(event_object_table, '/', LPAD(action_order, 6, '0')) "
        f"FROM information_schema.triggers WHERE trigger_schema = {db} "
        f"UNION ALL SELECT 'event', event_name, 3, '' FROM information_schema.events WHERE event_schema = {db} "
        "ORDER BY 3, 4, 2"
    )
    return [(kind, name) for kind, name, _, _ in rows if kind in _SHOW_CREATE]


def _definitions(endpoint: Endpoint, database: str, objects: list[tuple[str, str]]) -> list[list[str]]:
    """``[kind, name, definition, sql_mode, character_set_client, collation_connection, time_zone]`` each,
    read as mariadb-dump reads them (``SHOW CREATE`` over a utf8mb4 connection)."""
    if not objects:
        return []
    statements = "".join(f"{_SHOW_CREATE[kind][0]} {ident(name)};\n" for kind, name in objects)
    argv = _client(endpoint, "--batch", "--skip-column-names", "--default-character-set=utf8mb4", database)
    out = proc.run(argv, input_bytes=statements.encode(), timeout=120).stdout.decode()
    rows = [[_unescape(f) for f in line.split("\t")] for line in out.splitlines()]
    if len(rows) != len(objects):
        raise TransientError(f"mariadb: {len(objects)} objects in {database}, {len(rows)} definitions read")
    found = []
    for (kind, name), row in zip(objects, rows, strict=True):
        _, column, mode, zone, client = _SHOW_CREATE[kind]
        found.append(
            [
                kind,
                name,
                row[column],
                row[mode] if mode is not None else "",
                row[client],
                row[client + 1],
                row[zone] if zone is not None else "SYSTEM",
            ]
        )
    return found


def mark_staged(endpoint: Endpoint, side: str) -> None:
    """Flag ``side`` as checked and waiting to be swapped in. The swap's one ``RENAME TABLE`` moves the
    flag out with the tables, so a swap interrupted after it is never done twice (which would move the
    restored tables aside and drop them). Before the flag: the definitions of the side's views,
    triggers, routines and events (with their digests, checked against the manifest a moment ago) go
    into ``OBJECTS_TABLE``, and the side's triggers are dropped (a table with triggers cannot move)."""
    with Session(endpoint) as session:
        digests = object_digests(session, side)
        objects = _objects(session, side)
        session.query(
            f"DROP TABLE IF EXISTS {ident(side)}.{ident(OBJECTS_TABLE)}; CREATE TABLE {ident(side)}.{ident(OBJECTS_TABLE)} "
            "(seq INT PRIMARY KEY, kind VARCHAR(16), name VARCHAR(64) CHARACTER SET utf8mb4, definition LONGBLOB, "
            "sql_mode TEXT, cs_client VARCHAR(64), coll_connection VARCHAR(64), time_zone VARCHAR(64), "
            "digest CHAR(64)) ENGINE=InnoDB"
        )
        for seq, (kind, name, definition, mode, client, collation, zone) in enumerate(
            _definitions(endpoint, side, objects)
        ):
            values = ", ".join(
                [str(seq), literal(kind), literal(name), f"UNHEX('{definition.encode().hex()}')"]
                + [literal(v) for v in (mode, client, collation, zone, digests.get(_key(kind, name), ""))]
            )
            session.query(f"INSERT INTO {ident(side)}.{ident(OBJECTS_TABLE)} VALUES ({values})")
        _drop_objects(session, side, ("trigger",))
        session.query(f"CREATE TABLE {ident(side)}.{ident(PENDING_TABLE)} (x int)")


def _drop_objects(session: Session, database: str, kinds: Iterable[str] = tuple(_DROP)) -> None:
    for kind, name in _objects(session, database):
        if kind in kinds:
            session.query(f"DROP {_DROP[kind]} IF EXISTS {ident(database)}.{ident(name)}")


def _recreate_objects(endpoint: Endpoint, session: Session, database: str, replaced: str) -> None:
    """The backup's views, triggers, routines and events into the live ``database``, from their
    definitions in ``replaced``'s ``OBJECTS_TABLE``; idempotent (whatever the live database holds of
    them is dropped first). Each is then checked against the digest of the checked side database."""
    table = f"{ident(replaced)}.{ident(OBJECTS_TABLE)}"
    rows = session.query(f"SELECT seq, kind, name, digest FROM {table} ORDER BY seq")
    _drop_objects(session, database)
    pending = rows
    while pending:  # a view naming a view not created yet fails: retried once the others exist
        failed: list[list[str]] = []
        error: CommandFailed | None = None
        for row in pending:
            statement = (
                "SELECT sql_mode, cs_client, coll_connection, time_zone, definition INTO @m, @c, @l, @z, @d "
                f"FROM {table} WHERE seq = {int(row[0])}; SET SESSION sql_mode = @m, character_set_client = @c, "
                "collation_connection = @l, time_zone = @z; EXECUTE IMMEDIATE @d;"
            )
            try:
                run_sql(endpoint, statement, database)
            except CommandFailed as exc:
                if row[1] != "view":
                    raise
                failed.append(row)
                error = exc
        if error is not None and len(failed) == len(pending):
            raise error
        pending = failed
    live = object_digests(session, database)
    wrong = [_key(kind, name) for _, kind, name, digest in rows if live.get(_key(kind, name)) != digest]
    if wrong:
        raise PermanentError(
            f"mariadb: after the swap, {', '.join(wrong[:5])} in {database} differ from the restored set's "
            "definitions; `reconciler apply` re-creates them"
        )


def swap_databases(endpoint: Endpoint, database: str, side: str) -> None:
    """Replace every table of ``database`` by ``side``'s in one atomic ``RENAME TABLE``, then its views,
    triggers, routines and events by the set's; drop the old ones.

    Only a side flagged by ``mark_staged`` is swapped in; without the flag the swap already happened.
    While the definitions table sits in ``<database>__replaced`` the objects are (re-)created."""
    replaced = database + REPLACED_SUFFIX
    with Session(endpoint) as session:
        live = [r[0] for r in session.query(_base_tables_sql(database))]
        incoming = [r[0] for r in session.query(_base_tables_sql(side))]
        if PENDING_TABLE in incoming:
            incoming.remove(PENDING_TABLE)
            carried = [PENDING_TABLE]
            if OBJECTS_TABLE in incoming:
                incoming.remove(OBJECTS_TABLE)
                carried.append(OBJECTS_TABLE)
            _drop_objects(session, database, ("trigger",))  # a table with triggers cannot move out
            session.query(f"DROP DATABASE IF EXISTS {ident(replaced)}; CREATE DATABASE {ident(replaced)}")
            moves = [f"{ident(database)}.{ident(t)} TO {ident(replaced)}.{ident(t)}" for t in live]
            moves += [f"{ident(side)}.{ident(t)} TO {ident(database)}.{ident(t)}" for t in incoming]
            moves += [f"{ident(side)}.{ident(t)} TO {ident(replaced)}.{ident(t)}" for t in carried]
            session.query("RENAME TABLE " + ", ".join(moves))
            failpoints.hit("mariadb.swap.renamed")  # tests: killed between the rename and the clean-up
        if OBJECTS_TABLE in [r[0] for r in session.query(_base_tables_sql(replaced))]:
            _recreate_objects(endpoint, session, database, replaced)
            failpoints.hit("mariadb.swap.objects")  # tests: killed after the objects, before the clean-up
            session.query(f"DROP TABLE {ident(replaced)}.{ident(OBJECTS_TABLE)}")
        session.query(f"DROP DATABASE IF EXISTS {ident(side)}; DROP DATABASE IF EXISTS {ident(replaced)}")


def _base_tables_sql(database: str) -> str:
    return (
        "SELECT table_name FROM information_schema.tables "
        f"WHERE table_schema = {literal(database)} AND table_type IN ('BASE TABLE', 'SEQUENCE')"
    )


def is_empty(endpoint: Endpoint, database: str) -> bool:
    rows = run_sql(
        endpoint,
        f"SELECT (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = {literal(database)}) + "
        f"(SELECT COUNT(*) FROM mysql.proc WHERE db = {literal(database)}) + "
        f"(SELECT COUNT(*) FROM information_schema.events WHERE event_schema = {literal(database)});",
    )
    return int(rows[0][0]) == 0  # routines and events too: a direct restore would collide with them


# -- the drain (mode switch) --------------------------------------------------------------------------

CLOSED_FILE = ".reconciler-closed.json"
_SYSTEM_USERS = ("root", "mysql", "mariadb.sys", "PUBLIC", "")
_CLOSE_TIMEOUT = 30.0


def close(endpoint: Endpoint, data_dir: str) -> int:
    """Lock every application account and kill its connections; the number of connections killed."""
    system = ", ".join(literal(u) for u in _SYSTEM_USERS)
    path = os.path.join(data_dir, CLOSED_FILE)
    try:
        with open(path) as handle:
            locked = [tuple(a) for a in json.load(handle)["locked"]]
    except FileNotFoundError:
        rows = run_sql(
            endpoint,
            "SELECT user, host FROM mysql.global_priv WHERE user NOT IN (" + system + ") "
            "AND NOT JSON_VALUE(priv, '$.account_locked') <=> 'true';",
        )
        locked = [(user, host) for user, host in rows]
        st = os.stat(data_dir)
        fs.atomic_write_json(path, {"locked": locked}, 0o600)  # first: opening must know what to unlock
        os.chown(path, st.st_uid, st.st_gid)
    statements = [f"ALTER USER {literal(u)}@{literal(h)} ACCOUNT LOCK" for u, h in locked]
    if statements:
        run_sql(endpoint, ";\n".join(statements) + ";")
    killed = 0
    deadline = time.monotonic() + _CLOSE_TIMEOUT
    while True:
        rows = run_sql(
            endpoint,
            "SELECT id FROM information_schema.processlist WHERE id <> CONNECTION_ID() "
            f"AND command NOT IN ('Daemon', 'Binlog Dump') AND user NOT IN ({system}, 'system user', "
            "'event_scheduler', 'unauthenticated user');",
        )
        if not rows:
            return killed
        for (connection,) in rows:
            with contextlib.suppress(ReconcilerError):  # gone meanwhile
                run_sql(endpoint, f"KILL CONNECTION {int(connection)};")
        killed += len(rows)
        if time.monotonic() > deadline:
            raise PermanentError(
                f"mariadb clients on port {endpoint.port} did not exit after KILL CONNECTION"
            )
        time.sleep(0.01)


def reopen(endpoint: Endpoint, data_dir: str) -> None:
    """Unlock the accounts the drain locked (the server must be running from ``data_dir``)."""
    path = os.path.join(data_dir, CLOSED_FILE)
    try:
        with open(path) as handle:
            locked = [tuple(a) for a in json.load(handle)["locked"]]
    except FileNotFoundError:
        return
    statements = [f"ALTER USER {literal(u)}@{literal(h)} ACCOUNT UNLOCK" for u, h in locked]
    if statements:
        run_sql(endpoint, ";\n".join(statements) + ";")
    os.unlink(path)


# -- the server (local runtime) -------------------------------------------------------------------------

# The largest statement or row any of our servers and clients accept (MariaDB's maximum). The default
# (16 MB server and client, 24 MB mariadb-dump) refuses rows a server holds legally: a 9 MB blob written
# by a tiny statement becomes an 18 MB INSERT with --hex-blob, so a set that dumped fine would not load.
# A packet buffer grows only as large as the largest statement actually sent.
MAX_PACKET = "--max-allowed-packet=1G"

SERVER_OPTIONS = (
    # The redo log is RAM on tmpfs and is copied by every mode switch: 32 MB instead of 96.
    "--innodb-log-file-size=32M",
    "--innodb-buffer-pool-size=64M",
    MAX_PACKET,
)


def mariadbd_binary() -> str:
    for candidate in ("mariadbd", "/usr/sbin/mariadbd"):
        found = shutil.which(candidate)
        if found:
            return found
    raise PermanentError("mariadbd not found: install it (apt-get install mariadb-server)")


class MariadbServer:
    """``runtimes.base.ServerRecipe``: mariadbd on 127.0.0.1 and a unix socket, ``--no-defaults`` so the
    host's /etc/mysql configuration (another port, another bind address) never applies."""

    service: str = "mariadb"
    account: str = "mysql"
    data_markers: tuple[str, ...] = ("ibdata1", "mysql")
    # InnoDB memory-maps its redo log when it lives on tmpfs (RAM mode; --innodb-log-file-mmap): its
    # writes do not move the file's mtime, so the switch must copy it again (fs.refresh_copy).
    mapped_files: tuple[str, ...] = ("ib_logfile0",)
    process_names: tuple[str, ...] = ("mariadbd", "mysqld")

    def init_argv(self, data_dir: str) -> list[str]:
        return [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data_dir}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
            *SERVER_OPTIONS,
        ]

    def start_argv(self, data_dir: str, port: int, socket_dir: str, pidfile: str, log_file: str) -> list[str]:
        return [
            mariadbd_binary(),
            "--no-defaults",
            f"--datadir={data_dir}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={os.path.join(socket_dir, 'mariadb.sock')}",
            f"--pid-file={pidfile}",
            f"--log-error={log_file}",
            "--skip-name-resolve",
            *SERVER_OPTIONS,
        ]

    def endpoint(self, socket_dir: str, port: int) -> Endpoint:
        # root over the unix socket, authenticated as the OS user (unix_socket)
        return Endpoint(socket_dir, port, "root")

    # The docker runtime (reconciler/mariadb image, compose/images/mariadb-entrypoint.sh): the same server
    # options; the host's socket directory is bound at /run/mysqld, so ``endpoint`` is the same.
    container_data_dir = "/var/lib/mysql"
    container_socket_dir = "/run/mysqld"
    socket_name = "mariadb.sock"

    def container_command(self, port: int) -> list[str]:
        return [
            "mariadbd",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.container_socket_dir}/{self.socket_name}",
            "--skip-name-resolve",
            *SERVER_OPTIONS,
        ]


# -- the engine ------------------------------------------------------------------------------------------


class _MariadbDump:
    """The statistics are computed in a thread while the dump streams (two server threads, two cores):
    they start once the gate opens, in the snapshot taken under it."""

    def __init__(self, gate: SnapshotGate, stream: Any, version: str) -> None:
        self.gate = gate
        self.stream = GateReader(stream, gate)
        self.version = version
        self._result: dict[str, list[Any]] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._compute, name="mariadb-stats", daemon=True)
        self._thread.start()

    def _compute(self) -> None:
        self.gate.released.wait()
        try:
            if not self.gate.locked:  # not closed before the gate opened
                self._result = table_stats(self.gate.stats, self.gate.database)
        except BaseException as exc:  # handed to the caller by stats()
            self._error = exc

    def stats(self) -> dict[str, list[Any]]:
        self.gate.release()
        self._thread.join()
        self.gate.thaw()  # the dump has ended (its stream was read to the end) and the statistics are in
        if self._error is not None:
            raise self._error
        return self._result

    def abandon(self) -> None:
        self.gate.released.set()
        self._thread.join(timeout=60)


class MariadbEngine:
    """``databases/engine.Engine`` for MariaDB."""

    kind = "mariadb"
    content = "mariadb-dump-sql"
    member_suffix = "mariadb.sql.zst"
    server = MariadbServer()

    def facts(self, endpoint: Endpoint, spec: Any, password: str | None) -> EngineFacts:
        found = facts(endpoint, spec.database, spec.user)
        verdict = ""
        if password is not None and found.password_hash is not None:
            verdict = "" if native_password_hash(password) == found.password_hash else "stale"
        return EngineFacts(found.databases, found.users, found.size_bytes, found.version, verdict)

    def ensure(self, endpoint: Endpoint, database: str, user: str, password: str | None) -> None:
        ensure_user_and_database(endpoint, user, database, password)

    @contextlib.contextmanager
    def dump(self, endpoint: Endpoint, spec: Any) -> Iterator[_MariadbDump]:
        gate = SnapshotGate(endpoint, spec.database)
        try:
            version = gate.stats.query("SELECT VERSION()")[0][0]
            with proc.streaming(
                dump_argv(endpoint, spec.database, spec.dump_options), stdout=proc.PIPE
            ) as dump:
                taking = _MariadbDump(gate, dump.stdout, version)
                try:
                    yield taking
                finally:
                    if taking._thread.is_alive() and gate.locked:  # failed before the gate opened
                        taking.abandon()
        finally:
            gate.close()

    @contextlib.contextmanager
    def load(self, endpoint: Endpoint, database: str) -> Iterator[Any]:
        with scrubbed(), proc.streaming(restore_argv(endpoint, database), stdin=proc.PIPE) as loader:
            yield loader

    def stats(self, endpoint: Endpoint, database: str) -> dict[str, list[Any]]:
        return database_stats(endpoint, database)

    def stats_differ(self, expected: dict[str, list[Any]], actual: dict[str, list[Any]]) -> list[str]:
        return stats_differ(expected, actual)

    def is_empty(self, endpoint: Endpoint, database: str) -> bool:
        return is_empty(endpoint, database)

    def side_name(self, database: str) -> str:
        return staging_name(database, RESTORING_SUFFIX, MAX_NAME_BYTES, "mariadb")

    def create_side(self, endpoint: Endpoint, side: str) -> None:
        recreate_database(endpoint, side)

    def mark_staged(self, endpoint: Endpoint, side: str) -> None:
        mark_staged(endpoint, side)

    def swap_refusal(self, endpoint: Endpoint, database: str) -> str | None:
        return None  # views, triggers, routines and events travel as definitions (swap_databases)

    def swap(self, endpoint: Endpoint, database: str, side: str) -> None:
        swap_databases(endpoint, database, side)  # finishes a swap cut short, else drops the leftovers

    def drop(self, endpoint: Endpoint, database: str) -> None:
        drop_database(endpoint, database)

    def close(self, endpoint: Endpoint, data_dir: str) -> int:
        return close(endpoint, data_dir)

    def open(self, endpoint: Endpoint, data_dir: str) -> None:
        reopen(endpoint, data_dir)


MARIADB = MariadbEngine()
