"""The daemon on a host that ``hosts:`` leaves the stack out of: idle, cheaply, and say so once.

Design decisions:
- Nothing that touches the stack runs: no observation of servers or stores (a pass costs reading
  state.yaml, or HEAD's copy of it, and a ``uname``/``stat`` or two), no backup, no verification, no
  upload, no final backup at shutdown. The wake-ups that work would bring (a backup coming due, a retry,
  an off-site retry) are cleared, so the daemon sleeps until state.yaml (or the commit) changes or the
  resync comes: a change of the conditions is picked up at the next pass.
- Leaving the stack alone includes what still runs here: a host that stops matching never stops a
  service (``planner.not_for_host``). The event is emitted once per distinct reason, not per pass.
"""

from __future__ import annotations

from typing import Any

from reconciler.engine import events
from reconciler.engine.context import StackContext


def idle_not_for_host(daemon: Any, ctx: StackContext) -> None:
    """One pass of a daemon whose stack is not for this host (``daemon`` is a ``loop.Daemon``)."""
    assert ctx.host is not None
    reason = ctx.host.stack_reason or ""
    message = (
        f"not for this host: {reason}; the daemon idles (nothing is started, stopped, backed up or "
        "deleted here, services still running here are left alone) and watches state.yaml"
    )
    daemon.next_retry = None
    daemon.backup.next_at = None
    daemon.offsite.pending = False
    daemon.observed, daemon.observed_stale = None, False
    daemon.stalled_on = daemon.blocked_on = None
    # Services still running here are not this daemon's any more: no watching, no "down" in /healthz.
    daemon.processes.arm({})
    daemon.containers.arm({})
    daemon.snapshot.drop("reconciler_service_up")
    if getattr(daemon, "not_for_host_reason", None) != reason:
        daemon.not_for_host_reason = reason
        events.emit(daemon.state_dir, "Normal", "NotForThisHost", message)
    daemon.note(
        {
            "Ready": (False, "NotForThisHost", message),
            "Stalled": (False, "NotForThisHost", "nothing to do on this host"),
        }
    )


def back_for_this_host(daemon: Any) -> None:
    """The stack is for this host (again): the next time it is not, say so again."""
    if getattr(daemon, "not_for_host_reason", None) is not None:
        daemon.not_for_host_reason = None
        daemon.offsite.pending = True
        events.emit(daemon.state_dir, "Normal", "ForThisHost", "the stack is for this host (again)")
