"""The backup metrics (age and size of the newest set, when the next one is due), published last in
the upkeep so that they include the backup this pass may have taken."""

from __future__ import annotations

from reconciler.daemon.tasks.backup import ScheduledBackup
from reconciler.daemon.tasks.base import Host, Upkeep
from reconciler.engine import records


class BackupMetrics:
    def __init__(self, host: Host, backup: ScheduledBackup) -> None:
        self.host = host
        self.backup = backup

    def wakeup(self, now: float) -> tuple[str, float] | None:
        return None

    def run(self, upkeep: Upkeep) -> None:
        snapshot = self.host.snapshot
        last = records.read(upkeep.ctx).last_success
        newest = last.get("set")
        if newest:
            from reconciler.plan.backupsets import parse_set_name

            parsed = parse_set_name(str(newest))
            if parsed:  # the age is computed at every scrape from this timestamp
                snapshot.set_age(
                    "reconciler_backup_age_seconds", parsed[1].timestamp(), "Age of the newest backup set."
                )
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
