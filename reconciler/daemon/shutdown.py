"""The daemon's exit in RAM mode: drain the apps, take the final backup; and at the next start, resume
the apps the last exit drained.

Design decision: a backup taken while the apps still write misses every write acknowledged after its
snapshot, and at a host shutdown those are lost with the RAM. So the apps (``drain.containers``) are
stopped first and left stopped (recorded in ``shutdown-drained.json``): after a reboot they must not
write into the stack before the daemon has restored it; the next daemon start resumes them once the
stack is in sync.
"""

from __future__ import annotations

import logging
import os

from reconciler.daemon.failures import FailureReporter
from reconciler.engine import backups as engine_backups
from reconciler.engine import events
from reconciler.engine.context import StackContext
from reconciler.errors import ReconcilerError
from reconciler.plan.failures import Operation
from reconciler.system import fs

log = logging.getLogger("reconciler.daemon.loop")

EXIT_OK = 0
EXIT_FINAL_BACKUP_FAILED = 1


def final_backup(state_dir: str, failures: FailureReporter, ctx: StackContext) -> int:
    """The RAM-mode backup at exit, taken only once the apps' writers are drained.

    A backup taken while the apps still write misses every write acknowledged after its snapshot,
    and at a host shutdown those are lost with the RAM. The apps (``drain.containers``) are
    stopped first and left stopped: after a reboot they must not write into the stack before the
    daemon has restored it; the next daemon start resumes them once the stack is in sync. If they
    cannot be stopped, no backup is taken (it would not hold the last writes) and an event says so.
    """
    try:
        drained = drain_apps(state_dir, ctx)
    except ReconcilerError as exc:
        message = f"final backup skipped: the apps could not be drained first ({exc})"
        failures.report("FinalBackupSkipped", message, exc)
        return EXIT_FINAL_BACKUP_FAILED
    observed = ctx.observe()
    if not all(s.running for s in observed.services.values()):
        events.emit(
            state_dir,
            "Warning",
            "FinalBackupSkipped",
            "final backup skipped: not every service is running",
        )
        return EXIT_OK
    try:
        document = engine_backups.take_backup(ctx, "shutdown")
    except ReconcilerError as exc:
        failures.report("FinalBackupFailed", f"final backup failed: {exc}", exc, Operation.BACKUP)
        return EXIT_FINAL_BACKUP_FAILED
    after = f" after draining {', '.join(drained)}" if drained else ""
    events.emit(
        state_dir,
        "Normal",
        "FinalBackup",
        f"final backup set {document['set']} taken{after} before exit",
    )
    return EXIT_OK


def drained_path(state_dir: str) -> str:
    """Which apps the last shutdown stopped (the next start resumes them once the stack is in sync)."""
    return os.path.join(state_dir, "shutdown-drained.json")


def drain_apps(state_dir: str, ctx: StackContext) -> list[str]:
    names = list(ctx.spec.drain.containers)
    if not names:
        return []
    stopped = list(ctx.runtime.stop_containers(names))
    recorded = fs.read_json(drained_path(state_dir))
    earlier = list(recorded.get("containers", [])) if isinstance(recorded, dict) else []
    fs.atomic_write_json(
        drained_path(state_dir), {"containers": [*earlier, *(n for n in stopped if n not in earlier)]}
    )
    events.emit(state_dir, "Normal", "AppsDrained", f"stopped {', '.join(names)} before the final backup")
    return names


def resume_apps(state_dir: str, ctx: StackContext, failures: FailureReporter | None = None) -> None:
    """Start the apps the last shutdown drained, now that the stack is in sync again. Apps left down is
    a failure: reported with its code (event, metrics, webhook) when ``failures`` is given."""
    recorded = fs.read_json(drained_path(state_dir))
    names = list(recorded.get("containers", [])) if isinstance(recorded, dict) else []
    if names:
        try:
            ctx.runtime.start_containers(names)
            events.emit(state_dir, "Normal", "AppsResumed", f"started {', '.join(names)} again")
        except Exception as exc:  # an engine error must not stop the loop; it is reported
            message = (
                f"could not start {', '.join(names)} again after the last shutdown: {exc}; start them by hand"
            )
            log.warning(message)
            if failures is not None:
                failures.report("AppsNotResumed", message, exc)
            else:
                events.emit(state_dir, "Warning", "AppsNotResumed", message)
    if recorded is not None:
        os.unlink(drained_path(state_dir))
