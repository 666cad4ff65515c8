"""Redis's own, shorter cadence while continuous protection is on (``backup.continuous.redis_every``).

Why: with continuous WAL, PostgreSQL comes back to about the last second, but Redis only from the
newest set's RDB member, so its recovery point was ``backup.cadence`` (an hour). A set is far too
heavy to take every few minutes (a pg_dump, a base backup, retention, Drive), and frequent sets would
push the hourly/daily ones out of ``keep`` counts. So Redis alone is snapshotted between sets
(``backup/redissnap``: BGSAVE → zstd → age into ``<local store>/redis/<stack>/``, a signed sidecar).

Design decisions:
- Position, not clock (``plan/redissnaps``): each snapshot gets a counter above every earlier one (the
  high-water mark is kept in ``backups.json`` under ``redis_snapshots.counter``, so pruning them all
  never makes numbers restart) and records the newest vouched set at that moment (``after_set``).
  Restore on boot loads the newest authenticated snapshot taken after the restored set; a snapshot
  that fails (missing data, corrupt, planted, foreign, does not decrypt) is reported as a
  ``RedisSnapshotRejected`` event and the next older one is tried, then the set's own RDB member.
- A deliberate ``reconciler restore SET`` supersedes every snapshot that exists (its ``supersede``
  step raises ``redis_snapshots.superseded_through`` to the high-water mark, inside the same
  journaled change as the sets it supersedes, and its rollback puts the old value back), just as it
  supersedes the later sets: a reboot brings back what was chosen, not the discarded data.
- Retention keeps only what is useful: snapshots taken after the newest vouched set and not
  superseded, at most ``plan/redissnaps.KEEP``. It runs after every snapshot and after a new set.
  Unauthenticated files in the area are never counted and never deleted (they are reported when a
  restore meets them); set retention never reads this area.
- The snapshot is taken under the stack lock, like a set: it never races a restore or a switch, and
  it is refused while a restore is incomplete (the data would be no set's data).
- Where they live follows ``backup.continuous.placement``: ``spool`` → the local store's area;
  ``offsite`` → nothing on local persistent storage, so the Drive store, in the folder
  ``<sub_path>/redis/<stack>`` (``stores/gdrive`` as it is), staged through RAM (``<ram root>/
  .redis-snapshots``): sealed there, uploaded data first and sidecar last, then removed; at restore
  the sidecars and the chosen data are downloaded there and checked exactly like local ones. Without
  a Drive store, ``offsite`` takes none and Redis's recovery point stays ``backup.cadence``. Drive
  unreachable at boot is reported (``RedisSnapshotsUnavailable``) and the set's RDB is loaded: the
  stack comes up with what the sets hold rather than wait for the network.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

from reconciler.backup import keys, redissnap
from reconciler.backup.create import identity_for_restore, sealing_for
from reconciler.engine import backups, events, records
from reconciler.engine.context import StackContext
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.plan import redissnaps
from reconciler.stores.local import LocalStore
from reconciler.system import clock, failpoints, fs

log = logging.getLogger(__name__)

RECORD = "redis_snapshots"
STAGING = ".redis-snapshots"


class Place(Protocol):
    """Where the snapshots are; ``store`` is the local directory a file is read from once pulled."""

    store: LocalStore

    def names(self) -> list[str]: ...
    def pull(self, name: str) -> None: ...
    def push(self, name: str) -> None: ...
    def remove(self, name: str) -> None: ...
    def done(self) -> None: ...


class LocalPlace:
    """The local store's area: files are already where they are read."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def names(self) -> list[str]:
        return [f.name for f in self.store.list()] if os.path.isdir(self.store.path) else []

    def pull(self, name: str) -> None:
        return None

    def push(self, name: str) -> None:
        fs.fsync_dir(self.store.path)

    def remove(self, name: str) -> None:
        self.store.delete(name)

    def done(self) -> None:
        return None


class DrivePlace:
    """A Drive folder, staged through a directory in RAM (nothing touches local persistent storage)."""

    def __init__(self, drive: Any, staging: LocalStore) -> None:
        self.drive = drive
        self.store = staging

    def names(self) -> list[str]:
        return [f.name for f in self.drive.list()]

    def pull(self, name: str) -> None:
        self.store.ensure_private_dir()
        self.drive.download(name, os.path.join(self.store.path, name))

    def push(self, name: str) -> None:
        self.drive.upload(name, os.path.join(self.store.path, name))
        self.store.delete(name)

    def remove(self, name: str) -> None:
        self.drive.delete(name)
        self.store.delete(name)

    def done(self) -> None:
        """Empty the RAM staging directory (what was pulled to be checked or loaded)."""
        for entry in self.store.list():
            self.store.delete(entry.name)


def _drive(ctx: StackContext, attempts: int = 3, deadline: float = 60) -> Any:
    from reconciler.engine.offsite import drive_store

    store = drive_store(ctx, attempts, deadline)
    if store is None:
        return None
    sub_path = "/".join(filter(None, (store.spec.sub_path, redissnap.AREA, ctx.spec.stack)))
    store.spec = store.spec.model_copy(update={"sub_path": sub_path})  # a folder of their own
    return store


def active(ctx: StackContext) -> bool:
    """Snapshots are taken: continuous protection on, Redis configured, local runtime, and a place for
    them (placement ``spool``: the local store; ``offsite``: a Drive store)."""
    spec = ctx.spec
    continuous = spec.backup.continuous
    placed = continuous.placement == "spool" or (
        spec.backup.stores.gdrive.enabled and bool(spec.backup.stores.gdrive.credentials_file)
    )
    return continuous.enabled and placed and spec.services.redis is not None and spec.runtime == "local"


def place(ctx: StackContext) -> Place:
    if ctx.spec.backup.continuous.placement == "spool":
        return LocalPlace(area(ctx))
    staging = LocalStore(os.path.join(ctx.spec.ram_root, STAGING))
    return DrivePlace(_drive(ctx), staging)


def area(ctx: StackContext) -> LocalStore:
    return redissnap.area(ctx.spec.resolve(ctx.spec.backup.stores.local.path), ctx.spec.stack)


def _record(ctx: StackContext) -> dict[str, int]:
    value = records.read(ctx).document.get(RECORD)
    value = value if isinstance(value, dict) else {}
    return {
        k: int(v) for k, v in value.items() if k in ("counter", "superseded_through") and isinstance(v, int)
    }


def _mac(ctx: StackContext) -> bytes | None:
    identity = identity_for_restore(ctx.spec)
    return keys.mac_key(identity) if identity is not None else None


def _positions(
    ctx: StackContext, where: Place, mac: bytes | None, report: bool = False
) -> list[redissnaps.Snapshot]:
    """The positions of the snapshots whose sidecar authenticates (their data is not read); with
    ``report``, each one that does not is a ``RedisSnapshotRejected`` event."""
    found = []
    for counter in redissnap.counters(where.names()):
        try:
            where.pull(redissnap.sidecar_name(counter))
            found.append(redissnap.position(redissnap.sidecar(where.store, counter, mac, ctx.spec.stack)))
        except redissnap.SnapshotRejected as exc:
            if report:
                _reject(ctx, counter, exc.reason)
    return found


def _newest_set(ctx: StackContext) -> str | None:
    vouched = [name for name, doubt in backups.vouch_local(ctx).items() if doubt is None]
    return redissnaps.newest_set(vouched)


def take(ctx: StackContext) -> dict[str, Any]:
    """Take one snapshot now (the caller holds the stack lock); returns its sidecar."""
    from reconciler.engine.restore_op import refuse_backup_of_incomplete_data

    refuse_backup_of_incomplete_data(ctx)
    service = ctx.observe().services.get("redis")
    if service is None or not service.running or service.port is None:
        raise PermanentError("redis is not running; no snapshot was taken")
    endpoint = ctx.runtime.endpoint("redis", service.port)
    mac = _mac(ctx)
    where = place(ctx)
    try:
        return _take(ctx, where, endpoint, mac)
    finally:
        where.done()


def _take(ctx: StackContext, where: Place, endpoint: Any, mac: bytes | None) -> dict[str, Any]:
    known = _positions(ctx, where, mac)
    counter = redissnaps.next_counter((s.counter for s in known), _record(ctx).get("counter", 0))
    with records.changing(ctx) as document:  # the number is handed out before it is used
        section = document.get(RECORD)
        document[RECORD] = {**(section if isinstance(section, dict) else {}), "counter": counter}
    after = _newest_set(ctx) or ""
    failpoints.hit("redissnap.before-take")
    sealing = sealing_for(ctx.spec)
    snapshot = redissnap.take(where.store, endpoint, counter, after, sealing, ctx.spec.stack, clock.now_iso())
    where.push(redissnap.data_name(counter, sealing))  # the data first: a sidecar names only what exists
    where.push(redissnap.sidecar_name(counter))
    known.append(redissnap.position(snapshot))
    _prune(ctx, where, known)
    return snapshot


def prune(ctx: StackContext) -> list[int]:
    """Delete the snapshots no restore would load (``plan/redissnaps.unneeded``); the caller holds the lock."""
    where = place(ctx)
    try:
        return _prune(ctx, where, _positions(ctx, where, _mac(ctx)))
    finally:
        where.done()


def _prune(ctx: StackContext, where: Place, known: list[redissnaps.Snapshot]) -> list[int]:
    doomed = redissnaps.unneeded(known, _newest_set(ctx), _record(ctx).get("superseded_through", 0))
    for counter in doomed:
        for name in redissnap.file_names(counter):
            where.remove(name)
    if doomed:
        log.info("Redis snapshot retention deleted %d snapshot(s)", len(doomed))
    return doomed


def supersede(document: dict[str, Any]) -> dict[str, int]:
    """In ``reconciler restore``'s supersede step (inside its ``records.changing`` block): every snapshot
    handed out so far is superseded. Returns what a rollback needs to put back."""
    section = document.get(RECORD)
    section = dict(section) if isinstance(section, dict) else {}
    previous = int(section.get("superseded_through", 0))
    section["superseded_through"] = max(previous, int(section.get("counter", 0)))
    document[RECORD] = section
    return {"redis_superseded_through": previous}


def unsupersede(document: dict[str, Any], change: dict[str, Any]) -> None:
    """A rolled-back ``reconciler restore``: the watermark it raised goes back."""
    if "redis_superseded_through" not in change:
        return
    section = document.get(RECORD)
    section = dict(section) if isinstance(section, dict) else {}
    section["superseded_through"] = int(change["redis_superseded_through"])
    document[RECORD] = section


def _reject(ctx: StackContext, counter: int, reason: str) -> None:
    events.emit(
        ctx.state_dir,
        "Warning",
        "RedisSnapshotRejected",
        f"Redis snapshot {counter} is not used: {reason}; the next older snapshot or the set's RDB is",
        code="verify_error",
    )
    log.warning("Redis snapshot %s rejected: %s", counter, reason)


def restore_newest(
    ctx: StackContext, set_name: str, identity: Any, target: str, owner: tuple[int, int]
) -> int | None:
    """Write the newest usable snapshot after ``set_name`` to ``target`` (Redis stopped); returns its
    counter, or None when none is usable (the caller then writes the set's RDB member). Each
    rejection is reported; unauthenticated files in the area are reported too."""
    if not active(ctx):
        return None
    mac = keys.mac_key(identity) if identity is not None else None
    where = place(ctx)
    try:
        return _restore_from(ctx, where, set_name, mac, identity, target, owner)
    except ReconcilerError as exc:  # Drive unreachable: come up with what the set holds, and say so
        events.emit(
            ctx.state_dir,
            "Warning",
            "RedisSnapshotsUnavailable",
            f"the Redis snapshots could not be read ({exc}); Redis is restored from set {set_name}'s RDB",
            code="download_error",
        )
        return None
    finally:
        where.done()


def _restore_from(
    ctx: StackContext,
    where: Place,
    set_name: str,
    mac: bytes | None,
    identity: Any,
    target: str,
    owner: tuple[int, int],
) -> int | None:
    known = _positions(ctx, where, mac, report=True)
    superseded = _record(ctx).get("superseded_through", 0)
    for snapshot in redissnaps.usable_for(known, set_name, superseded):
        try:
            where.pull(str(redissnap.sidecar(where.store, snapshot.counter, mac, ctx.spec.stack)["file"]))
            document = redissnap.check(where.store, snapshot.counter, mac, ctx.spec.stack)
            redissnap.fetch(where.store, document, target, identity, owner)
        except redissnap.SnapshotRejected as exc:
            _reject(ctx, snapshot.counter, exc.reason)
            continue
        events.emit(
            ctx.state_dir,
            "Normal",
            "RedisSnapshotRestored",
            f"Redis restored from snapshot {snapshot.counter} (taken after {snapshot.after_set}), newer "
            f"than set {set_name}'s RDB",
        )
        return snapshot.counter
    return None


def preview(ctx: StackContext, set_name: str) -> list[str]:
    """For ``plan``: which Redis snapshot a restore of ``set_name`` would load (sidecars only)."""
    if not active(ctx):
        return []
    if ctx.spec.backup.continuous.placement != "spool":  # plan stays off the network
        return [
            f"redis: the newest snapshot on Drive taken after {set_name} that authenticates, else its RDB"
        ]
    try:
        superseded = _record(ctx).get("superseded_through", 0)
        usable = redissnaps.usable_for(_positions(ctx, place(ctx), _mac(ctx)), set_name, superseded)
    except (OSError, ReconcilerError) as exc:
        return [f"redis: cannot tell which snapshot will be loaded ({exc})"]
    if not usable:
        return [f"redis: no snapshot newer than {set_name}; its RDB member will be loaded"]
    return [
        f"redis: snapshot {usable[0].counter} (taken after {usable[0].after_set}) instead of {set_name}'s "
        f"RDB member; {len(usable) - 1} older snapshot(s) to fall back on"
    ]


def plan_lines(ctx: StackContext, actions: Any) -> list[str]:
    """``preview`` for the set a planned restore on boot of Redis tries first."""
    from reconciler.plan.actions import RestoreFromBackup

    action = next((a for a in actions if isinstance(a, RestoreFromBackup) and "redis" in a.services), None)
    if action is None or not action.candidates:
        return []
    return preview(ctx, action.candidates[0][1])
