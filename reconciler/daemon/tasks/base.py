"""The protocol the upkeep tasks share, their view of the daemon (``Host``) and their backoff.

Design decision: a task sees the daemon only through ``Host`` (where to report: events, metrics,
conditions, webhook; how to converge at once), so a task can be read, and changed, on its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import tenacity

if TYPE_CHECKING:
    from reconciler.daemon.metrics import Snapshot
    from reconciler.daemon.notify import Notifier
    from reconciler.engine import status
    from reconciler.engine.context import StackContext
    from reconciler.plan.observed import ObservedState
    from reconciler.spec.model import StateSpec


class Backoff:
    """Consecutive failures → the next delay (tenacity's exponential wait with jitter), reset on success."""

    def __init__(self, cap_seconds: float) -> None:
        self.failures = 0
        self._wait = tenacity.wait_exponential_jitter(multiplier=2, max=cap_seconds, jitter=2)
        self._state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})

    def failed(self) -> float:
        self.failures += 1
        self._state.attempt_number = self.failures
        return float(self._wait(self._state))

    def succeeded(self) -> bool:
        """Reset; True when this ends a run of failures (a recovery worth telling)."""
        recovered = self.failures > 0
        self.failures = 0
        return recovered


class Retry:
    """A task's backoff and the monotonic time before which it does not try again (0: no wait)."""

    def __init__(self, cap_seconds: float) -> None:
        self.backoff = Backoff(cap_seconds)
        self.not_before = 0.0

    @property
    def failures(self) -> int:
        return self.backoff.failures

    def waiting(self) -> bool:
        return time.monotonic() < self.not_before

    def failed(self) -> float:
        """Count a failure; the task waits the returned delay (seconds) before it tries again."""
        delay = self.backoff.failed()
        self.not_before = time.monotonic() + delay
        return delay


class Host(Protocol):
    """What a task may use of the daemon."""

    state_dir: str
    state_file: str
    spec: StateSpec
    snapshot: Snapshot
    notifier: Notifier

    def note(self, conditions: status.Conditions, **fields: Any) -> None:
        """Buffer status conditions and fields; the daemon writes them once per pass."""

    def wake(self, reason: str) -> None:
        """Ask for another pass as soon as this one ends."""

    def apply_now(self, ctx: StackContext, why: str) -> None:
        """Converge ``ctx`` now, reporting a failure as the daemon reports a failed pass."""


@dataclass
class Upkeep:
    """One pass's upkeep: its context and observation, and what earlier tasks left for later ones."""

    ctx: StackContext
    observed: ObservedState
    took_backup: bool = False
    stop: bool = False  # a task changed the stack: the rest waits for the next pass


class UpkeepTask(Protocol):
    def run(self, upkeep: Upkeep) -> None:
        """Do this pass's work when it is due."""

    def wakeup(self, now: float) -> tuple[str, float] | None:
        """(reason, monotonic time) when the loop should wake for this task, or None."""
