"""A service that died after the apply looked, before the process watcher was armed: converge again
at once instead of taking a backup of a stack that is not whole."""

from __future__ import annotations

from reconciler.daemon.tasks.base import Host, Upkeep
from reconciler.engine import events


class ServicesRunning:
    def __init__(self, host: Host) -> None:
        self.host = host

    def run(self, upkeep: Upkeep) -> None:
        configured = upkeep.ctx.spec.services.configured()
        down = [n for n in configured if not upkeep.observed.services[n].running]
        if down:
            message = f"{' and '.join(down)} stopped running during the pass; converging again"
            events.emit(self.host.state_dir, "Warning", "ServiceDown", message)
            self.host.wake(message)
            upkeep.stop = True

    def wakeup(self, now: float) -> tuple[str, float] | None:
        return None
