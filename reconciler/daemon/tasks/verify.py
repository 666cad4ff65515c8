"""Verify the newest set that needs it (``plan/schedule.set_to_verify``), then run retention: only
verified sets let retention make progress, so the two go together."""

from __future__ import annotations

from reconciler.daemon.tasks.base import Host, Upkeep
from reconciler.engine import backups as engine_backups
from reconciler.engine import events, records
from reconciler.errors import ReconcilerError
from reconciler.plan.schedule import set_to_verify


class VerifyNewest:
    def __init__(self, host: Host) -> None:
        self.host = host

    def wakeup(self, now: float) -> tuple[str, float] | None:
        return None

    def run(self, upkeep: Upkeep) -> None:
        host, ctx = self.host, upkeep.ctx
        tried = frozenset(records.read(ctx).verifications)
        sets = tuple(listing.backup_set for listing in engine_backups.list_sets(ctx))
        target = set_to_verify(ctx.spec, sets, tried, engine_backups.vouch_local(ctx, list(sets)))
        if target is None:
            return
        result = engine_backups.verify(ctx, target)
        if result.get("ok"):
            events.emit(
                host.state_dir,
                "Normal",
                "SetVerified",
                f"backup set {target} verified ({result.get('seconds')} s)",
            )
            try:
                pruned = engine_backups.prune(ctx)
            except ReconcilerError as exc:
                events.emit(host.state_dir, "Warning", "PruneFailed", f"retention could not run: {exc}")
                return
            if pruned:
                events.emit(
                    host.state_dir,
                    "Normal",
                    "Pruned",
                    f"retention deleted {len(pruned)} set(s): {', '.join(pruned)}",
                )
        else:
            message = f"backup set {target} failed verification: {result.get('reason')}"
            events.emit(host.state_dir, "Warning", "SetVerificationFailed", message)
            host.notifier.fail(message)
