"""Backup sets as the planner sees them: names, times, completeness, and retention.

Design decisions:
- A set's time comes from its *name* (``loomio-20261121T160000Z-scheduled``), never from a file's
  mtime: copying, uploading or restoring files changes mtimes, and a wrong age would make retention
  delete the wrong sets.
- Files are flat, named ``<set>.<member>``: ``<set>.postgres.pgdump.zst.age``, ``<set>.redis.rdb.zst.age``
  and ``<set>.manifest.json``. Flat names work the same in a directory and in a Drive folder, and a
  listing alone tells which sets are complete (the manifest is written last, so a set without one is
  incomplete, whatever else is there).
- Retention follows restic: each ``keep_*`` rule keeps sets independently and a set survives if any
  rule keeps it. On top, safety rules that no policy can override: the newest verified set (or, with
  none verified yet, the newest complete set) is always kept; nothing is deleted while the newest
  backup attempt failed; a complete set is never the last one deleted. Pure and order-independent,
  which the property tests check.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from reconciler.spec.model import RetentionSpec

_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_SET_RE = re.compile(r"^(?P<stack>[a-z0-9][a-z0-9_-]*)-(?P<time>\d{8}T\d{6}Z)-(?P<trigger>[a-z][a-z0-9-]*)$")
MANIFEST_SUFFIX = ".manifest.json"
INCOMPLETE_GRACE = timedelta(hours=6)


def set_name(stack: str, created: datetime, trigger: str) -> str:
    return f"{stack}-{created.astimezone(UTC).strftime(_TIME_FORMAT)}-{trigger}"


def parse_set_name(name: str) -> tuple[str, datetime, str] | None:
    match = _SET_RE.match(name)
    if not match:
        return None
    try:
        created = datetime.strptime(match.group("time"), _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return match.group("stack"), created, match.group("trigger")


def split_file_name(file_name: str) -> tuple[str, str] | None:
    """``loomio-2026...-manual.postgres.pgdump.zst.age`` → (set name, member suffix)."""
    set_part, dot, member = file_name.partition(".")
    if not dot or parse_set_name(set_part) is None:
        return None
    return set_part, member


@dataclass(frozen=True)
class StoredFile:
    name: str
    size: int


@dataclass(frozen=True)
class BackupSet:
    """One set in one store, from a listing (no content read)."""

    name: str
    stack: str
    created: datetime
    trigger: str
    store: str
    files: tuple[StoredFile, ...] = ()

    @property
    def complete(self) -> bool:
        return any(f.name.endswith(MANIFEST_SUFFIX) for f in self.files)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def group_sets(files: Iterable[StoredFile], store: str, stack: str | None = None) -> list[BackupSet]:
    """Group a store's file listing into sets, newest first; unrelated files are ignored."""
    grouped: dict[str, list[StoredFile]] = {}
    for stored in files:
        split = split_file_name(stored.name)
        if split is not None:
            grouped.setdefault(split[0], []).append(stored)
    sets = []
    for name, members in grouped.items():
        parsed = parse_set_name(name)
        assert parsed is not None
        if stack is not None and parsed[0] != stack:
            continue
        sets.append(
            BackupSet(
                name, parsed[0], parsed[1], parsed[2], store, tuple(sorted(members, key=lambda f: f.name))
            )
        )
    return sorted(sets, key=lambda s: (s.created, s.name), reverse=True)


@dataclass(frozen=True)
class RetentionDecision:
    keep: dict[str, tuple[str, ...]] = field(default_factory=dict)  # set name → reasons
    delete: tuple[str, ...] = ()
    held_back: str | None = None  # why nothing is deleted at all


def _bucket(created: datetime, unit: str) -> tuple[int, ...]:
    if unit == "hourly":
        return (created.year, created.month, created.day, created.hour)
    if unit == "daily":
        return (created.year, created.month, created.day)
    if unit == "weekly":
        iso = created.isocalendar()
        return (iso[0], iso[1])
    return (created.year, created.month)


def retention(
    sets: Iterable[BackupSet],
    policy: RetentionSpec,
    now: datetime,
    verified: frozenset[str] = frozenset(),
    newest_attempt_failed: bool = False,
    protected: frozenset[str] = frozenset(),
) -> RetentionDecision:
    """Which sets of one store to keep and which to delete, with the reason for each kept set."""
    by_name = {s.name: s for s in sets}
    ordered = sorted(by_name.values(), key=lambda s: (s.created, s.name), reverse=True)
    complete = [s for s in ordered if s.complete]
    incomplete = [s for s in ordered if not s.complete]
    reasons: dict[str, list[str]] = {s.name: [] for s in ordered}

    if newest_attempt_failed:
        return RetentionDecision(
            {s.name: ("newest backup failed",) for s in ordered}, (), "the newest backup failed"
        )

    for s in complete[: policy.keep_last]:
        reasons[s.name].append("last")
    for unit, count in (
        ("hourly", policy.keep_hourly),
        ("daily", policy.keep_daily),
        ("weekly", policy.keep_weekly),
        ("monthly", policy.keep_monthly),
    ):
        seen: list[tuple[int, ...]] = []
        for s in complete:
            if len(seen) >= count:
                break
            bucket = _bucket(s.created, unit)
            if bucket not in seen:
                seen.append(bucket)
                reasons[s.name].append(unit)

    newest_verified = next((s for s in complete if s.name in verified), None)
    anchor = newest_verified or (complete[0] if complete else None)
    if anchor is not None:
        reasons[anchor.name].append("newest verified" if newest_verified else "newest complete")
    for s in ordered:
        if s.name in protected:
            reasons[s.name].append("protected")
        if s.created > now:
            reasons[s.name].append("dated in the future")
    for s in incomplete:
        if now - s.created < INCOMPLETE_GRACE:
            reasons[s.name].append("incomplete, may still be in progress")

    delete = tuple(s.name for s in ordered if not reasons[s.name])
    if complete and all(s.name in delete for s in complete):
        return RetentionDecision(
            {s.name: ("never delete everything",) for s in ordered}, (), "would delete every set"
        )
    keep = {name: tuple(why) for name, why in reasons.items() if why}
    return RetentionDecision(keep, delete)
