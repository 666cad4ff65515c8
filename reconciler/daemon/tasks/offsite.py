"""Google Drive uploads: after every backup, once at start (uploads may have failed while the daemon
was down), again after a failure (its own backoff), and once per cadence even without a new backup
(a set deleted on Drive is uploaded again). Sets stay in the local store whatever Drive does."""

from __future__ import annotations

import time

from reconciler.daemon.tasks.base import Host, Retry, Upkeep
from reconciler.engine import events
from reconciler.errors import ReconcilerError


class OffsiteSync:
    def __init__(self, host: Host, backoff_max_seconds: float) -> None:
        self.host = host
        self.retry = Retry(backoff_max_seconds)
        self.pending = True  # check Drive once at start: uploads may have failed while we were down

    def wakeup(self, now: float) -> tuple[str, float] | None:
        if self.pending and self.host.spec.backup.stores.gdrive.enabled:
            return "offsite retry", self.retry.not_before
        return None

    def run(self, upkeep: Upkeep) -> None:
        host, ctx = self.host, upkeep.ctx
        gdrive = ctx.spec.backup.stores.gdrive
        if not gdrive.enabled:
            return
        cadence = ctx.spec.backup.cadence.total_seconds()
        if upkeep.took_backup:
            self.pending = True
            self.retry.not_before = 0.0
        if not self.pending or self.retry.waiting():
            return
        from reconciler.engine import offsite

        try:
            result = offsite.sync(ctx, attempts=3, deadline=60)
        except ReconcilerError as exc:
            delay = self.retry.failed()
            message = f"Drive sync failed: {exc}; retrying in {delay:.0f} s (sets stay in the local store)"
            events.emit(host.state_dir, "Warning", "OffsiteSyncFailed", message)
            host.note({"OffsiteInSync": (False, "SyncFailed", message)})
            if self.retry.failures == 1:
                host.notifier.fail(message)
            return
        if self.retry.backoff.succeeded():
            host.notifier.success("Drive sync recovered")
        uploaded = list(getattr(result, "uploaded", []))
        if uploaded:
            events.emit(
                host.state_dir,
                "Normal",
                "OffsiteSynced",
                f"uploaded {len(uploaded)} set(s) to Drive: {', '.join(uploaded)}",
            )
        host.note({"OffsiteInSync": (True, "Synced", "every local set is on Drive")})
        # Check again after a cadence even without a new backup: a set deleted on Drive is re-uploaded.
        self.pending = True
        self.retry.not_before = time.monotonic() + cadence
