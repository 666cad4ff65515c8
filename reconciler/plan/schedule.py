"""Time-driven upkeep the daemon owes the stack: when the next backup is due, which set to verify, and
whether RAM mode still has the memory headroom it needs.

Design decisions:
- Separate from ``planner.plan`` on purpose: ``plan`` answers "does the stack match state.yaml?", and a
  backup that is merely due is not drift (``reconciler plan`` stays quiet about it and keeps exiting 0).
  The daemon asks both questions on every pass.
- Pure, like the planner: ``now`` is an argument, so "a backup is due exactly when the newest complete
  local set is a cadence old" is a property the tests check over random set histories.
- A set's age comes from its name (see ``backupsets``). A set dated in the future (a clock that jumped
  back) does not count as fresh: trusting it would silence backups until the clock caught up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler.plan.backupsets import BackupSet
from reconciler.plan.observed import ObservedState
from reconciler.spec.model import StateSpec
from reconciler.spec.units import format_bytes

CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class BackupSchedule:
    newest: str | None  # newest complete local set that counts (None: none)
    age: timedelta | None
    due: bool
    reason: str
    next_at: datetime  # when the next scheduled backup is due (``now`` when due)
    fresh: bool  # newest set within backup.stale_after


def backup_schedule(spec: StateSpec, sets: tuple[BackupSet, ...], now: datetime) -> BackupSchedule:
    candidates = [s for s in sets if s.store == "local" and s.complete and s.stack == spec.stack]
    dated = [s for s in candidates if s.created <= now + CLOCK_SKEW]
    if not dated:
        reason = "no complete local backup set exists"
        if len(candidates) > len(dated):
            reason = "every local backup set is dated in the future (has the clock jumped back?)"
        return BackupSchedule(None, None, True, reason, now, False)
    newest = max(dated, key=lambda s: (s.created, s.name))
    age = max(now - newest.created, timedelta(0))
    cadence = spec.backup.cadence
    due = age >= cadence
    reason = (
        f"the newest set {newest.name} is {_duration(age)} old (cadence {_duration(cadence)})"
        if due
        else f"the newest set {newest.name} is {_duration(age)} old"
    )
    return BackupSchedule(
        newest.name,
        age,
        due,
        reason,
        now if due else newest.created + cadence,
        age <= spec.backup.stale_after,
    )


def set_to_verify(
    spec: StateSpec, sets: tuple[BackupSet, ...], verified_or_tried: frozenset[str], now: datetime
) -> str | None:
    """The newest complete local set not verified (or tried) yet, when the daemon verifies new sets."""
    if not spec.daemon.verify_new_sets:
        return None
    complete = [
        s
        for s in sets
        if s.store == "local" and s.complete and s.stack == spec.stack and s.created <= now + CLOCK_SKEW
    ]
    if not complete:
        return None
    newest = max(complete, key=lambda s: (s.created, s.name))
    return None if newest.name in verified_or_tried else newest.name


@dataclass(frozen=True)
class Headroom:
    ok: bool
    available: int | None  # bytes still usable: the smaller of host MemAvailable and tmpfs free space
    message: str


def ram_headroom(spec: StateSpec, observed: ObservedState) -> Headroom:
    """Whether RAM mode still leaves ``ram.min_headroom`` of memory; trivially fine in disk mode."""
    if spec.mode != "ram":
        return Headroom(True, None, "disk mode: no data in RAM")
    host_available = observed.host.mem_available
    limits = [("host MemAvailable", host_available)] if host_available else []
    root = observed.ram_root.filesystem
    if root is not None and root.is_tmpfs and root.size_bytes is not None and root.used_bytes is not None:
        limits.append((f"free space on the tmpfs at {root.mount_point}", root.size_bytes - root.used_bytes))
    if not limits:
        return Headroom(True, None, "memory figures unavailable")
    what, available = min(limits, key=lambda pair: pair[1])
    wanted = spec.ram.min_headroom
    if available >= wanted:
        return Headroom(
            True, available, f"{format_bytes(available)} available (minimum {format_bytes(wanted)})"
        )
    return Headroom(
        False,
        available,
        f"only {format_bytes(available)} left ({what}), below ram.min_headroom {format_bytes(wanted)}",
    )


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
