"""Read a backup set back: authenticate, check every byte, then stream it into a database.

Design decisions:
- Check first, restore second. The manifest's MAC is verified, then every member file is read once and
  its size and sha256 compared with the manifest, all before a single byte reaches a database. A
  corrupt, truncated, planted or foreign set is rejected with a reason and the live data is untouched.
- PostgreSQL restores into a fresh side database, whose per-table row counts and checksums must equal
  the manifest's before it replaces the live database by renames. A failed restore therefore never
  leaves a half-restored application database behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, BinaryIO

from pyrage import x25519

from reconciler.backup import manifest, pipeline
from reconciler.databases import postgres as pg
from reconciler.errors import PermanentError
from reconciler.plan.backupsets import MANIFEST_SUFFIX
from reconciler.runtimes.base import Endpoint
from reconciler.stores.local import LocalStore
from reconciler.system import failpoints, proc

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


class SetRejected(PermanentError):
    """This set cannot be restored; ``reason`` says why. Older sets may still be fine."""

    def __init__(self, set_name: str, reason: str) -> None:
        self.set_name = set_name
        self.reason = reason
        super().__init__(f"backup set {set_name} rejected: {reason}")


@dataclass(frozen=True)
class CheckedSet:
    name: str
    manifest: dict[str, Any]

    def member(self, service: str) -> dict[str, Any] | None:
        return next((m for m in self.manifest["members"] if m["service"] == service), None)


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
        raise SetRejected(set_name, str(exc)) from None
    if document.get("set") != set_name:
        raise SetRejected(set_name, f"the manifest describes another set ({document.get('set')})")
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
    with store.open(str(member["file"])) as handle:
        try:
            pipeline.decrypt_decompress(handle, out, identity)
        except Exception as exc:  # pyrage raises its own types; report them plainly
            if isinstance(exc, PermanentError):
                raise
            raise PermanentError(f"cannot decrypt {member['file']}: {exc} (wrong identity file?)") from None


def restore_postgres(
    store: LocalStore,
    checked: CheckedSet,
    identity: x25519.Identity | None,
    endpoint: Endpoint,
    bindir: str,
    database: str,
    owner: str,
    swap: bool = True,
) -> dict[str, list[int | str]]:
    """Restore into ``<database>__restoring``, check it against the manifest, then swap it in.

    ``swap=False`` leaves the checked side database staged (``engine/restore_op.py`` commits it later)."""
    member = checked.member("postgres")
    if member is None:
        raise SetRejected(checked.name, "it holds no postgres dump")
    side = f"{database}__restoring"
    pg.recreate_database(endpoint, side, owner)
    try:
        argv = pg.restore_argv(bindir, endpoint, side, owner)
        with pg.tool(endpoint, argv, env=pg.RESTORE_ENV, stdin=proc.PIPE) as restore:
            assert restore.stdin is not None
            proc.widen_pipe(restore.stdin)
            stream_member(store, member, identity, restore.stdin)
            failpoints.hit("restore.pg_restore.streamed")
        with pg.connect(endpoint, side) as conn:
            restored = pg.table_stats(conn)
        expected = member.get("check", {}).get("tables")
        if expected is not None and restored != expected:
            differing = sorted(t for t in set(expected) | set(restored) if expected.get(t) != restored.get(t))
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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
