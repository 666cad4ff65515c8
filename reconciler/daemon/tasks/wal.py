"""Continuous WAL as an upkeep task: while ``backup.continuous`` is on, the supervised
``pg_receivewal`` (``engine/wal.WalSupervisor``) follows the stack after every pass in sync; it runs
in its own thread between passes, so the task needs no wake-up of its own. The loop stops it at exit."""

from __future__ import annotations

from reconciler.daemon.tasks.base import Upkeep
from reconciler.engine.wal import WalSupervisor


class ContinuousWal:
    def __init__(self) -> None:
        self.supervisor = WalSupervisor()

    def run(self, upkeep: Upkeep) -> None:
        self.supervisor.follow(upkeep.ctx, upkeep.observed)

    def wakeup(self, now: float) -> tuple[str, float] | None:
        return None

    def stop(self) -> None:
        self.supervisor.stop()
