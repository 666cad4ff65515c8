"""Time-driven checks on the stack: how old the newest backup is, when the next one is due, which set to
verify, and whether RAM mode still has the room it needs.

Design decisions:
- Two questions, one module. ``backup_schedule`` answers the daemon's "is a backup *due*" (a cadence
  old): that is upkeep, not drift, and ``reconciler plan`` stays quiet about it. ``backup_drift`` and
  ``ram_headroom`` answer "does the stack break a promise state.yaml makes": a newest backup older than
  ``backup.stale_after`` (or none at all), or less room than ``ram.min_headroom``. Those are drift:
  ``plan`` shows them with their numbers and ``apply`` heals them (a backup; the switch to disk with
  ``ram.on_pressure: fallback-to-disk``). The daemon asks the same functions, so its ``BackupFresh`` and
  ``RamHeadroom`` conditions and the plan never disagree on a figure.
- Pure, like the planner: ``now`` is an argument, so "a backup is due exactly when the newest complete
  local set is a cadence old" is a property the tests check over random set histories.
- "Newest" is the sets' own order (``backupsets.order_key``), never the host clock; only sets the
  engine vouched for count (``authenticity``), so a planted set cannot pose as a fresh backup, and a set
  rejected for its content protects nothing, so it does not make the backups look fresh either.
- A set's age comes from its name and the clock. When the clock is *behind* the newest set (a Raspberry
  Pi without a real-time clock after a power cut), its age cannot be measured. It must not look fresh
  until the clock catches up (that could be days or forever), so one backup is due at once, for the
  daemon and as drift for ``plan``. The new set sorts after the old one by its sequence and dates from
  the clock's own time, so from then on ages are measured again: at most one extra set per clock jump,
  never a storm. A clock that jumps forward makes the newest set look old: one backup, which is safe.
- "No backup at all" is drift in both modes, with the consequence in the sentence: in RAM mode a power
  cut loses everything since the services started; in disk mode the data survives a power cut but not
  the disk. Both break ``stale_after`` (no backup is older than any bound), and the daemon has always
  reported ``BackupFresh=False`` for it. A first ``apply`` therefore ends with a first set, and ``plan``
  right after it exits 0. When state.yaml makes backups impossible (``encryption`` with no recipient,
  which fails closed) no action could heal it: that is a warning, never a plan that cannot converge.
- RAM headroom is two checks with two messages, because they are two failures: the host's available
  memory (MemAvailable: the kernel starts reclaiming and the OOM killer looms) and the free space on the
  tmpfs that holds the data (the databases' writes fail with ENOSPC even when the host has memory).
  ``min_headroom`` bounds both; each one that fails is reported with its own numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from reconciler.plan.backupsets import BackupSet, order_key
from reconciler.plan.observed import BackupsObservation, ObservedState
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
    fresh: bool  # newest set within backup.stale_after (``backup_drift`` is None for the same sets)
    replacement: bool = False  # due only because the newest sets are unusable (rejected, superseded)


def _counted_local(
    spec: StateSpec,
    sets: tuple[BackupSet, ...],
    authenticity: Mapping[str, str | None] | None,
    unusable: frozenset[str] = frozenset(),
) -> list[BackupSet]:
    """Complete local sets of this stack the engine vouched for (all of them when it did not check),
    except the ``unusable`` ones (rejected for their content)."""
    return [
        s
        for s in sets
        if s.store == "local"
        and s.complete
        and s.stack == spec.stack
        and s.name not in unusable
        and (authenticity is None or (s.name in authenticity and authenticity[s.name] is None))
    ]


@dataclass(frozen=True)
class BackupDrift:
    """The newest backup breaks ``backup.stale_after``: why, with the numbers, and the new set's trigger."""

    reason: str
    trigger: str  # "first" (no set at all) or "stale"


def backups_impossible(spec: StateSpec) -> str | None:
    """Why state.yaml lets no backup be written (it fails closed), or None when backups can be taken."""
    encryption = spec.backup.encryption
    if encryption.method == "age" and not encryption.recipients:
        return (
            "backup.encryption lists no recipient, so no backup can be written (fail closed). "
            "Run `reconciler keygen --add-recipient`, or write `backup.encryption: none` on purpose"
        )
    if encryption.method == "age" and not encryption.identity_file:
        return (
            "backup.encryption.identity_file is not set, and it is needed to sign backup manifests, so no "
            "backup can be written. Point it at the identity `reconciler keygen` wrote"
        )
    return None


def backup_drift(
    spec: StateSpec,
    sets: tuple[BackupSet, ...],
    now: datetime,
    authenticity: Mapping[str, str | None] | None = None,
    unusable: frozenset[str] = frozenset(),
) -> BackupDrift | None:
    """None while the newest usable local set is at most ``backup.stale_after`` old by its own recorded
    time; otherwise why a backup set is owed now. A set dated ahead of the clock cannot be measured and
    is owed one backup (which then sorts after it by sequence and dates from the clock: no storm)."""
    candidates = _counted_local(spec, sets, authenticity, unusable)
    if not candidates:
        consequence = (
            "a power cut would lose the data in RAM"
            if spec.mode == "ram"
            else "the data exists only on this disk"
        )
        return BackupDrift(f"no backup set exists: {consequence}", "first")
    newest = max(candidates, key=order_key)
    stale_after = spec.backup.stale_after
    if newest.created > now + CLOCK_SKEW:
        return BackupDrift(
            f"the newest set {newest.name} is dated {newest.created:%Y-%m-%d %H:%M} UTC, after the host "
            f"clock ({now:%Y-%m-%d %H:%M} UTC): its age cannot be measured",
            "stale",
        )
    age = now - newest.created
    if age <= stale_after:
        return None
    return BackupDrift(
        f"the newest set {newest.name} is {_duration(age)} old, stale_after {_duration(stale_after)}",
        "stale",
    )


def backup_schedule(
    spec: StateSpec,
    sets: tuple[BackupSet, ...],
    now: datetime,
    authenticity: Mapping[str, str | None] | None = None,
    unusable: frozenset[str] = frozenset(),
) -> BackupSchedule:
    candidates = _counted_local(spec, sets, authenticity, unusable)
    if not candidates:
        return BackupSchedule(None, None, True, "no complete local backup set exists", now, False)
    newest = max(candidates, key=order_key)
    cadence = spec.backup.cadence
    if newest.created > now + CLOCK_SKEW:
        reason = (
            f"the host clock ({now:%Y-%m-%d %H:%M} UTC) is behind the newest set {newest.name}: its age "
            "cannot be measured, so a set is taken now (it sorts after the old one by its sequence)"
        )
        return BackupSchedule(newest.name, None, True, reason, now, False)  # unmeasurable is not fresh
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


def _unusable(backups: BackupsObservation) -> frozenset[str]:
    """Local sets rejected for their content or superseded by a deliberate restore (neither would come
    back on boot, so neither makes the backups fresh)."""
    return frozenset(name for (store, name) in backups.rejected if store == "local") | backups.superseded


def newest_usable_set(spec: StateSpec, backups: BackupsObservation) -> BackupSet | None:
    """The set ``observed_backup_drift`` ages the backups by (None: there is none), for the age that
    the daemon's metrics publish: the same figure as ``plan``'s, never a rejected or superseded set."""
    candidates = _counted_local(spec, backups.sets, backups.authenticity_in("local"), _unusable(backups))
    return max(candidates, key=order_key) if candidates else None


def observed_backup_drift(spec: StateSpec, backups: BackupsObservation, now: datetime) -> BackupDrift | None:
    """``backup_drift`` for what observation found: vouched-for local sets, minus the unusable ones."""
    return backup_drift(spec, backups.sets, now, backups.authenticity_in("local"), _unusable(backups))


def observed_backup_schedule(
    spec: StateSpec, backups: BackupsObservation, now: datetime, replaced_at: datetime | None = None
) -> BackupSchedule:
    """``backup_schedule`` for what observation found, counting exactly the sets
    ``observed_backup_drift`` counts: the daemon's ``BackupFresh`` and ``plan`` never disagree.

    A set owed only because the newest sets are unusable (a verification rejected them) is a
    *replacement*: due at once, then at most once per cadence after the last replacement
    (``replaced_at``), so that when every new set is rejected the daemon does not take one per pass."""
    authenticity = backups.authenticity_in("local")
    usable = backup_schedule(spec, backups.sets, now, authenticity, _unusable(backups))
    if not usable.due or backup_schedule(spec, backups.sets, now, authenticity).due:
        return usable
    if replaced_at is not None and now < replaced_at + spec.backup.cadence:
        next_at = replaced_at + spec.backup.cadence
        return replace(
            usable,
            due=False,
            next_at=next_at,
            reason=f"{usable.reason}; the set taken at {replaced_at:%Y-%m-%d %H:%M} UTC to replace unusable "
            f"ones is not usable either: the next one at {next_at:%Y-%m-%d %H:%M} UTC",
        )
    return replace(usable, replacement=True)


@dataclass(frozen=True)
class Headroom:
    ok: bool
    available: int | None  # bytes still usable: the smaller of host MemAvailable and tmpfs free space
    message: str
    problems: tuple[str, ...] = ()  # one sentence per check below ram.min_headroom, with its numbers


def ram_headroom(spec: StateSpec, observed: ObservedState) -> Headroom:
    """Whether RAM mode still leaves ``ram.min_headroom`` of room, checked twice (host memory available,
    free space on the tmpfs that holds the data); trivially fine in disk mode."""
    if spec.mode != "ram":
        return Headroom(True, None, "disk mode: no data in RAM")
    wanted = spec.ram.min_headroom
    figures: list[int] = []
    problems: list[str] = []
    host_available = observed.host.mem_available
    if host_available:
        figures.append(host_available)
        if host_available < wanted:
            problems.append(
                f"only {format_bytes(host_available)} of host memory available (MemAvailable), below "
                f"ram.min_headroom {format_bytes(wanted)}"
            )
    root = observed.ram_root.filesystem
    if (
        observed.ram_root.exists
        and root is not None
        and root.is_tmpfs
        and root.size_bytes is not None
        and root.used_bytes is not None
    ):
        free = max(root.size_bytes - root.used_bytes, 0)
        figures.append(free)
        if free < wanted:
            problems.append(
                f"only {format_bytes(free)} free on the tmpfs at {root.mount_point} ({format_bytes(root.used_bytes)} "
                f"used of {format_bytes(root.size_bytes)}), below ram.min_headroom {format_bytes(wanted)}: "
                "the databases' writes fail when it is full"
            )
    if not figures:
        return Headroom(True, None, "memory figures unavailable")
    available = min(figures)
    if not problems:
        return Headroom(
            True, available, f"{format_bytes(available)} available (minimum {format_bytes(wanted)})"
        )
    return Headroom(False, available, "; ".join(problems), tuple(problems))


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
