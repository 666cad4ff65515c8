"""The scheduled backup: taken when ``plan/schedule.observed_backup_schedule`` says one is due and every
service runs; a failure retries with its own backoff (not the reconcile's), reset by the next
success. It owns ``next_at``, the wall-clock time of the next due backup, which the loop sleeps
towards and publishes. Every reading of the wall clock here goes through ``system/clock`` like the
schedule's own, so the sleep and the due-check never measure against two different clocks."""

from __future__ import annotations

import logging
from datetime import datetime

from reconciler.daemon.tasks.base import Host, Retry, Upkeep
from reconciler.engine import backups as engine_backups
from reconciler.engine import events
from reconciler.errors import ReconcilerError
from reconciler.plan.failures import Operation
from reconciler.plan.hosts import backups_scheduled_here
from reconciler.plan.schedule import observed_backup_schedule
from reconciler.system import clock

log = logging.getLogger("reconciler.daemon.loop")


class ScheduledBackup:
    def __init__(self, host: Host, backoff_max_seconds: float) -> None:
        self.host = host
        self.retry = Retry(backoff_max_seconds)
        self.next_at: datetime | None = None
        self.replaced_at: datetime | None = None  # the last set taken to replace unusable ones

    def wakeup(self, now: float) -> tuple[str, float] | None:
        if self.next_at is None:
            return None
        seconds = (self.next_at - clock.now()).total_seconds()
        return "backup due", max(now + seconds, self.retry.not_before)

    def run(self, upkeep: Upkeep) -> None:
        upkeep.took_backup = self._backup_if_due(upkeep)

    def _backup_if_due(self, upkeep: Upkeep) -> bool:
        host, ctx, observed = self.host, upkeep.ctx, upkeep.observed
        ours = frozenset(ctx.spec.services.configured())
        mine = backups_scheduled_here(observed.backups, ours, ctx.skipped_services)  # hosts: split stacks
        schedule = observed_backup_schedule(ctx.spec, mine, clock.now(), self.replaced_at)
        self.next_at = schedule.next_at
        if not schedule.due or self.retry.waiting():
            self._conditions(schedule.fresh, schedule.reason)
            return False
        if not all(s.running for s in observed.services.values()):
            return False
        log.info("backup due: %s", schedule.reason)
        host.notifier.start()
        try:
            document = engine_backups.take_backup(ctx, "scheduled")
        except ReconcilerError as exc:
            delay = self.retry.failed()
            message = f"scheduled backup failed: {exc}; retrying in {delay:.0f} s"
            code = host.failures.report("BackupFailed", message, exc, Operation.BACKUP)
            host.snapshot.add("reconciler_backup_failures_total", 1, "Scheduled backups that failed.")
            self._conditions(schedule.fresh, message, code)
            return False
        self.retry.backoff.succeeded()
        self.replaced_at = clock.now() if schedule.replacement else None
        self.retry.not_before = 0.0
        size = sum(int(m["size"]) for m in document["members"])
        events.emit(
            host.state_dir,
            "Normal",
            "BackupTaken",
            f"backup set {document['set']} ({size} bytes, {document['seconds']:.1f} s): {schedule.reason}",
        )
        host.snapshot.add("reconciler_backups_total", 1, "Scheduled backups taken.")
        host.notifier.success(f"backup set {document['set']}")
        self.next_at = clock.now() + ctx.spec.backup.cadence
        self._conditions(True, f"newest set {document['set']} was just taken")
        return True

    def _conditions(self, fresh: bool, message: str, code: str | None = None) -> None:
        self.host.note(
            {"BackupFresh": (fresh, "Fresh" if fresh else "Stale", message, code)},
            nextScheduledBackup=self.next_at.isoformat(timespec="seconds").replace("+00:00", "Z")
            if self.next_at
            else None,
        )
