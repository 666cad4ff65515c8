"""Redis snapshots between sets: which one a restore loads, which ones retention may delete. Pure.

Design decisions:
- A snapshot's position is two signed facts, never the host clock (a Raspberry Pi has no real-time
  clock): ``counter``, a number above every snapshot taken before it for this stack (the newest
  snapshot is the one with the largest counter), and ``after_set``, the newest set it could vouch for
  when it was taken. A snapshot taken after set X holds data at least as new as X's Redis member.
- Restoring set X, a snapshot is usable when it was taken after X (``after_set`` is X or a later
  set in the sets' own order, ``backupsets.order_key``) and it is not superseded by a deliberate
  restore (``counter`` above the watermark a ``reconciler restore`` recorded). The newest usable one
  is tried first, then older ones, then X's own RDB member.
- Retention: a snapshot taken before the newest kept set is useless (that set is newer), so is a
  superseded one; of the rest only the newest ``keep`` stay. Retention of sets never looks at
  snapshots: they live outside the set namespace and cannot change which sets are kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from reconciler.plan.backupsets import parse_set_name, set_sequence

KEEP = 3  # snapshots newer than the newest kept set: the newest, and two to fall back on


@dataclass(frozen=True)
class Snapshot:
    counter: int
    after_set: str  # the newest set when it was taken ("" when there was none)


def set_key(name: str) -> tuple[int, datetime, str]:
    """The sets' own order for a set name (``backupsets.order_key``, from the name alone)."""
    parsed = parse_set_name(name)
    created = parsed[1] if parsed is not None else datetime.min.replace(tzinfo=UTC)
    return set_sequence(name), created, name


def newest_set(names: Iterable[str]) -> str | None:
    """The newest of these sets in the sets' own order, or None."""
    return max(names, key=set_key, default=None)


def usable_for(snapshots: Iterable[Snapshot], chosen_set: str, superseded_through: int) -> list[Snapshot]:
    """The snapshots a restore of ``chosen_set`` may load instead of its RDB member, newest first."""
    target = set_key(chosen_set)
    usable = [
        s
        for s in snapshots
        if s.counter > superseded_through and s.after_set and set_key(s.after_set) >= target
    ]
    return sorted(usable, key=lambda s: s.counter, reverse=True)


def unneeded(
    snapshots: Iterable[Snapshot], newest_set: str | None, superseded_through: int, keep: int = KEEP
) -> list[int]:
    """Counters of the snapshots retention deletes, given the newest kept (vouched) set."""
    ordered = sorted(snapshots, key=lambda s: s.counter, reverse=True)
    floor = set_key(newest_set) if newest_set else None
    kept = 0
    delete: list[int] = []
    for s in ordered:
        stale = floor is not None and (not s.after_set or set_key(s.after_set) < floor)
        if stale or s.counter <= superseded_through or kept >= keep:
            delete.append(s.counter)
        else:
            kept += 1
    return sorted(delete)


def next_counter(known: Iterable[int], high_water: int = 0) -> int:
    """The counter of a new snapshot: above every listed one and the recorded high-water mark."""
    return max([high_water, *known]) + 1
