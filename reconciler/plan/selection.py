"""Which backup set to restore, and in which order to fall back: the property-tested core.

Design decisions:
- Candidates are (set, store) copies: the same set may be fine on Drive while its local copy is
  corrupt, so a rejection is remembered per copy, never per set name.
- Order: newest first by the sets' own order (``backupsets.order_key``: sequence, then time, then
  name), never by comparing a set's time with the host clock. A Raspberry Pi without a real-time
  clock often boots hours behind its newest set; ordering "sets from the future" last (as we once did)
  restored older data after every such boot. A set whose time is ahead of the clock only earns a
  warning. A planted name that sorts first is harmless: restore authenticates every candidate before
  it touches a database, rejects the planted one and goes on to the next.
- Within a set, the local copy before remote ones (faster, no network). Ties break on the names, so
  the result never depends on listing order, nor on ``now``.
- Only complete sets (with a manifest) are candidates; a copy already rejected (it failed to
  authenticate, decrypt, restore or verify) is never offered again until the records are cleared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler.plan.backupsets import BackupSet, order_key, unique_copies

STORE_PRIORITY = {"local": 0, "gdrive": 1}
CLOCK_SKEW_TOLERANCE = timedelta(minutes=5)

CopyKey = tuple[str, str]  # (store, set name)


@dataclass(frozen=True)
class Selection:
    candidates: tuple[BackupSet, ...]  # in the order to try
    rejected: tuple[tuple[BackupSet, str], ...]  # complete copies ruled out, with the reason
    warnings: tuple[str, ...]

    @property
    def chosen(self) -> BackupSet | None:
        return self.candidates[0] if self.candidates else None


def _ordered(sets: list[BackupSet]) -> list[BackupSet]:
    """Newest first by the sets' own order; within one set, local before remote."""
    ordered = sorted(sets, key=lambda s: (STORE_PRIORITY.get(s.store, 9), s.store))
    ordered.sort(key=order_key, reverse=True)  # stable: the store order breaks ties within one set
    return ordered


def select_restore(
    sets: Iterable[BackupSet], rejected: Mapping[CopyKey, str], now: datetime, stack: str | None = None
) -> Selection:
    """``now`` only words the warnings; the order never depends on it."""
    unique = unique_copies(s for s in sets if stack is None or s.stack == stack)
    usable: list[BackupSet] = []
    ruled_out: list[tuple[BackupSet, str]] = []
    for key, backup_set in unique.items():
        if not backup_set.complete:
            continue
        if key in rejected:
            ruled_out.append((backup_set, rejected[key]))
        else:
            usable.append(backup_set)
    usable = _ordered(usable)
    order = {id(s): index for index, s in enumerate(_ordered([s for s, _ in ruled_out]))}
    ruled_out.sort(key=lambda pair: order[id(pair[0])])
    warnings = tuple(
        f"backup set {s.name} ({s.store}) is dated ahead of the host clock: the clock is probably behind "
        "(no real-time clock, no network time yet); sets are ordered by their own sequence regardless"
        for s in usable[:1]
        if s.created > now + CLOCK_SKEW_TOLERANCE
    )
    return Selection(tuple(usable), tuple(ruled_out), warnings)


def superseded_by_restore(sets: Iterable[BackupSet], chosen: str) -> frozenset[str]:
    """The sets a deliberate restore of ``chosen`` must take out of restore on boot.

    Exactly the sets restore on boot would try before ``chosen``: those after it in the sets' own order
    (``order_key``, the pre-restore safety set included), whatever their dates say. The hostile review
    found the rule written with dates: a chosen set dated in the future (the clock was ahead when it was
    taken) left the pre-restore set, dated today and tried first at boot, to bring the discarded data
    back. Boot order and this rule share ``order_key``, so at any later time and whatever the clock,
    boot chooses ``chosen`` until a newer set is taken (property-tested).
    """
    by_name = {s.name: s for s in sets}
    target = order_key(by_name[chosen])
    return frozenset(name for name, s in by_name.items() if order_key(s) > target)
