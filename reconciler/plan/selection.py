"""Which backup set to restore, and in which order to fall back: the property-tested core.

Design decisions:
- Candidates are (set, store) copies: the same set may be fine on Drive while its local copy is
  corrupt, so a rejection is remembered per copy, never per set name.
- Order: sets dated in the past, newest first; then sets dated in the future (a clock that was wrong
  when they were taken, or a planted name), newest first, each with a warning. Within a set, the local
  copy before remote ones (faster, no network). Ties break on the names, so the result never depends
  on listing order.
- Only complete sets (with a manifest) are candidates; a copy already rejected (it failed to
  authenticate, decrypt, restore or verify) is never offered again until the records are cleared.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler.plan.backupsets import BackupSet

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


def _ordered(sets: list[BackupSet], now: datetime) -> list[BackupSet]:
    """Past before future-dated, newest first; within one second (names have one-second resolution) the
    larger name first, as listings and retention order them; within one set, local before remote."""
    ordered = sorted(sets, key=lambda s: (STORE_PRIORITY.get(s.store, 9), s.store))
    ordered.sort(key=lambda s: s.name, reverse=True)  # stable sorts: earlier keys break later ties
    ordered.sort(key=lambda s: (s.created > now + CLOCK_SKEW_TOLERANCE, -s.created.timestamp()))
    return ordered


def select_restore(
    sets: Iterable[BackupSet], rejected: Mapping[CopyKey, str], now: datetime, stack: str | None = None
) -> Selection:
    unique: dict[CopyKey, BackupSet] = {}
    for s in sets:
        if stack is not None and s.stack != stack:
            continue
        # The same copy listed twice: keep the more complete listing, whatever the order.
        previous = unique.get((s.store, s.name))
        if previous is None or (s.complete, len(s.files), s.files) > (
            previous.complete,
            len(previous.files),
            previous.files,
        ):
            unique[(s.store, s.name)] = s
    usable: list[BackupSet] = []
    ruled_out: list[tuple[BackupSet, str]] = []
    for key, backup_set in unique.items():
        if not backup_set.complete:
            continue
        if key in rejected:
            ruled_out.append((backup_set, rejected[key]))
        else:
            usable.append(backup_set)
    usable = _ordered(usable, now)
    order = {id(s): index for index, s in enumerate(_ordered([s for s, _ in ruled_out], now))}
    ruled_out.sort(key=lambda pair: order[id(pair[0])])
    warnings = tuple(
        f"backup set {s.name} ({s.store}) is dated in the future (clock skew?): it is tried only after every set from the past"
        for s in usable
        if s.created > now + CLOCK_SKEW_TOLERANCE
    )
    return Selection(tuple(usable), tuple(ruled_out), warnings)
