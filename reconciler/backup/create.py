"""Take one backup set of every service of a stack.

Design decisions:
- One point in time: Redis forks its snapshot (BGSAVE) first, then PostgreSQL exports a snapshot in a
  REPEATABLE READ transaction; table statistics (row counts, checksums) and ``pg_dump --snapshot``
  both read that same snapshot, so what the manifest says about the data is exactly what the dump
  holds, even while the application keeps writing.
- ``pg_dump -Fc -Z0`` streams through zstd and age straight into the store: nothing is buffered, no
  temporary dump file is written (on a RAM-mode host that file would sit in RAM).
- Fail closed: with ``method: age`` and no recipients, nothing is written.
- The manifest says how it can be checked: each table's entry is [rows, checksum, row-hash method]
  (``record`` on PostgreSQL >= 14, ``text`` on 13 or for unhashable columns), so a server of another
  major version recomputes with the same method; Redis's entry counts keys with a TTL separately.
- The manifest is put last. Any failure before it leaves only member files without a manifest (an
  incomplete set, cleaned up by retention after a grace period); it never leaves a set that looks
  complete, and it never touches older sets.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from pyrage import x25519

from reconciler import __version__
from reconciler.backup import keys, manifest, physical, pipeline
from reconciler.databases import postgres as pg
from reconciler.databases import redis as rd
from reconciler.databases.engine import Engine, engine_for
from reconciler.errors import CommandFailed, PermanentError, ReconcilerError, coded
from reconciler.plan.backupsets import MANIFEST_SUFFIX, set_name
from reconciler.plan.failures import FailureCode
from reconciler.runtimes.base import Endpoint
from reconciler.runtimes.local import postgres_bindir
from reconciler.spec.model import PostgresSpec, StateSpec
from reconciler.spec.units import format_bytes
from reconciler.stores.local import LocalStore, OverLimit
from reconciler.system import clock, failpoints, proc

log = logging.getLogger(__name__)

MEMBER_SUFFIX = {"postgres": "postgres.pgdump.zst", "redis": "redis.rdb.zst"}  # engines: Engine.member_suffix
Progress = Callable[[str, int], None]  # (member, bytes so far)


@dataclass(frozen=True)
class Sealing:
    """How members are encrypted and the manifest authenticated."""

    recipients: list[x25519.Recipient] | None
    recipient_texts: list[str]
    mac_key: bytes | None

    @property
    def suffix(self) -> str:
        return ".age" if self.recipients else ""


def sealing_for(spec: StateSpec) -> Sealing:
    encryption = spec.backup.encryption
    if encryption.method == "none":
        return Sealing(None, [], None)
    if not encryption.recipients:
        raise PermanentError(
            "no backup was written: backup.encryption.recipients is empty and backups are never stored "
            "unencrypted by accident. Run `reconciler keygen` and add the recipient it prints, or set "
            "`backup.encryption: none` to store backups unencrypted on purpose"
        )
    if not encryption.identity_file:
        raise PermanentError(
            "backup.encryption.identity_file is not set: it is needed to sign backup manifests (and to restore)"
        )
    identity = keys.load(spec.resolve(encryption.identity_file))
    return Sealing(
        keys.parse_recipients(encryption.recipients), list(encryption.recipients), keys.mac_key(identity)
    )


@dataclass
class Budget:
    """What is left of ``backup.max_set_size`` for the rest of a set (None: no limit)."""

    limit: int | None
    used: int = 0

    @property
    def left(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)


def _store_member(
    store: LocalStore,
    file_name: str,
    source: pipeline.Readable,
    sealing: Sealing,
    progress: Progress | None,
    member: str,
    budget: Budget,
) -> dict[str, Any]:
    raw_size = 0

    def produce(out: BinaryIO) -> None:
        nonlocal raw_size
        report = (lambda done: progress(member, done)) if progress else None
        raw_size = pipeline.compress_encrypt(source, out, sealing.recipients, report)

    result = store.put_with(file_name, produce, limit=budget.left)
    budget.used += result.size
    return {"file": file_name, "size": result.size, "sha256": result.sha256, "raw_size": raw_size}


def _backup_redis(
    endpoint: Endpoint,
    store: LocalStore,
    base: str,
    sealing: Sealing,
    progress: Progress | None,
    budget: Budget,
) -> dict[str, Any]:
    rdb_path, keys_at_snapshot, expires_at_snapshot = rd.snapshot(endpoint)
    facts = rd.probe(endpoint)
    file_name = f"{base}.{MEMBER_SUFFIX['redis']}{sealing.suffix}"
    if endpoint.container is not None:  # the file is inside the container: stream it out through exec
        from reconciler.runtimes import docker

        try:
            with docker.streaming(endpoint.container, ["cat", rdb_path], "redis", stdout=proc.PIPE) as cat:
                member = _store_member(store, file_name, cat.stdout, sealing, progress, "redis", budget)
        except CommandFailed as exc:
            store.delete(file_name)
            raise coded(exc, FailureCode.DUMP_ERROR) from None
    else:
        with open(rdb_path, "rb") as rdb:  # a later save renames a new file in; this handle keeps ours
            member = _store_member(store, file_name, rdb, sealing, progress, "redis", budget)
    return {
        "service": "redis",
        "content": "redis-rdb",
        "server_version": facts.version,
        **member,
        # keys with a TTL may be gone by the time a restore loads the file: the check allows for them
        "check": {"keys": keys_at_snapshot, "expires": expires_at_snapshot},
    }


def _backup_postgres(
    spec: PostgresSpec,
    endpoint: Endpoint,
    bindir: str,
    store: LocalStore,
    base: str,
    sealing: Sealing,
    progress: Progress | None,
    budget: Budget,
) -> dict[str, Any]:
    with pg.connect(endpoint, spec.database, autocommit=False) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute("SELECT pg_export_snapshot(), current_setting('server_version')").fetchone()
        assert row is not None
        snapshot, version = str(row[0]), str(row[1])
        stats = pg.table_stats(conn)
        argv = pg.dump_argv(bindir, endpoint, spec.database, snapshot, spec.dump_options)
        file_name = f"{base}.{MEMBER_SUFFIX['postgres']}{sealing.suffix}"
        try:
            with pg.tool(endpoint, argv, stdout=proc.PIPE) as dump:
                assert dump.stdout is not None
                member = _store_member(store, file_name, dump.stdout, sealing, progress, "postgres", budget)
        except CommandFailed as exc:
            store.delete(file_name)  # the dump stopped early: what was stored is truncated
            raise coded(exc, FailureCode.DUMP_ERROR) from None
        conn.rollback()
    return {
        "service": "postgres",
        "content": "pg_dump-custom",
        "database": spec.database,
        "owner": spec.user,
        "server_version": version,
        **member,
        "check": {"tables": stats},
    }


def _backup_engine(
    engine: Engine,
    spec: Any,
    endpoint: Endpoint,
    store: LocalStore,
    base: str,
    sealing: Sealing,
    progress: Progress | None,
    budget: Budget,
) -> dict[str, Any]:
    """An engine's consistent dump streamed into the store, with the per-table statistics of the same
    snapshot (for MariaDB: ``mariadb-dump --single-transaction`` and ``mariadb.SnapshotGate``)."""
    file_name = f"{base}.{engine.member_suffix}{sealing.suffix}"
    try:
        with engine.dump(endpoint, spec) as dump:
            member = _store_member(store, file_name, dump.stream, sealing, progress, engine.kind, budget)
            stats = dump.stats()
            version = dump.version
    except CommandFailed as exc:
        store.delete(file_name)  # the dump stopped early: what was stored is truncated
        raise coded(exc, FailureCode.DUMP_ERROR) from None
    return {
        "service": engine.kind,
        "content": engine.content,
        "database": spec.database,
        "owner": spec.user,
        "server_version": version,
        **member,
        "check": {"tables": stats},
    }


def _backup_postgres_base(
    stack: str,
    endpoint: Endpoint,
    bindir: str,
    store: LocalStore,
    base: str,
    sealing: Sealing,
    progress: Progress | None,
    budget: Budget,
) -> dict[str, Any]:
    """The physical member: ``pg_basebackup`` as one tar (its WAL included), see ``backup/physical``."""
    identity = physical.server_identity(endpoint)
    # the stream's slot first (see physical.ensure_slot); docker: with the host's tools, through the
    # bind-mounted socket directory, as the receiver itself connects
    physical.ensure_slot(
        postgres_bindir() if endpoint.container else bindir, endpoint, physical.slot_name(stack)
    )
    argv = physical.basebackup_argv(bindir, pg.client_args(endpoint), base)
    file_name = f"{base}.{physical.MEMBER_SUFFIX}{sealing.suffix}"
    try:
        with pg.tool(endpoint, argv, stdout=proc.PIPE) as basebackup:
            assert basebackup.stdout is not None
            tap = physical.TarTap(basebackup.stdout)
            member = _store_member(store, file_name, tap, sealing, progress, "postgres-base", budget)
        facts = physical.facts(tap)
    except (CommandFailed, physical.BaseBackupIncomplete) as exc:
        store.delete(file_name)  # the stream stopped early or is not a usable base backup
        if isinstance(exc, physical.BaseBackupIncomplete):
            raise PermanentError(f"base backup {base} is unusable: {exc}") from None
        raise
    # when the stream ended: the base is consistent at its stop LSN, which is before this moment, so a
    # point-in-time restore to any later time may start from it (set names have second resolution)
    finished = clock.now().isoformat().replace("+00:00", "Z")
    return {
        "service": "postgres",
        "content": physical.CONTENT,
        **identity,
        **member,
        **facts,
        "finished": finished,
    }


def create_set(
    spec: StateSpec,
    endpoints: dict[str, Endpoint],
    bindir: str,
    store: LocalStore,
    trigger: str,
    now: datetime,
    revision: str | None,
    progress: Progress | None = None,
    sequence: int | None = None,
    size_limit_exempt: bool = False,
) -> dict[str, Any]:
    """Write a complete set into ``store`` and return its manifest. Raises on any failure.

    ``sequence`` (see ``plan/backupsets``) goes into the name and the manifest, so the MAC covers it.
    ``size_limit_exempt``: ``backup.max_set_size`` does not apply (``plan/setsize``)."""
    sealing = sealing_for(spec)
    base = set_name(spec.stack, now, trigger, sequence)
    started = time.monotonic()
    members: list[dict[str, Any]] = []
    written: list[str] = []
    budget = Budget(None if size_limit_exempt else spec.backup.max_set_size)
    try:
        if spec.services.redis is not None:
            members.append(_backup_redis(endpoints["redis"], store, base, sealing, progress, budget))
            written.append(members[-1]["file"])
            failpoints.hit("backup.between-members")
        if spec.services.postgres is not None:
            members.append(
                _backup_postgres(
                    spec.services.postgres,
                    endpoints["postgres"],
                    bindir,
                    store,
                    base,
                    sealing,
                    progress,
                    budget,
                )
            )
            written.append(members[-1]["file"])
            if spec.backup.continuous.enabled:  # after the logical member: older readers pick that one
                failpoints.hit("backup.before-base")
                members.append(
                    _backup_postgres_base(
                        spec.stack, endpoints["postgres"], bindir, store, base, sealing, progress, budget
                    )
                )
                written.append(members[-1]["file"])
        for name, service_spec in spec.services.configured().items():
            engine = engine_for(name)
            if engine is not None:
                members.append(
                    _backup_engine(
                        engine, service_spec, endpoints[name], store, base, sealing, progress, budget
                    )
                )
                written.append(members[-1]["file"])
        document: dict[str, Any] = {
            "format": manifest.FORMAT,
            "set": base,
            "stack": spec.stack,
            "created": now.isoformat().replace("+00:00", "Z"),
            "sequence": sequence,
            "trigger": trigger,
            "mode": spec.mode,
            "runtime": spec.runtime,
            "state_revision": revision,
            "reconciler_version": __version__,
            "host": platform.node(),
            "encryption": {
                "method": "age" if sealing.recipients else "none",
                "recipients": sealing.recipient_texts,
            },
            "members": members,
            "seconds": round(time.monotonic() - started, 3),
        }
        if sealing.mac_key is not None:
            document = manifest.sign(document, sealing.mac_key)
        store.put_bytes(f"{base}{MANIFEST_SUFFIX}", manifest.encode(document))
    except Exception as exc:
        for name in written:  # an incomplete set is useless: do not leave it taking space
            store.delete(name)
        if isinstance(exc, OverLimit) and budget.limit is not None:
            raise _too_large(base, exc, budget) from None
        if isinstance(exc, ReconcilerError):
            raise
        raise PermanentError(f"backup {base} failed: {type(exc).__name__}: {exc}") from None
    log.info("backup set %s written to %s", base, store.describe())
    return document


def _too_large(base: str, exc: OverLimit, budget: Budget) -> PermanentError:
    """The set went past ``backup.max_set_size``: say how far it got and what to do."""
    assert budget.limit is not None
    reached = budget.used + exc.written
    error = PermanentError(
        f"backup {base} stopped: the set went past backup.max_set_size ({format_bytes(budget.limit)} = "
        f"{budget.limit} bytes as stored; the next write would have made it {reached} bytes, in {exc.name}). "
        "Nothing was kept of it and every earlier set is still there. Find what grew (a runaway table?) "
        "or raise backup.max_set_size"
    )
    error.code = FailureCode.TOO_LARGE
    error.facts = {"limit_bytes": budget.limit, "reached_bytes": reached, "member": exc.name}
    return error


def identity_for_restore(spec: StateSpec) -> x25519.Identity | None:
    if spec.backup.encryption.method == "none" and not spec.backup.encryption.identity_file:
        return None
    if not spec.backup.encryption.identity_file:
        raise PermanentError("backup.encryption.identity_file is not set: it is needed to restore")
    path = spec.resolve(spec.backup.encryption.identity_file)
    if spec.backup.encryption.method == "none" and not os.path.exists(path):
        return None
    return keys.load(path)
