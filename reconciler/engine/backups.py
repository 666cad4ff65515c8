"""Backup operations on a stack: take, list, restore, verify, prune; each under the stack's lock.

Design decisions:
- Every operation records its outcome in ``<state_dir>/backups.json`` (last attempt, verification
  results per set, last restore). Retention reads it: nothing is pruned while the newest attempt
  failed, and the newest *verified* set is always kept.
- ``restore`` takes a ``pre-restore`` backup of the current data first (unless told not to), so a
  restore of the wrong set is itself undoable.
- ``verify`` restores into scratch servers on a private tmpfs directory and free ports, compares with
  what the manifest recorded at backup time, and always removes the scratch instance.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.backup import keys
from reconciler.backup.create import create_set, identity_for_restore
from reconciler.backup.restore import (
    SetRejected,
    load_and_check,
    restore_postgres,
    write_redis_rdb,
)
from reconciler.databases import postgres as pg
from reconciler.databases import redis as rd
from reconciler.engine import status
from reconciler.engine.context import StackContext
from reconciler.engine.revision import state_revision
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.plan.actions import RestoreFromBackup
from reconciler.plan.backupsets import MANIFEST_SUFFIX, BackupSet, group_sets, retention
from reconciler.runtimes.local import LocalRuntime, postgres_bindir
from reconciler.stores.local import LocalStore
from reconciler.system import fs

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]


def local_store(ctx: StackContext) -> LocalStore:
    return LocalStore(ctx.spec.resolve(ctx.spec.backup.stores.local.path))


def _record_path(ctx: StackContext) -> str:
    return os.path.join(ctx.state_dir, "backups.json")


def records(ctx: StackContext) -> dict[str, Any]:
    document = fs.read_json(_record_path(ctx))
    return document if isinstance(document, dict) else {}


def _update_records(ctx: StackContext, **changes: Any) -> None:
    document = records(ctx)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    fs.atomic_write_json(_record_path(ctx), document)


def _mac_key(ctx: StackContext) -> bytes | None:
    identity = identity_for_restore(ctx.spec)
    return keys.mac_key(identity) if identity is not None else None


def _endpoints(ctx: StackContext) -> dict[str, Any]:
    observed = ctx.observe()
    endpoints = {}
    for name in ctx.spec.services.configured():
        service = observed.services[name]
        if not service.running or service.port is None:
            raise PermanentError(f"{name} is not running; run `reconciler apply` first")
        # RAM data only: a disk directory made by Compose (no marker of ours) is the user's data.
        ram = service.ram if service.data_dir == service.ram.path else None
        if ram is not None and not ram.initialized:
            raise PermanentError(
                f"{name} serves {ram.path}, which holds no data the reconciler initialised, restored or "
                "moved there (an empty database an image initialised by itself, e.g. after a reboot), while "
                "backup sets exist: a backup of it would become the newest set. Nothing was backed up. "
                "Run `reconciler apply` to restore the newest set first"
            )
        if ram is not None and ram.unclaimed:  # no set exists: it is the only data; adopt it
            ctx.runtime.claim_data_dir(name, ram.path)
        endpoints[name] = ctx.runtime.endpoint(name, service.port)
    return endpoints


def take_backup(
    ctx: StackContext, trigger: str = "manual", progress: Progress | None = None
) -> dict[str, Any]:
    from reconciler.engine.restore_op import refuse_backup_of_incomplete_data

    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        refuse_backup_of_incomplete_data(ctx)
        return _take_backup_locked(ctx, trigger, progress)


def _set_time(store: LocalStore, stack: str) -> datetime:
    """Now, but strictly after the newest set in the store: set names carry whole seconds, and two sets
    named in the same second would sort by their trigger (``-scheduled`` after ``-manual``), so the
    newer data could lose to the older. Waits out the rest of that second (the caller holds the lock)."""
    now = datetime.now(UTC)
    newest = max((s.created for s in group_sets(store.list(), store.name, stack)), default=None)
    if newest is not None and now.replace(microsecond=0) == newest:
        time.sleep(1 - now.microsecond / 1e6)
        now = datetime.now(UTC)
    return now


def _take_backup_locked(ctx: StackContext, trigger: str, progress: Progress | None) -> dict[str, Any]:
    store = local_store(ctx)
    store.clean_partials()
    started = status.now_iso()
    try:
        document = create_set(
            ctx.spec,
            _endpoints(ctx),
            ctx.pg_bindir(),
            store,
            trigger,
            _set_time(store, ctx.spec.stack),
            state_revision(ctx.state_file),
            progress,
        )
    except ReconcilerError as exc:
        _update_records(
            ctx, last_attempt={"started": started, "result": "failed", "error": str(exc), "trigger": trigger}
        )
        raise
    size = sum(int(m["size"]) for m in document["members"])
    _update_records(
        ctx,
        last_attempt={"started": started, "result": "success", "set": document["set"], "trigger": trigger},
        last_success={
            "set": document["set"],
            "finished": status.now_iso(),
            "size": size,
            "seconds": document["seconds"],
        },
    )
    return document


@dataclass(frozen=True)
class SetListing:
    backup_set: BackupSet
    verified: dict[str, Any] | None
    stores: tuple[str, ...] = ("local",)

    def to_dict(self, now: datetime) -> dict[str, Any]:
        s = self.backup_set
        return {
            "name": s.name,
            "created": s.created.isoformat().replace("+00:00", "Z"),
            "age_seconds": int((now - s.created).total_seconds()),
            "trigger": s.trigger,
            "size": s.size,
            "complete": s.complete,
            "stores": list(self.stores),
            "verified": self.verified,
        }


def list_sets(ctx: StackContext, with_remote: bool = False) -> list[SetListing]:
    """Local sets; with ``with_remote``, also those on Drive (a set in both is listed once, both stores)."""
    verified = records(ctx).get("verified", {})
    sets = group_sets(local_store(ctx).list(), "local", ctx.spec.stack)
    listings = [SetListing(s, verified.get(s.name)) for s in sets]
    if not with_remote:
        return listings
    from reconciler.engine.offsite import drive_store, remote_sets

    store = drive_store(ctx)
    if store is None:
        return listings
    try:
        remote = {s.name: s for s in remote_sets(ctx, store)}
    except ReconcilerError as exc:
        log.warning("cannot list %s: %s", store.describe(), exc)
        return listings
    merged = []
    for listing in listings:
        other = remote.pop(listing.backup_set.name, None)
        both = other is not None and other.complete
        merged.append(
            SetListing(listing.backup_set, listing.verified, ("local", "gdrive") if both else ("local",))
        )
    merged += [SetListing(s, verified.get(s.name), ("gdrive",)) for s in remote.values()]
    return sorted(merged, key=lambda entry: (entry.backup_set.created, entry.backup_set.name), reverse=True)


def _choose(ctx: StackContext, set_name: str | None) -> str:
    sets = [listing.backup_set for listing in list_sets(ctx)]
    if set_name:
        if not any(s.name == set_name for s in sets):
            raise PermanentError(f"no backup set named {set_name} in {local_store(ctx).describe()}")
        return set_name
    complete = [s for s in sets if s.complete]
    if not complete:
        raise PermanentError(f"no complete backup set in {local_store(ctx).describe()}")
    return complete[0].name


@dataclass
class RestoreResult:
    set_name: str
    seconds: float
    safety_backup: str | None
    tables: int


def restore(ctx: StackContext, set_name: str | None, safety_backup: bool = True) -> RestoreResult:
    """``reconciler restore``: one journaled operation (``engine/restore_op.py``)."""
    from reconciler.engine.restore_op import restore_set

    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        return restore_set(ctx, set_name, safety_backup)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def verify(ctx: StackContext, set_name: str | None) -> dict[str, Any]:
    """Restore a set into scratch servers on tmpfs, compare with its manifest, record the result."""
    chosen = _choose(ctx, set_name)
    store = local_store(ctx)
    identity = identity_for_restore(ctx.spec)
    started = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="reconciler-verify-", dir="/dev/shm")
    os.chmod(scratch, 0o755)
    runtime = LocalRuntime(f"{ctx.spec.stack}-verify", os.path.join(scratch, "state"))
    result: dict[str, Any] = {"set": chosen, "verified_at": status.now_iso()}
    started_services: list[tuple[str, str]] = []
    try:
        checked = load_and_check(store, chosen, keys.mac_key(identity) if identity else None)
        postgres_member = checked.member("postgres")
        if postgres_member is not None:
            data_dir = os.path.join(scratch, "postgres")
            port = _free_port()
            runtime.init_service("postgres", data_dir)
            runtime.start_service("postgres", data_dir, port)
            started_services.append(("postgres", data_dir))
            endpoint = runtime.endpoint("postgres", port)
            owner = str(postgres_member.get("owner") or "postgres")
            pg.ensure_role_and_database(endpoint, owner, str(postgres_member["database"]), None)
            tables = restore_postgres(
                store, checked, identity, endpoint, postgres_bindir(), str(postgres_member["database"]), owner
            )
            result["tables"] = len(tables)
            result["rows"] = sum(int(v[0]) for v in tables.values())
        redis_member = checked.member("redis")
        if redis_member is not None:
            data_dir = os.path.join(scratch, "redis")
            runtime.init_service("redis", data_dir)
            _, uid, gid = runtime.account("redis")
            write_redis_rdb(store, checked, identity, os.path.join(data_dir, "dump.rdb"), (uid, gid))
            port = _free_port()
            runtime.start_service("redis", data_dir, port)
            started_services.append(("redis", data_dir))
            keys_now = rd.probe(runtime.endpoint("redis", port)).keys
            expected = int(redis_member.get("check", {}).get("keys", keys_now))
            result["redis_keys"] = keys_now
            if keys_now != expected:
                raise SetRejected(
                    chosen, f"redis holds {keys_now} keys after restore, the manifest says {expected}"
                )
        result.update(ok=True, seconds=round(time.monotonic() - started, 3))
    except (SetRejected, ReconcilerError) as exc:
        result.update(
            ok=False, reason=getattr(exc, "reason", str(exc)), seconds=round(time.monotonic() - started, 3)
        )
    finally:
        for name, data_dir in reversed(started_services):
            try:
                runtime.stop_service(name, data_dir)
            except ReconcilerError as exc:
                log.warning("could not stop scratch %s: %s", name, exc)
        shutil.rmtree(scratch, ignore_errors=True)
    _update_records(ctx, verified={chosen: result})
    if result["ok"]:
        document = records(ctx)
        if document.get("rejected", {}).pop(f"local/{chosen}", None) is not None:
            fs.atomic_write_json(_record_path(ctx), document)
    else:
        _reject(ctx, "local", chosen, f"verification failed: {result['reason']}")
    return result


def prune_decision(ctx: StackContext) -> tuple[list[BackupSet], Any]:
    sets = [listing.backup_set for listing in list_sets(ctx)]
    record = records(ctx)
    verified = frozenset(name for name, v in record.get("verified", {}).items() if v.get("ok"))
    failed = record.get("last_attempt", {}).get("result") == "failed"
    protected = frozenset(record.get("protected", []))
    return sets, retention(sets, ctx.spec.backup.retention, datetime.now(UTC), verified, failed, protected)


def prune(ctx: StackContext) -> list[str]:
    with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
        _, decision = prune_decision(ctx)
        delete_sets(ctx, decision.delete)
        return list(decision.delete)


def delete_sets(ctx: StackContext, names: tuple[str, ...] | list[str]) -> None:
    """Delete whole sets. The caller holds the lock and has applied the retention rules."""
    store = local_store(ctx)
    by_name = {s.name: s for s in group_sets(store.list(), store.name, ctx.spec.stack)}
    for name in names:
        if name not in by_name:
            continue
        # The manifest goes first: from then on the set is incomplete and never selected for a
        # restore, so an interrupted prune can never leave a "complete" set with missing members.
        files = sorted(by_name[name].files, key=lambda f: not f.name.endswith(MANIFEST_SUFFIX))
        for stored in files:
            store.delete(stored.name)
        log.info("deleted backup set %s from %s", name, store.describe())


def protect(ctx: StackContext, names: tuple[str, ...]) -> None:
    current = set(records(ctx).get("protected", []))
    _update_records(ctx, protected=sorted(current | set(names)))


def _reject(ctx: StackContext, store: str, set_name: str, reason: str) -> None:
    _update_records(ctx, rejected={f"{store}/{set_name}": reason})
    log.warning("backup set %s (%s) rejected: %s", set_name, store, reason)


def restore_empty_services(ctx: StackContext, action: RestoreFromBackup) -> str:
    """Restore on boot: one journaled operation (``engine/restore_op.py``)."""
    from reconciler.engine import restore_op

    return restore_op.restore_empty_services(ctx, action)
