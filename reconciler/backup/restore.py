"""Read a backup set back: authenticate, check every byte, then stream it into a database.

Design decisions:
- Check first, restore second. The manifest's MAC is verified, then every member file is read once and
  its size and sha256 compared with the manifest, all before a single byte reaches a database. A
  corrupt, truncated, planted or foreign set is rejected with a reason and the live data is untouched.
- PostgreSQL restores into a fresh side database, whose per-table row counts and checksums must equal
  the manifest's before it replaces the live database by renames. A failed restore therefore never
  leaves a half-restored application database behind.
- Every failure is classified by ``plan.faults`` (the one policy): a fault of the set's content raises
  ``SetRejected`` (the caller remembers it and tries an older set); a fault of the host raises
  ``HostFault`` (the set stays a candidate, the operation is retried). The message is the real cause:
  pg_restore's own stderr, the errno of a failed write, age's or zstd's error, never a guess. A pipe
  that breaks because pg_restore stopped reading is not the cause: pg_restore's exit and stderr are.
- Checksums are recomputed with the method the manifest recorded per table (``record`` hashing needs
  PostgreSQL >= 14, ``text`` works everywhere), so a set taken on PostgreSQL 13 checks on 15. A
  method the restoring server cannot compute compares row counts only, never rejects the set.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, BinaryIO

from pyrage import x25519

from reconciler.backup import manifest, physical, pipeline
from reconciler.databases import postgres as pg
from reconciler.databases.engine import Engine
from reconciler.errors import CommandFailed, HostFault, PermanentError
from reconciler.plan import failures, faults
from reconciler.plan.backupsets import MANIFEST_SUFFIX
from reconciler.runtimes.base import Endpoint
from reconciler.stores.local import LocalStore
from reconciler.system import failpoints, proc

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


class SetRejected(PermanentError):
    """This set cannot be restored; ``reason`` says why. Older sets may still be fine."""

    def __init__(self, set_name: str, reason: str, stage: faults.Stage = faults.Stage.CHECKSUM) -> None:
        self.set_name = set_name
        self.reason = reason
        self.stage = stage
        self.code = failures.for_stage(stage)  # auth_error or verify_error
        super().__init__(f"backup set {set_name} rejected: {reason}")


def classified(set_name: str, stage: faults.Stage, message: str, detail: str = "") -> Exception:
    """The exception the policy asks for: ``SetRejected`` for a content fault, else ``HostFault``."""
    if faults.verdict(stage, detail or message) is faults.Verdict.REJECT:
        return SetRejected(set_name, message, stage)
    return HostFault(
        f"backup set {set_name} could not be checked or restored because of a problem of this host, "
        f"not of the set (it stays a candidate; retry once the cause is fixed): {message}"
    )


def classify_failure(
    set_name: str, exc: BaseException, stage: faults.Stage = faults.Stage.SERVER
) -> Exception:
    """Classify an error that escaped a step of checking or restoring a set. ``stage`` says which
    step: ``LOAD`` for the engine's loader (its stderr decides), ``SERVER`` (the default) for anything
    around it, such as initdb or a server start, which is the host's whatever it printed."""
    if isinstance(exc, SetRejected | HostFault):
        return exc
    if isinstance(exc, CommandFailed):
        tool = os.path.basename(exc.argv[0]) if exc.argv else "a command"
        evidence = getattr(exc, "evidence", exc.stderr_tail)  # a scrubbed client's raw words (never shown)
        return classified(set_name, stage, f"{tool} failed: {exc.stderr_tail.strip()}", evidence)
    return classified(set_name, stage, str(exc) or type(exc).__name__)


@dataclass(frozen=True)
class CheckedSet:
    name: str
    manifest: dict[str, Any]

    def member(self, service: str) -> dict[str, Any] | None:
        """The service's logical member (the restore path); a physical base backup is ``base()``."""
        return next(
            (
                m
                for m in self.manifest["members"]
                if m["service"] == service and m.get("content") != physical.CONTENT
            ),
            None,
        )

    def base(self) -> dict[str, Any] | None:
        """PostgreSQL's physical base backup, when the set holds one (``backup.continuous``)."""
        return next((m for m in self.manifest["members"] if m.get("content") == physical.CONTENT), None)


def load_and_check(store: LocalStore, set_name: str, mac_key: bytes | None) -> CheckedSet:
    try:
        with store.open(f"{set_name}{MANIFEST_SUFFIX}") as handle:
            data = handle.read(4 * 1024 * 1024)
    except FileNotFoundError:
        raise SetRejected(set_name, "incomplete: it has no manifest") from None
    try:
        document = manifest.decode(data)
        manifest.verify(document, mac_key)
    except manifest.ManifestRejected as exc:
        raise SetRejected(set_name, str(exc), faults.Stage.AUTHENTICATE) from None
    if document.get("set") != set_name:
        raise SetRejected(
            set_name, f"the manifest describes another set ({document.get('set')})", faults.Stage.AUTHENTICATE
        )
    for member in document["members"]:
        _check_member(store, set_name, member)
    return CheckedSet(set_name, document)


def _check_member(store: LocalStore, set_name: str, member: dict[str, Any]) -> None:
    name = str(member["file"])
    digest = hashlib.sha256()
    size = 0
    try:
        with store.open(name) as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise SetRejected(set_name, f"member {name} is missing") from None
    except OSError as exc:
        raise classified(set_name, faults.Stage.WRITE, f"cannot read {name}: {exc.strerror or exc}") from None
    if size != member["size"]:
        raise SetRejected(
            set_name,
            f"{member['service']} file is {size} bytes, the manifest says {member['size']} (truncated?)",
        )
    if digest.hexdigest() != member["sha256"]:
        raise SetRejected(
            set_name, f"{member['service']} file's sha256 does not match the manifest (corrupted or altered)"
        )


def stream_member(
    store: LocalStore, member: dict[str, Any], identity: x25519.Identity | None, out: BinaryIO
) -> None:
    """Decrypt and decompress one member into ``out``, classifying what goes wrong.

    A ``BrokenPipeError`` propagates untouched: the reader stopped, and its exit status says why.
    Another OSError with an errno is the host's (the write side: a full tmpfs, no file descriptors);
    pyrage's and zstd's errors (an OSError without errno, DecryptError, ZstdError) are the content's.
    """
    name = str(member["file"])
    set_name = name.split(".", 1)[0]  # set names hold no dots
    try:
        handle = store.open(name)
    except OSError as exc:
        raise classified(set_name, faults.Stage.WRITE, f"cannot open {name}: {exc.strerror or exc}") from None
    with handle:
        try:
            pipeline.decrypt_decompress(handle, out, identity)
        except BrokenPipeError:
            raise
        except OSError as exc:
            if exc.errno is not None:
                raise classified(
                    set_name,
                    faults.Stage.WRITE,
                    f"writing the restored {member['service']} data failed: {exc.strerror}",
                ) from None
            raise SetRejected(set_name, f"cannot decrypt {name}: {exc}") from None
        except Exception as exc:  # pyrage and zstandard raise their own types; report them plainly
            if isinstance(exc, PermanentError | HostFault):
                raise
            wrong_key = "no matching keys" in str(exc).lower()
            hint = " (the set is not encrypted to this identity)" if wrong_key else ""
            stage = faults.Stage.AUTHENTICATE if wrong_key else faults.Stage.DECRYPT
            raise SetRejected(set_name, f"cannot decrypt {name}: {exc}{hint}", stage) from None


def restore_postgres(
    store: LocalStore,
    checked: CheckedSet,
    identity: x25519.Identity | None,
    endpoint: Endpoint,
    bindir: str,
    database: str,
    owner: str,
    swap: bool = True,
) -> dict[str, list[Any]]:
    """Restore into ``<database>__restoring``, check it against the manifest, then swap it in.

    ``swap=False`` leaves the checked side database staged (``engine/restore_op.py`` commits it later)."""
    member = checked.member("postgres")
    if member is None:
        raise SetRejected(checked.name, "it holds no postgres dump")
    side = pg.staging_name(database, "__restoring")
    try:
        pg.recreate_database(endpoint, side, owner)
    except Exception as exc:
        raise classify_failure(checked.name, exc) from None
    try:
        argv = pg.restore_argv(bindir, endpoint, side, owner)
        try:
            with pg.tool(endpoint, argv, env=pg.RESTORE_ENV, stdin=proc.PIPE) as restore:
                assert restore.stdin is not None
                proc.widen_pipe(restore.stdin)
                stream_member(store, member, identity, restore.stdin)
                failpoints.hit("restore.pg_restore.streamed")
        except CommandFailed as exc:  # pg_restore's own stderr says whether the dump or the host failed
            raise classify_failure(checked.name, exc, faults.Stage.LOAD) from None
        expected = member.get("check", {}).get("tables")
        try:
            with pg.connect(endpoint, side) as conn:
                methods = {t: str(v[2]) for t, v in (expected or {}).items() if len(v) > 2 and v[2]}
                restored = pg.table_stats(conn, methods)
                differing = pg.stats_differ(expected, restored) if expected is not None else []
                if differing and not methods:
                    # A manifest from before methods were recorded, maybe taken on PostgreSQL 13 (text
                    # hashing): recompute those tables with the text method before calling it a mismatch.
                    retried = pg.table_stats(conn, dict.fromkeys(differing, "text"))
                    restored.update({t: retried[t] for t in differing if t in retried})
                    differing = pg.stats_differ(expected, restored)
        except (SetRejected, HostFault):
            raise
        except Exception as exc:
            raise classify_failure(checked.name, exc) from None
        if differing:
            raise SetRejected(
                checked.name, f"restored tables differ from the manifest: {', '.join(differing[:5])}"
            )
    except BaseException:
        _drop_quietly(endpoint, side)
        raise
    if not swap:
        return restored
    failpoints.hit("restore.postgres.before-swap")
    pg.swap_databases(endpoint, database, side)
    log.info("restored postgres database %s from %s", database, checked.name)
    return restored


def restore_engine(
    engine: Engine,
    store: LocalStore,
    checked: CheckedSet,
    identity: x25519.Identity | None,
    endpoint: Endpoint,
    database: str,
    swap: bool = True,
) -> dict[str, list[Any]]:
    """Load the set's dump into a database and check it against the manifest before it is served.

    Into ``<database>__restoring`` then swapped in by one ``RENAME TABLE`` (``swap=False`` leaves it
    staged); or, when the live database is empty (restore on boot into a fresh server), straight into
    it: nothing is served from it until the restore completes (the restoring marker), and a dump with
    views or triggers, which ``RENAME TABLE`` cannot move, restores too."""
    member = checked.member(engine.kind)
    if member is None:
        raise SetRejected(checked.name, f"it holds no {engine.kind} dump")
    engine.side_name(database)  # refuses a name whose staging database the server cannot hold
    direct = swap and engine.is_empty(endpoint, database)
    target = database if direct else engine.side_name(database)
    try:
        if not direct:
            engine.create_side(endpoint, target)
    except Exception as exc:
        raise classify_failure(checked.name, exc) from None
    try:
        try:
            with engine.load(endpoint, target) as load:
                proc.widen_pipe(load.stdin)
                stream_member(store, member, identity, load.stdin)
                failpoints.hit(f"restore.{engine.kind}.streamed")
        except CommandFailed as exc:  # the client's stderr says whether the dump or the host failed
            raise classify_failure(checked.name, exc, faults.Stage.LOAD) from None
        expected = member.get("check", {}).get("tables")
        try:
            restored = engine.stats(endpoint, target)
        except Exception as exc:
            raise classify_failure(checked.name, exc) from None
        differing = engine.stats_differ(expected, restored) if expected is not None else []
        if differing:
            raise SetRejected(
                checked.name,
                f"restored {engine.kind} tables differ from the manifest: {', '.join(differing[:5])}",
            )
        if not direct:
            engine.mark_staged(endpoint, target)
    except BaseException:
        if not direct:
            try:
                engine.drop(endpoint, target)
            except Exception as exc:  # cleanup must not hide the real error
                log.warning("could not drop %s after a failed restore: %s", target, exc)
        raise
    if swap and not direct:
        failpoints.hit(f"restore.{engine.kind}.before-swap")
        engine.swap(endpoint, database, target)
    log.info("restored %s database %s from %s", engine.kind, database, checked.name)
    return restored


def _drop_quietly(endpoint: Endpoint, database: str) -> None:
    try:
        pg.drop_database(endpoint, database)
    except Exception as exc:  # cleanup must not hide the real error
        log.warning("could not drop %s after a failed restore: %s", database, exc)


def write_redis_rdb(
    store: LocalStore,
    checked: CheckedSet,
    identity: x25519.Identity | None,
    target: str,
    owner: tuple[int, int],
) -> None:
    """Decrypt the set's RDB to ``target`` atomically (the caller stops and starts Redis around it)."""
    member = checked.member("redis")
    if member is None:
        raise SetRejected(checked.name, "it holds no redis snapshot")
    tmp = f"{target}.restoring"
    try:
        with open(tmp, "wb") as out:
            stream_member(store, member, identity, out)
            out.flush()
            os.fsync(out.fileno())
        os.chown(tmp, *owner)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):  # open, fsync, chown...
            raise classified(
                checked.name, faults.Stage.WRITE, f"cannot write {tmp}: {exc.strerror or exc}"
            ) from None
        raise
