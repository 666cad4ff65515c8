"""RAM headroom: the ``RamHeadroom`` condition, a warning when it runs low, and with
``ram.on_pressure: fallback-to-disk`` the switch to disk mode (a mode override; state.yaml is not
edited). Events are sent when the headroom changes between sufficient and low, not every pass."""

from __future__ import annotations

import logging

from reconciler.daemon.tasks.base import Host, Upkeep
from reconciler.engine import events, status
from reconciler.engine.context import StackContext, write_override
from reconciler.plan.failures import FailureCode
from reconciler.plan.schedule import ram_headroom

log = logging.getLogger("reconciler.daemon.loop")


class RamPressure:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.headroom_ok = True

    def run(self, upkeep: Upkeep) -> None:
        host, ctx = self.host, upkeep.ctx
        headroom = ram_headroom(ctx.spec, upkeep.observed)
        host.snapshot.set("reconciler_ram_headroom_bytes", headroom.available, "Memory left for RAM mode.")
        was_ok = self.headroom_ok
        self.headroom_ok = headroom.ok
        if headroom.ok:
            host.note({"RamHeadroom": (True, "Sufficient", headroom.message)})
            if not was_ok:
                events.emit(host.state_dir, "Normal", "RamHeadroomRecovered", headroom.message)
            return
        if ctx.spec.ram.on_pressure == "fallback-to-disk":
            message = f"{headroom.message}: switching to disk mode (ram.on_pressure: fallback-to-disk)"
            # a failure of the RAM-mode promise, on every channel with its code (the /fail ping had none)
            host.failures.report("RamPressureFallback", message, code=FailureCode.HOST_FAULT)
            host.note({"RamHeadroom": (False, "FellBackToDisk", message)})
            write_override(ctx.state_dir, host.state_file, "disk", headroom.message, status.now_iso())
            fallback = StackContext.build(host.spec, host.state_file)
            host.apply_now(fallback, "switching to disk mode because of RAM pressure")
            upkeep.stop = True  # the fallback switch changed the stack; the next pass observes it afresh
            return
        host.note({"RamHeadroom": (False, "Low", headroom.message)})
        if was_ok:
            log.warning("RAM pressure: %s", headroom.message)
            events.emit(host.state_dir, "Warning", "RamPressure", headroom.message)

    def wakeup(self, now: float) -> tuple[str, float] | None:
        return None
