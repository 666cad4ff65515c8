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
  superseded, at most ``plan/redissnaps.KEEP``. It runs after every snapshot and after set retention.
  Unauthenticated files in the area are never counted and never deleted (they are reported when a
  restore meets them); set retention never reads this area.
- The snapshot is taken under the stack lock, like a set: it never races a restore or a switch, and
  it is refused while a restore is incomplete (the data would be no set's data).
- Placement ``offsite`` writes nothing to local persistent storage, so it takes no snapshots: Redis's
  recovery point stays ``backup.cadence`` there (said in the docs and in the option).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from reconciler.backup import keys, redissnap
from reconciler.backup.create import identity_for_restore, sealing_for
from reconciler.engine import backups, events, records
from reconciler.engine.context import StackContext
from reconciler.errors import PermanentError
from reconciler.plan import redissnaps
from reconciler.stores.local import LocalStore
from reconciler.system import clock, failpoints, fs

log = logging.getLogger(__name__)

RECORD = "redis_snapshots"


def active(ctx: StackContext) -> bool:
    """Snapshots are taken: continuous protection on, placement spool, Redis configured, local runtime."""
    spec = ctx.spec
    return (
        spec.backup.continuous.enabled
        and spec.backup.continuous.placement == "spool"
        and spec.services.redis is not None
        and spec.runtime == "local"
    )


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


def authenticated(ctx: StackContext, mac: bytes | None) -> list[redissnaps.Snapshot]:
    """The positions of the snapshots whose sidecar authenticates (their data is not read)."""
    store = area(ctx)
    found = []
    for counter in redissnap.listing(store):
        try:
            found.append(redissnap.position(redissnap.sidecar(store, counter, mac, ctx.spec.stack)))
        except redissnap.SnapshotRejected:
            continue
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
    known = authenticated(ctx, mac)
    counter = redissnaps.next_counter((s.counter for s in known), _record(ctx).get("counter", 0))
    with records.changing(ctx) as document:  # the number is handed out before it is used
        section = document.get(RECORD)
        document[RECORD] = {**(section if isinstance(section, dict) else {}), "counter": counter}
    after = _newest_set(ctx) or ""
    failpoints.hit("redissnap.before-take")
    snapshot = redissnap.take(
        area(ctx), endpoint, counter, after, sealing_for(ctx.spec), ctx.spec.stack, clock.now_iso()
    )
    prune(ctx)
    return snapshot


def prune(ctx: StackContext) -> list[int]:
    """Delete the snapshots no restore would load (``plan/redissnaps.unneeded``); the caller holds the lock."""
    store = area(ctx)
    if not os.path.isdir(store.path):
        return []
    known = authenticated(ctx, _mac(ctx))
    doomed = redissnaps.unneeded(known, _newest_set(ctx), _record(ctx).get("superseded_through", 0))
    for counter in doomed:
        redissnap.delete(store, counter)
    if doomed:
        fs.fsync_dir(store.path)
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


def _usable(ctx: StackContext, set_name: str, mac: bytes | None) -> list[redissnaps.Snapshot]:
    if not active(ctx):
        return []
    return redissnaps.usable_for(authenticated(ctx, mac), set_name, _record(ctx).get("superseded_through", 0))


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
    store = area(ctx)
    known = []
    for counter in redissnap.listing(store):
        try:
            known.append(redissnap.position(redissnap.sidecar(store, counter, mac, ctx.spec.stack)))
        except redissnap.SnapshotRejected as exc:
            _reject(ctx, counter, exc.reason)
    superseded = _record(ctx).get("superseded_through", 0)
    for snapshot in redissnaps.usable_for(known, set_name, superseded):
        try:
            document = redissnap.check(store, snapshot.counter, mac, ctx.spec.stack)
            redissnap.fetch(store, document, target, identity, owner)
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
    try:
        usable = _usable(ctx, set_name, _mac(ctx))
    except (OSError, PermanentError) as exc:
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
