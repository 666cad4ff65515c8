"""Time-driven upkeep the daemon owes the stack: when the next backup is due, which set to verify, and
whether RAM mode still has the memory headroom it needs.

Design decisions:
- Separate from ``planner.plan`` on purpose: ``plan`` answers "does the stack match state.yaml?", and a
  backup that is merely due is not drift (``reconciler plan`` stays quiet about it and keeps exiting 0).
  The daemon asks both questions on every pass.
- Pure, like the planner: ``now`` is an argument, so "a backup is due exactly when the newest complete
  local set is a cadence old" is a property the tests check over random set histories.
- "Newest" is the sets' own order (``backupsets.order_key``), never the host clock; only sets the
  engine vouched for count (``authenticity``), so a planted set cannot pose as a fresh backup.
- A set's age comes from its name and the clock. When the clock is *behind* the newest set (a Raspberry
  Pi without a real-time clock after a power cut), its age cannot be measured: the set counts as fresh
  (nothing says it is old) but a backup is due at once, because waiting for the clock to reach the set's
  time could silence backups for days. The new set sorts after the old one by its sequence and dates
  from the clock's own time, so from then on ages are measured again; at most one extra set per clock
  jump. A clock that jumps forward makes the newest set look old: one backup is due, which is safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler.plan.backupsets import BackupSet, order_key
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


def _counted_local(
    spec: StateSpec, sets: tuple[BackupSet, ...], authenticity: Mapping[str, str | None] | None
) -> list[BackupSet]:
    """Complete local sets of this stack the engine vouched for (all of them when it did not check)."""
    return [
        s
        for s in sets
        if s.store == "local"
        and s.complete
        and s.stack == spec.stack
        and (authenticity is None or (s.name in authenticity and authenticity[s.name] is None))
    ]


def backup_schedule(
    spec: StateSpec,
    sets: tuple[BackupSet, ...],
    now: datetime,
    authenticity: Mapping[str, str | None] | None = None,
) -> BackupSchedule:
    candidates = _counted_local(spec, sets, authenticity)
    if not candidates:
        return BackupSchedule(None, None, True, "no complete local backup set exists", now, False)
    newest = max(candidates, key=order_key)
    cadence = spec.backup.cadence
    if newest.created > now + CLOCK_SKEW:
        reason = (
            f"the host clock ({now:%Y-%m-%d %H:%M} UTC) is behind the newest set {newest.name}: its age "
            "cannot be measured, so a set is taken now (it sorts after the old one by its sequence)"
        )
        return BackupSchedule(newest.name, None, True, reason, now, True)
    age = max(now - newest.created, timedelta(0))
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
    spec: StateSpec,
    sets: tuple[BackupSet, ...],
    verified_or_tried: frozenset[str],
    authenticity: Mapping[str, str | None] | None = None,
) -> str | None:
    """The newest complete local set (by the sets' own order, whatever the clock says) not verified or
    tried yet, when the daemon verifies new sets."""
    if not spec.daemon.verify_new_sets:
        return None
    complete = _counted_local(spec, sets, authenticity)
    if not complete:
        return None
    newest = max(complete, key=order_key)
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
