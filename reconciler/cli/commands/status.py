"""``reconciler status``: show the stack's status document."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import click

from reconciler.cli.common import FORMAT, CliState, context_or_last_valid, guard

if TYPE_CHECKING:
    from reconciler.engine.context import StackContext
    from reconciler.errors import SpecInvalid


@click.command()
@FORMAT
@click.pass_obj
@guard
def status(state: CliState, output_format: str) -> None:
    """Show services, where their data lives, conditions and the last run."""
    from datetime import UTC, datetime

    from reconciler.cli.render import status_text
    from reconciler.engine import status as status_file
    from reconciler.plan.planner import plan as make_plan

    ctx, invalid = context_or_last_valid(state)
    observed = ctx.observe()
    the_plan = make_plan(ctx.spec, observed, datetime.now(UTC))
    recorded = status_file.load(ctx.status_path)
    backup_records = _backup_records(ctx)
    services = {}
    for name, svc in observed.services.items():
        location = svc.location(ctx.spec.mode)
        current = svc.ram if svc.data_dir == svc.ram.path else (svc.disk if svc.data_dir else location)
        services[name] = {
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
    document = {
        "stack": ctx.spec.stack,
        "mode": ctx.spec.mode,
        "runtime": ctx.spec.runtime,
        "in_sync": the_plan.in_sync,
        "pending": [a.describe() for a in the_plan.actions],
        "blockers": list(the_plan.blockers),
        "services": services,
        "host": asdict(observed.host),
        "conditions": _with_spec_validity(
            status_file.live_conditions(recorded.get("conditions", []), ctx.spec, observed, the_plan), invalid
        ),
        "specErrors": [str(p) for p in invalid.problems] if invalid else [],
        "lastAppliedRevision": recorded.get("lastAppliedRevision"),
        "lastRun": recorded.get("lastRun"),
        "lastRestore": backup_records.get("last_restore"),
        "lastBackup": backup_records.get("last_success"),
        "nextScheduledBackup": recorded.get("nextScheduledBackup"),
        "daemon": _daemon_status(ctx, recorded.get("daemon")),
        "modeOverride": ctx.mode_override,
    }
    if output_format == "json":
        state.out.json(document)
    else:
        for line in status_text(document):
            state.out.out.print(line)


def _with_spec_validity(
    conditions: list[dict[str, Any]], invalid: SpecInvalid | None
) -> list[dict[str, Any]]:
    from reconciler.engine.status import set_condition

    if invalid is None:
        return conditions
    problems = "; ".join(str(p) for p in invalid.problems[:3])
    return set_condition(
        conditions,
        "SpecValid",
        False,
        "Invalid",
        f"state.yaml is invalid: {problems}; the last valid spec is shown",
    )


def _daemon_status(ctx: StackContext, recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """The daemon's own report, corrected by its lock: a daemon killed with -9 cannot say it stopped."""
    from reconciler.system import fs

    holder = fs.lock_holder(os.path.join(ctx.state_dir, "daemon.lock"))
    if recorded is None and holder is None:
        return None
    return {**(recorded or {}), "running": holder is not None, "pid": holder or (recorded or {}).get("pid")}


def _backup_records(ctx: StackContext) -> dict[str, Any]:
    from reconciler.engine import records

    return records.read(ctx).document
