"""Redis snapshots between sets (``engine/redissnap``): every ``backup.continuous.redis_every`` while
continuous protection is on with placement ``spool``.

The task owns its schedule (a monotonic time: the interval is a duration, not a date) and its backoff.
A set just taken holds Redis too, so it restarts the interval and lets snapshot retention drop the
snapshots it made useless. A stack lock held by someone else (a CLI backup, restore or switch) is not
a failure: the snapshot is tried again shortly. Any other failure is reported with its code
(``dump_error`` unless the raising site knew better, e.g. ``store_full``) and retried with backoff.
"""

from __future__ import annotations

import logging
import time

from reconciler.daemon.tasks.base import Host, Retry, Upkeep
from reconciler.engine import events, redissnap
from reconciler.errors import LockHeld, ReconcilerError
from reconciler.plan.failures import Operation
from reconciler.system import fs

log = logging.getLogger("reconciler.daemon.loop")

_LOCK_RETRY = 5.0


class RedisSnapshots:
    def __init__(self, host: Host, backoff_max_seconds: float) -> None:
        self.host = host
        self.retry = Retry(backoff_max_seconds)
        self.next_at: float | None = None

    def _every(self) -> float:
        return self.host.spec.backup.continuous.redis_every.total_seconds()

    def wakeup(self, now: float) -> tuple[str, float] | None:
        if self.next_at is None:
            return None
        return "redis snapshot due", max(self.next_at, self.retry.not_before)

    def run(self, upkeep: Upkeep) -> None:
        ctx = upkeep.ctx
        if not redissnap.active(ctx):
            self.next_at = None
            return
        now = time.monotonic()
        if upkeep.took_backup or self.next_at is None:
            self.next_at = now + self._every()
            if upkeep.took_backup:
                self._prune(upkeep)
            return
        service = upkeep.observed.services.get("redis")
        if now < self.next_at or self.retry.waiting() or service is None or not service.running:
            return
        started = time.monotonic()
        try:
            with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
                document = redissnap.take(ctx)
        except LockHeld:
            self.next_at = now + _LOCK_RETRY
            return
        except ReconcilerError as exc:
            delay = self.retry.failed()
            message = f"Redis snapshot failed: {exc}; retrying in {delay:.0f} s"
            self.host.failures.report("RedisSnapshotFailed", message, exc, Operation.BACKUP)
            return
        seconds = time.monotonic() - started
        if self.retry.backoff.succeeded():
            self.host.notifier.success("Redis snapshots recovered")
        self.retry.not_before = 0.0
        self.next_at = time.monotonic() + self._every()
        events.emit(
            self.host.state_dir,
            "Normal",
            "RedisSnapshotTaken",
            f"Redis snapshot {document['counter']} ({document['size']} bytes, {seconds:.2f} s) after set "
            f"{document['after_set'] or '(none)'}",
        )
        snapshot = self.host.snapshot
        snapshot.add("reconciler_redis_snapshots_total", 1, "Redis snapshots taken between sets.")
        snapshot.set("reconciler_redis_snapshot_seconds", seconds, "How long the last Redis snapshot took.")
        snapshot.set("reconciler_redis_snapshot_bytes", document["size"], "Size of the last Redis snapshot.")

    def _prune(self, upkeep: Upkeep) -> None:
        ctx = upkeep.ctx
        try:
            with fs.exclusive_lock(ctx.lock_path, f"stack {ctx.spec.stack}"):
                redissnap.prune(ctx)
        except LockHeld:
            return  # the next snapshot prunes
        except (ReconcilerError, OSError) as exc:
            log.warning("Redis snapshot retention: %s", exc)
