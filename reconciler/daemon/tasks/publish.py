"""The backup metrics (age and size of the newest set, when the next one is due), published last in
the upkeep so that they include the backup this pass may have taken."""

from __future__ import annotations

from reconciler.daemon.tasks.backup import ScheduledBackup
from reconciler.daemon.tasks.base import Host, Upkeep
from reconciler.engine import records
from reconciler.plan.hosts import backups_scheduled_here
from reconciler.plan.schedule import newest_usable_set


class BackupMetrics:
    def __init__(self, host: Host, backup: ScheduledBackup) -> None:
        self.host = host
        self.backup = backup

    def wakeup(self, now: float) -> tuple[str, float] | None:
        return None

    def run(self, upkeep: Upkeep) -> None:
        snapshot = self.host.snapshot
        ctx = upkeep.ctx
        last = records.read(ctx).last_success
        if upkeep.took_backup:  # this pass's own set: newer than the observation, and usable
            from reconciler.plan.backupsets import parse_set_name

            parsed = parse_set_name(str(last.get("set", "")))
            since = parsed[1].timestamp() if parsed else None
        else:  # the set plan ages the backups by: never a rejected, superseded or planted one
            ours = frozenset(ctx.spec.services.configured())
            mine = backups_scheduled_here(upkeep.observed.backups, ours, ctx.skipped_services)
            usable = newest_usable_set(ctx.spec, mine)
            since = usable.created.timestamp() if usable else None
        # the age is computed at every scrape from this timestamp; no usable set: no age to report
        snapshot.set_age("reconciler_backup_age_seconds", since, "Age of the newest usable backup set.")
        if last.get("set"):
            snapshot.set(
                "reconciler_last_backup_size_bytes", last.get("size"), "Size of the last backup set."
            )
            snapshot.set(
                "reconciler_last_backup_duration_seconds", last.get("seconds"), "Duration of the last backup."
            )
        if self.backup.next_at:
            snapshot.set(
                "reconciler_next_backup_timestamp_seconds",
                self.backup.next_at.timestamp(),
                "When the next backup is due.",
            )
