"""Failpoints: named places where tests make the reconciler die or fail on purpose.

``RECONCILER_FAILPOINTS`` holds lines ``<place>=<action>``: ``kill`` (SIGKILL this process), ``error``
(raise), or ``sh:<command>`` (run a shell command, e.g. to damage a file the way a real fault would).
This is how the crash-safety tests kill the reconciler at every step boundary and in the middle of
steps, deterministically, without sleeps. Unset (always, in production) it costs one lookup.
"""

from __future__ import annotations

import os
import signal

from reconciler.errors import PermanentError

_ENV = "RECONCILER_FAILPOINTS"


def _armed() -> dict[str, str]:
    spec = os.environ.get(_ENV, "")
    points = {}
    for item in filter(None, spec.split("\n")):
        name, _, action = item.partition("=")
        points[name.strip()] = action.strip() or "kill"
    return points


def hit(name: str, **context: object) -> None:
    """``context`` reaches an ``sh:`` action as ``FAILPOINT_<NAME>`` variables (e.g. the port just
    chosen, so a test can take it the way a racing process would)."""
    action = _armed().get(name) if _ENV in os.environ else None
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "error":
        raise PermanentError(f"failpoint {name} (injected failure)")
    elif action and action.startswith("sh:"):
        from reconciler.system import proc

        proc.run(["sh", "-c", action[3:]], env={f"FAILPOINT_{k.upper()}": str(v) for k, v in context.items()})
