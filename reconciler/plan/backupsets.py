"""Backup sets as the planner sees them: names, order, completeness, and what retention may delete.

Design decisions:
- A set's name is ``<stack>-<UTC time>-<sequence>-<trigger>`` (``loomio-20261121T160000Z-000042-scheduled``).
  The *sequence* is the sets' own order: a new set always gets a number above every set the engine
  knows of, whatever the host clock says (a Raspberry Pi has no real-time clock and often boots hours
  behind its newest set). "Newest" everywhere (restore order, retention, schedule, listings) means the
  largest ``(sequence, time, name)``; the time is informative (buckets, ages) and never decides which of
  two sets is newer unless both are legacy sets. Legacy names without a sequence
  (``loomio-20261121T160000Z-scheduled``) stay readable: their sequence is 0, so every set taken since
  sorts after them, and among themselves they order by time as before.
- A set's time comes from its *name*, never from a file's mtime: copying, uploading or restoring files
  changes mtimes.
- Files are flat, named ``<set>.<member>``: ``<set>.postgres.pgdump.zst.age``, ``<set>.redis.rdb.zst.age``
  and ``<set>.manifest.json``. Flat names work the same in a directory and in a Drive folder, and a
  listing alone tells which sets are complete (the manifest is written last).
- Retention counts only sets it can vouch for. Whether a manifest authenticates is I/O (the engine
  reads it and checks the MAC, the stack, the name and the member sizes) and arrives here as
  ``authenticity``; this module only applies the policy. A set *counts* when it is complete, vouched
  for, not rejected, and verified where verification is on. The ``keep_*`` rules (restic semantics:
  each rule keeps sets independently, a set survives if any rule keeps it) choose only among counted
  sets; the newest counted set is always kept, and so is the newest set restore on boot would choose
  (complete, neither rejected nor superseded by a deliberate restore): after a restore whose
  post-restore set was lost, the superseded sets are newer and may count, and only that set holds
  what the stack serves. A set that does not count never takes a counted set's
  place and is never deleted for being outside the rules, except an authentic one that is older
  than the newest counted set (superseded and never verified, or rejected for its content). A set the
  engine cannot vouch for (unsigned, unreadable, foreign, planted) is never deleted by retention: it
  may be someone's data, and it is reported instead. Nothing is deleted while the newest backup
  attempt failed.
- Only an incomplete set's grace period reads the clock; which complete sets survive never depends on
  ``now``, so a clock that is behind or jumps cannot change it. The property tests check this.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from reconciler.spec.model import RetentionSpec

_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
_SET_RE = re.compile(
    r"^(?P<stack>[a-z0-9][a-z0-9_-]*)-(?P<time>\d{8}T\d{6}Z)(?:-(?P<sequence>\d{1,15}))?"
    r"-(?P<trigger>[a-z][a-z0-9-]*)$"
)
MANIFEST_SUFFIX = ".manifest.json"
INCOMPLETE_GRACE = timedelta(hours=6)
SEQUENCE_DIGITS = 6  # zero-padded, so that a directory listing sorts like the sets; more digits still parse
MAX_SEQUENCE = 10**15 - 1


def set_name(stack: str, created: datetime, trigger: str, sequence: int | None = None) -> str:
    when = created.astimezone(UTC).strftime(_TIME_FORMAT)
    if sequence is None:
        return f"{stack}-{when}-{trigger}"
    if not 0 < sequence <= MAX_SEQUENCE:
        raise ValueError(f"set sequence {sequence} out of range")
    return f"{stack}-{when}-{sequence:0{SEQUENCE_DIGITS}d}-{trigger}"


def _parse(name: str) -> tuple[str, datetime, str, int] | None:
    match = _SET_RE.match(name)
    if not match:
        return None
    try:
        created = datetime.strptime(match.group("time"), _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    sequence = int(match.group("sequence") or 0)
    return match.group("stack"), created, match.group("trigger"), sequence


def parse_set_name(name: str) -> tuple[str, datetime, str] | None:
    """(stack, time, trigger) of a set name, or None when it is not one."""
    parsed = _parse(name)
    return parsed[:3] if parsed is not None else None


def set_sequence(name: str) -> int:
    """The set's own sequence number; 0 for a legacy name (or not a set name)."""
    parsed = _parse(name)
    return parsed[3] if parsed is not None else 0


def next_sequence(known: Iterable[str], high_water: int = 0) -> int:
    """The sequence of a new set: above every known set name and above the recorded high-water mark."""
    return max([high_water, *(set_sequence(name) for name in known)]) + 1


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

    @property
    def sequence(self) -> int:
        return set_sequence(self.name)


def order_key(backup_set: BackupSet) -> tuple[int, datetime, str]:
    """Larger is newer: the sets' own sequence first, the time only among equal sequences (legacy sets)."""
    return (backup_set.sequence, backup_set.created, backup_set.name)


def newest_first(sets: Iterable[BackupSet]) -> list[BackupSet]:
    return sorted(sets, key=order_key, reverse=True)


def unique_copies(sets: Iterable[BackupSet]) -> dict[tuple[str, str], BackupSet]:
    """One entry per (store, set): a copy listed twice keeps its more complete listing, whatever the order."""
    unique: dict[tuple[str, str], BackupSet] = {}
    for s in sets:
        previous = unique.get((s.store, s.name))
        if previous is None or (s.complete, len(s.files), s.files) > (
            previous.complete,
            len(previous.files),
            previous.files,
        ):
            unique[(s.store, s.name)] = s
    return unique


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
    return newest_first(sets)


@dataclass(frozen=True)
class RetentionDecision:
    keep: dict[str, tuple[str, ...]] = field(default_factory=dict)  # set name → reasons
    delete: tuple[str, ...] = ()
    held_back: str | None = None  # why nothing is deleted at all
    counted: tuple[str, ...] = ()  # the sets the keep_* rules counted, newest first


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
    *,
    authenticity: Mapping[str, str | None] | None = None,
    require_verified: bool = True,
    rejected: Mapping[str, str] | None = None,
    superseded: frozenset[str] = frozenset(),
) -> RetentionDecision:
    """Which sets of one store to keep and which to delete, with the reason for each kept set.

    ``authenticity``: set name → None when the engine vouched for the set's manifest, else why not; a
    complete set missing from it counts as unchecked (never counted, never deleted). ``verified``: sets
    whose last verification passed, required to count when ``require_verified``. ``rejected``: sets of
    this store rejected for their content, with the reason. ``superseded``: sets a deliberate restore
    discarded; ordinary sets for the ``keep_*`` rules, but the newest complete set restore on boot would
    choose (by the sets' own order, neither rejected nor superseded) is always kept, counted or not: it
    holds what the stack serves when the set taken after a restore is lost.
    """
    checked = authenticity or {}
    refused = rejected or {}
    ordered = newest_first({s.name: s for s in unique_copies(sets).values()}.values())
    if newest_attempt_failed:
        return RetentionDecision(
            {s.name: ("newest backup failed",) for s in ordered}, (), "the newest backup failed"
        )

    def doubt(s: BackupSet) -> str | None:
        if s.name not in checked:
            return "its manifest was not checked"
        return checked[s.name]

    def not_counted(s: BackupSet) -> str | None:
        if s.name in refused:
            return f"rejected: {refused[s.name]}"
        if require_verified and s.name not in verified:
            return "not verified yet"
        return None

    complete = [s for s in ordered if s.complete]
    counted = [s for s in complete if doubt(s) is None and not_counted(s) is None]
    reasons: dict[str, list[str]] = {s.name: [] for s in ordered}

    for s in counted[: policy.keep_last]:
        reasons[s.name].append("last")
    for unit, count in (
        ("hourly", policy.keep_hourly),
        ("daily", policy.keep_daily),
        ("weekly", policy.keep_weekly),
        ("monthly", policy.keep_monthly),
    ):
        seen: list[tuple[int, ...]] = []
        for s in counted:
            if len(seen) >= count:
                break
            bucket = _bucket(s.created, unit)
            if bucket not in seen:
                seen.append(bucket)
                reasons[s.name].append(unit)

    anchor = counted[0] if counted else None
    if anchor is not None:
        reasons[anchor.name].append("newest verified" if require_verified else "newest vouched for")

    boot_choice = next((s for s in complete if s.name not in refused and s.name not in superseded), None)
    if boot_choice is not None:
        reasons[boot_choice.name].append("newest set restore on boot would choose")

    def newer_than_anchor(s: BackupSet) -> bool:
        return anchor is None or order_key(s) > order_key(anchor)

    for s in ordered:
        if s.name in protected:
            reasons[s.name].append("protected")
        if not s.complete:
            if now - s.created < INCOMPLETE_GRACE:
                reasons[s.name].append("incomplete, may still be in progress")
            elif newer_than_anchor(s):
                reasons[s.name].append("incomplete, newer than every set retention counts")
            continue
        why = doubt(s)
        if why is not None:
            reasons[s.name].append(f"cannot vouch for it ({why}): never deleted by retention")
            continue
        why = not_counted(s)
        if why is not None and newer_than_anchor(s):
            reasons[s.name].append(f"newer than every set retention counts ({why})")

    delete = tuple(s.name for s in ordered if not reasons[s.name])
    if complete and all(s.name in delete for s in complete):  # implied by the rules above; kept as a guard
        return RetentionDecision(
            {s.name: ("never delete everything",) for s in ordered}, (), "would delete every set"
        )
    keep = {name: tuple(why) for name, why in reasons.items() if why}
    held_back = None
    if complete and anchor is None:
        held_back = (
            "no backup set can be counted yet (none is both vouched for and verified; "
            "run `reconciler verify`)"
            if require_verified
            else "no backup set can be counted yet (none is vouched for)"
        )
    return RetentionDecision(keep, delete, held_back, tuple(s.name for s in counted))
