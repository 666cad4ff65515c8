"""The status document: what ``reconciler status`` prints (and writes with ``-o json``), built in one
place so the CLI only renders it and the daemon (metrics, ``/healthz``) can report the same facts.

Design decisions:
- The document is built from a fresh observation plus what was recorded (``status.json``, the backup
  records): recorded conditions are claims about the moment they were written, so ``Ready`` is
  recomputed from the observation (``status.live_conditions``).
- ``daemon.running`` comes from the daemon's lock, not from its own report: a daemon killed with -9
  cannot say it stopped.
- With an invalid state.yaml the caller passes the spec last adopted and the ``SpecInvalid``: the
  stack is still shown, with ``SpecValid=False`` and the problems in ``specErrors``.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from reconciler.engine import records, status, waloffsite, walstatus
from reconciler.engine.apply import plan_observed
from reconciler.engine.context import StackContext
from reconciler.system import fs

if TYPE_CHECKING:
    from reconciler.errors import SpecInvalid
    from reconciler.plan.observed import ObservedState


def build(ctx: StackContext, invalid: SpecInvalid | None = None) -> dict[str, Any]:
    """Observe the stack and return its status document (JSON-ready)."""
    observed = ctx.observe()
    the_plan = plan_observed(ctx, observed)
    recorded = status.load(ctx.status_path)
    backup_records = records.read(ctx).document
    return {
        "stack": ctx.spec.stack,
        "mode": ctx.spec.mode,
        "runtime": ctx.spec.runtime,
        "in_sync": the_plan.in_sync,
        "pending": [a.describe() for a in the_plan.actions],
        "blockers": list(the_plan.blockers),
        "unhealable": list(the_plan.unhealable),  # why in_sync is false when nothing is pending
        "services": services(ctx, observed),
        "host": asdict(observed.host),
        "conditions": with_spec_validity(
            status.live_conditions(recorded.get("conditions", []), ctx.spec, observed, the_plan), invalid
        ),
        "specErrors": [str(p) for p in invalid.problems] if invalid else [],
        "lastAppliedRevision": recorded.get("lastAppliedRevision"),
        "lastRun": recorded.get("lastRun"),
        "lastRestore": backup_records.get("last_restore"),
        "lastBackup": backup_records.get("last_success"),
        "walOffsite": waloffsite.status(ctx.state_dir),  # continuous WAL to Drive behind (engine/waloffsite)
        "continuousWal": walstatus.build(ctx, observed),  # receiver and slot (engine/walstatus)
        "nextScheduledBackup": recorded.get("nextScheduledBackup"),
        "daemon": daemon_status(ctx, recorded.get("daemon")),
        "modeOverride": ctx.mode_override,
        "forThisHost": ctx.host.to_dict() if ctx.host else None,
    }


def services(ctx: StackContext, observed: ObservedState) -> dict[str, dict[str, Any]]:
    """Per service: process, where its data is (and where state.yaml wants it), size, version."""
    result = {}
    for name, svc in observed.services.items():
        location = svc.location(ctx.spec.mode)
        current = svc.ram if svc.data_dir == svc.ram.path else (svc.disk if svc.data_dir else location)
        result[name] = {
            "running": svc.running,
            "pid": svc.pid,
            "port": svc.port,
            "died": svc.died,
            "data_dir": svc.data_dir,
            "expected_data_dir": location.path,
            "initialized": current.initialized,
            "filesystem": asdict(current.filesystem) if current.filesystem else None,
            "on_tmpfs": bool(current.filesystem and current.filesystem.is_tmpfs),
            "size_bytes": svc.size_bytes,
            "version": svc.version,
        }
    return result


def with_spec_validity(conditions: list[dict[str, Any]], invalid: SpecInvalid | None) -> list[dict[str, Any]]:
    if invalid is None:
        return conditions
    problems = "; ".join(str(p) for p in invalid.problems[:3])
    return status.set_condition(
        conditions,
        "SpecValid",
        False,
        "Invalid",
        f"state.yaml is invalid: {problems}; the last valid spec is shown",
    )


def daemon_status(ctx: StackContext, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """The daemon's own report, corrected by its lock: a daemon killed with -9 cannot say it stopped."""
    holder = fs.lock_holder(os.path.join(ctx.state_dir, "daemon.lock"))
    if recorded is None and holder is None:
        return None
    return {**(recorded or {}), "running": holder is not None, "pid": holder or (recorded or {}).get("pid")}
