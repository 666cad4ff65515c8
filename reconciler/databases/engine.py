"""The engine interface: what a database engine provides, so that adding one is one module plus tests.

Design decisions:
- The layers (``cli > daemon > engine > observe > backup > databases > runtimes``) stay the spine; an
  engine is not a vertical slice that imports upward. Instead the generic code of every layer asks an
  ``Engine`` (this Protocol) for the engine-specific part: observation asks for ``facts``, the
  ``EnsureDatabase`` step for ``ensure``, a backup for a ``dump`` stream and its per-table statistics,
  a restore for a ``load`` into a side database, a check and a ``swap``, verify for the same in a
  scratch server, the mode switch for ``close``/``open`` (the drain) and a ``fingerprint``. The server
  process itself is a ``runtimes.base.ServerRecipe`` (init, start, stop, find it again), which the
  engine module registers with the local runtime.
- An engine module therefore holds everything about its engine below the engine layer: the client
  protocol, the statements, the recipe. The spec model (``spec/model.py``) stays in the pure layer and
  names the engine by its service key.
- PostgreSQL and Redis predate the interface and keep their own, proven code paths (their switch,
  restore and drain have many tests pinned to them); they are moved onto it when touched for another
  reason, never in a hurry. ``ENGINES`` lists only engines on the interface (MariaDB today).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.errors import PermanentError
from reconciler.runtimes.base import ServerRecipe


@dataclass(frozen=True)
class EngineFacts:
    """What a running server says about itself, for the observation (never a secret)."""

    databases: frozenset[str]
    roles: frozenset[str]
    size_bytes: int | None
    version: str
    # "stale" (the stored password is not the configured one), "unset:VAR" (password_env not set) or ""
    role_password: str = ""


class Dump(Protocol):
    """A consistent dump being taken: ``stream`` is read to its end, then ``stats`` describe exactly it."""

    stream: Any  # a reader (``read(size)``) of the dump's bytes
    version: str  # the server's version, for the manifest

    def stats(self) -> dict[str, list[Any]]: ...


class Engine(Protocol):
    """One database engine serving one application database (the spec has ``database`` and ``user``)."""

    kind: str  # the service key under ``services:`` in state.yaml
    content: str  # the manifest's ``content`` of its member (what a human restores by hand)
    member_suffix: str  # the member file's suffix before ``.age``

    @property
    def server(self) -> ServerRecipe:
        """How the local runtime runs its server."""
        ...

    def facts(self, endpoint: Any, spec: Any, password: str | None) -> EngineFacts:
        """Databases, roles, size, version; ``password`` (the configured one, or None) is only compared."""
        ...

    def ensure(self, endpoint: Any, database: str, user: str, password: str | None) -> None:
        """Create the role/user and the database when missing, set the password; idempotent."""
        ...

    def dump(self, endpoint: Any, spec: Any) -> AbstractContextManager[Dump]:
        """A consistent dump of the application database with the statistics of the same snapshot."""
        ...

    def load(self, endpoint: Any, database: str) -> AbstractContextManager[Any]:
        """A loader of a dump into ``database`` (``proc.streaming``: write the dump to its ``stdin``);
        leaving the block waits for it and raises ``CommandFailed`` with its stderr."""
        ...

    def stats(self, endpoint: Any, database: str) -> dict[str, list[Any]]:
        """Per-table statistics, comparable with a dump's (also the switch's fingerprint)."""
        ...

    def stats_differ(self, expected: dict[str, list[Any]], actual: dict[str, list[Any]]) -> list[str]: ...

    def is_empty(self, endpoint: Any, database: str) -> bool: ...

    def create_side(self, endpoint: Any, side: str) -> None:
        """An empty database to restore into, dropping a leftover."""
        ...

    def side_name(self, database: str) -> str: ...

    def mark_staged(self, endpoint: Any, side: str) -> None:
        """The side database is checked; the swap may take it (and a repeated swap must not)."""
        ...

    def swap_refusal(self, endpoint: Any, database: str) -> str | None:
        """Why the live database cannot be replaced by a swap (said before staging), or None."""
        ...

    def swap(self, endpoint: Any, database: str, side: str) -> None:
        """Replace the live database by the staged side database; idempotent after an interruption."""
        ...

    def drop(self, endpoint: Any, database: str) -> None: ...

    def close(self, endpoint: Any, data_dir: str) -> int:
        """The drain: refuse every client but the engine's own session, end theirs; the number ended.
        The closed state must live in ``data_dir`` so the switch's copy starts closed."""
        ...

    def open(self, endpoint: Any, data_dir: str) -> None:
        """Undo ``close`` on the server running from ``data_dir``."""
        ...


def engines() -> dict[str, Engine]:
    """The engines on the interface, by service key (imported here, so registering their recipes)."""
    from reconciler.databases.mariadb import MARIADB

    return {MARIADB.kind: MARIADB}


def engine_for(service: str) -> Engine | None:
    return engines().get(service)


def server_recipes(services: Iterable[str] | None = None) -> dict[str, ServerRecipe]:
    """What the local runtime is given to run the engines' servers: those of ``services`` (the stack's),
    so a stack without them keeps exactly the run directory it had (``LocalRuntime.run_root`` weighs
    every service account it knows), or all of them."""
    wanted = None if services is None else set(services)
    return {kind: e.server for kind, e in engines().items() if wanted is None or kind in wanted}


def engine_markers(service: str) -> tuple[str, ...] | None:
    """What in a data directory means it holds the service's data, for an engine on the interface."""
    engine = engine_for(service)
    return engine.server.data_markers if engine is not None else None


def engine_mapped_files(service: str) -> tuple[str, ...]:
    """Files of the service's data directory a mode switch copies again whatever their mtime says."""
    engine = engine_for(service)
    return engine.server.mapped_files if engine is not None else ()


def staging_name(database: str, suffix: str, limit: int, kind: str) -> str:
    """``<database><suffix>`` (a restore's ``__restoring``/``__replaced`` database), or ``PermanentError``
    when the server would not keep it whole (``limit`` bytes). Every staging name is made here: a
    server that truncates (PostgreSQL) would otherwise make it the live database, which a restore drops
    and re-creates, and its rollback drops; one that refuses (MariaDB) would fail with a cryptic error.
    Refused, nothing is restored and the live database is never touched."""
    name = database + suffix
    if len(name.encode()) > limit:
        room = limit - len(suffix.encode())
        raise PermanentError(
            f"{kind} database {database!r} is {len(database.encode())} bytes long: a restore stages the set in "
            f"{name!r}, longer than {kind} keeps ({limit} bytes), so nothing was restored and the live database "
            f"was not touched. Rename the database to at most {room} bytes (and services.{kind}.database in "
            "state.yaml) to be able to restore; the backup sets stay usable"
        )
    return name
