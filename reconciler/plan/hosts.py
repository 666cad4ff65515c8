"""Host conditions (``hosts:``): is this stack, and each of its services, for this machine?

Design decisions:
- One state.yaml is committed to a repository that several machines pull; ``hosts:`` says where a
  stack or a service runs. The facts (hostname, which of the named files exist, the named environment
  variables) are read by ``observe/hostfacts.py``; the decision is made here, pure, on those facts, so
  it is property-tested like the rest of the planner.
- Every condition given must hold (AND); within ``hostname`` one matching glob is enough (OR). A
  pattern matches the hostname (``uname -n``) or its short form (before the first dot), ignoring case.
- "Not for this host" is *not* "desired: nothing". A machine that stops matching (the file was
  removed, the hostname changed, the repository now names another machine) must not stop or delete
  what runs there: the plan is empty and says so, and only a human's ``reconciler down`` stops the
  services. The same holds for a service that is not for this host: it is left out of this host's
  spec (never started, backed up, restored, drained or moved by a switch here) but never stopped.
- A stack whose every service is excluded is not for this host either: there is nothing to run, and
  the daemon may idle rather than observe servers it does not manage.
- A stack split across hosts (postgres here, redis there) may share a store (one Drive folder named
  in the one state.yaml). A host then reads sets by their members (file names, no content): restore
  on boot never tries a set that holds none of its services (another host's set), and retention never
  counts nor deletes a set that holds a member of a service it does not run (someone else's data;
  that host's retention decides). A set taken before the split holds both: it is a restore candidate
  here (only this host's members are restored). Its owner for retention is the host that runs the
  first of its services by name (each host knows that from its own verdict alone, so exactly one
  host owns it when the services are split without overlap), and only once every service of it that
  runs elsewhere has a newer complete set in the store: until then it may be the other host's only
  backup, and nobody deletes it. Before that rule, pre-split sets were deleted by neither host and
  piled up forever. The daemon's backup schedule counts only sets holding every service of this host.
- A reason names the actual hostname and every failed condition, but never the actual value of an
  environment variable (it may be private); the expected one is in state.yaml anyway.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from reconciler.plan.backupsets import BackupSet, order_key, split_file_name
from reconciler.spec.model import SERVICE_KINDS, HostsSpec, StateSpec

if TYPE_CHECKING:
    from reconciler.plan.observed import BackupsObservation


@dataclass(frozen=True)
class HostFacts:
    """What the host conditions are decided on; only the files and variables state.yaml names."""

    hostname: str
    existing_files: frozenset[str] = frozenset()
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HostVerdict:
    """The decision for one stack on one host."""

    hostname: str
    stack_reason: str | None = None  # why the stack is not for this host; None: it is
    skipped: Mapping[str, str] = field(default_factory=dict)  # service → why it is not for this host

    @property
    def matches(self) -> bool:
        return self.stack_reason is None

    def notes(self) -> tuple[str, ...]:
        """What `plan` says about services this host leaves alone."""
        return tuple(
            f"{name} is not for this host ({why}): it is not started, backed up or restored here; if it "
            "still runs here it is left alone (`reconciler down` stops it)"
            for name, why in sorted(self.skipped.items())
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "hostname": self.hostname,
            "matches": self.matches,
            "reason": self.stack_reason,
            "skippedServices": dict(self.skipped),
        }


def hostname_matches(patterns: list[str], hostname: str) -> bool:
    name = hostname.lower()
    short = name.split(".", 1)[0]
    return any(fnmatch.fnmatchcase(candidate, p.lower()) for p in patterns for candidate in (name, short))


def failed_conditions(hosts: HostsSpec | None, facts: HostFacts) -> list[str]:
    """Every condition of ``hosts`` that does not hold on this host, in words (empty: all hold)."""
    if hosts is None:
        return []
    failed: list[str] = []
    if hosts.hostname is not None and not hostname_matches(hosts.hostname, facts.hostname):
        failed.append(f"hostname {facts.hostname!r} matches none of {', '.join(hosts.hostname)}")
    if hosts.file_exists is not None and hosts.file_exists not in facts.existing_files:
        failed.append(f"{hosts.file_exists} does not exist")
    for name, expected in sorted((hosts.env or {}).items()):
        actual = facts.env.get(name)
        if actual is None:
            failed.append(f"${name} is not set (wanted {expected!r})")
        elif actual != expected:
            failed.append(f"${name} is set to another value than {expected!r}")
    return failed


def decide(spec: StateSpec, facts: HostFacts) -> HostVerdict:
    """Whether ``spec``'s stack, and each of its services, is for the host ``facts`` describe."""
    stack_failed = failed_conditions(spec.hosts, facts)
    skipped = {
        name: "; ".join(failed)
        for name, svc in spec.services.configured().items()
        if (failed := failed_conditions(svc.hosts, facts))
    }
    reason: str | None = None
    if stack_failed:
        reason = "; ".join(stack_failed)
    elif skipped and len(skipped) == len(spec.services.configured()):
        reason = "none of its services is for this host: " + "; ".join(
            f"{name}: {why}" for name, why in sorted(skipped.items())
        )
    return HostVerdict(hostname=facts.hostname, stack_reason=reason, skipped=skipped)


def for_this_host(spec: StateSpec, verdict: HostVerdict) -> StateSpec:
    """The spec this host acts on: ``spec`` without the services that are not for this host.

    Everything downstream (planner, backups, restore on boot, switch, drain) reads services from the
    spec, so a service left out here is left out everywhere on this host, by construction.
    """
    if not verdict.skipped or not verdict.matches:
        return spec
    services = spec.services.model_copy(update=dict.fromkeys(verdict.skipped))
    return spec.model_copy(update={"services": services}).with_base_dir(spec.base_dir)


def finishing_here(verdict: HostVerdict, journaled: frozenset[str] | None) -> HostVerdict:
    """``verdict`` while an operation journaled on this host (a switch, a restore) is unfinished: every
    service it moved stays this host's, and so does the stack, until the journal reaches its safe
    point. The conditions may have changed since it began (a pull, a variable gone after the reboot
    that cut it short); the journal's services are stopped, drained or half copied, and only this host
    can finish or roll back what it started. ``journaled``: None when no operation is unfinished."""
    if journaled is None:
        return verdict
    skipped = {name: why for name, why in verdict.skipped.items() if name not in journaled}
    return replace(verdict, stack_reason=None, skipped=skipped)


def referenced(spec: StateSpec) -> tuple[frozenset[str], frozenset[str]]:
    """The files and environment variables the conditions of ``spec`` name (what to look at)."""
    conditions = [spec.hosts, *(svc.hosts for svc in spec.services.configured().values())]
    files = frozenset(h.file_exists for h in conditions if h is not None and h.file_exists is not None)
    names = frozenset(name for h in conditions if h is not None for name in (h.env or {}))
    return files, names


def set_services(backup_set: BackupSet) -> frozenset[str]:
    """The services a set holds a member of, from its file names (``<set>.postgres.pgdump.zst.age``)."""
    found = set()
    for stored in backup_set.files:
        split = split_file_name(stored.name)
        if split is not None and split[1].split(".", 1)[0] in SERVICE_KINDS:
            found.add(split[1].split(".", 1)[0])
    return frozenset(found)


def restorable_here(sets: tuple[BackupSet, ...], empty: frozenset[str]) -> tuple[BackupSet, ...]:
    """Restore candidates for the services ``empty``: never a complete set that, by its file names,
    holds none of them (another host's set of a split stack, or a set taken before the service was
    added to the stack or moved to this host). Such a set cannot restore them, and trying it would
    record it as rejected for its content: a good set of its own services that retention then deletes
    and the next restore on boot skips. A set whose members cannot be told from its names stays."""
    return tuple(s for s in sets if not s.complete or set_services(s) & empty or not set_services(s))


def retained_here(sets: tuple[BackupSet, ...], skipped: frozenset[str]) -> tuple[BackupSet, ...]:
    """The sets this host's retention may count and delete: those holding only services it runs, and the
    pre-split sets it owns (``owns_pre_split``)."""
    if not skipped:
        return sets
    return tuple(s for s in sets if not set_services(s) & skipped or owns_pre_split(s, sets, skipped))


def owns_pre_split(backup_set: BackupSet, sets: tuple[BackupSet, ...], skipped: frozenset[str]) -> bool:
    """A set holding services of this host and of others (taken before the split) is this host's to
    rotate when the first of its services by name runs here and every service of it that runs
    elsewhere is in a newer complete set (so deleting it never takes another host's only backup)."""
    services = set_services(backup_set)
    elsewhere = services & skipped
    if not elsewhere or min(services) in skipped:
        return False
    newer = [s for s in sets if s.complete and order_key(s) > order_key(backup_set)]
    return all(any(service in set_services(s) for s in newer) for service in elsewhere)


def scheduled_here(
    sets: tuple[BackupSet, ...], ours: frozenset[str], skipped: frozenset[str]
) -> tuple[BackupSet, ...]:
    """The sets that tell a host of a split stack how old its newest backup is: those holding every one
    of its services (another host's fresh set must not make this host's backup look fresh)."""
    if not skipped:
        return sets
    return tuple(s for s in sets if ours <= set_services(s))


def backups_scheduled_here(
    backups: BackupsObservation, ours: frozenset[str], skipped: frozenset[str]
) -> BackupsObservation:
    """``backups`` with only the sets that tell this host how old its newest backup is
    (``scheduled_here``): what the planner's backup drift and apply's ``TakeBackup`` both judge by."""
    return replace(backups, sets=scheduled_here(backups.sets, ours, skipped))
