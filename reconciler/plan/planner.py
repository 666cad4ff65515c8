"""``plan(desired, observed, now)``: the pure heart of the reconciler.

Design decisions:
- Pure and total: no I/O, no clock (``now`` is an argument), no exceptions for expected situations.
  A situation the reconciler must not act on becomes a *blocker* with a sentence that tells the user
  what is wrong and what to do; the plan then carries no actions at all, so a blocked apply changes
  nothing.
- Safety first, in this order: never initialise over a directory that holds something else; never
  mount a tmpfs over a directory that holds data; never start a fresh, empty service while its data
  sits in the other mode's location (that is a mode switch, which must move the data first).
- Ordering: the RAM root before anything that lives in it; per service, init → start → database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from reconciler.plan.actions import (
    Action,
    EnsureDatabase,
    InitService,
    PrepareRamRoot,
    PruneBackups,
    ResizeRamRoot,
    RestartService,
    StartService,
    StopService,
)
from reconciler.plan.backupsets import retention
from reconciler.plan.observed import ObservedState, ServiceObservation
from reconciler.spec.model import PostgresSpec, StateSpec
from reconciler.spec.units import format_bytes

# tmpfs rounds its size to whole pages, and "25%" is computed from the kernel's page count.
_SIZE_TOLERANCE = 64 * 1024


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    blockers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def in_sync(self) -> bool:
        return not self.actions and not self.blockers

    def counts(self) -> dict[str, int]:
        return {marker: sum(1 for a in self.actions if a.marker == marker) for marker in "+~-"}

    def summary(self) -> str:
        if self.blockers:
            count = len(self.blockers)
            return f"Plan blocked: {count} problem{'s' if count != 1 else ''} must be resolved first."
        if not self.actions:
            return "No changes: the stack is in sync."
        c = self.counts()
        return f"Plan: {c['+']} to add, {c['~']} to change, {c['-']} to remove."

    def to_dict(self) -> dict[str, object]:
        return {
            "in_sync": self.in_sync,
            "summary": self.summary(),
            "actions": [a.to_dict() for a in self.actions],
            "blockers": list(self.blockers),
            "warnings": list(self.warnings),
            "counts": self.counts(),
        }


def should_mount(desired: StateSpec, observed: ObservedState) -> bool:
    return desired.ram.mount == "always" or (desired.ram.mount == "auto" and observed.host.is_root)


def plan(desired: StateSpec, observed: ObservedState, now: datetime) -> Plan:
    actions: list[Action] = []
    blockers: list[str] = []
    warnings: list[str] = []

    if desired.mode == "ram":
        _plan_ram_root(desired, observed, actions, blockers)

    for name, spec in desired.services.configured().items():
        service = observed.services.get(name) or ServiceObservation(name=name)
        _plan_service(desired, name, spec, service, actions, blockers, warnings)

    _plan_retention(desired, observed, now, actions, warnings)

    if blockers:
        return Plan(actions=(), blockers=tuple(blockers), warnings=tuple(warnings))
    return Plan(actions=tuple(actions), warnings=tuple(warnings))


def _plan_retention(
    desired: StateSpec, observed: ObservedState, now: datetime, actions: list[Action], warnings: list[str]
) -> None:
    backups = observed.backups
    for store in sorted({s.store for s in backups.sets}):
        sets = [s for s in backups.sets if s.store == store]
        decision = retention(
            sets, desired.backup.retention, now, backups.verified, backups.newest_attempt_failed
        )
        if decision.held_back and decision.held_back != "would delete every set":
            warnings.append(f"retention of the {store} store is on hold: {decision.held_back}")
        if decision.delete:
            actions.append(PruneBackups(store, tuple(sorted(decision.delete))))


def plan_down(desired: StateSpec, observed: ObservedState) -> Plan:
    """Stop every running service of the stack; data stays where it is."""
    actions: list[Action] = []
    warnings: list[str] = []
    for name in reversed(list(desired.services.configured())):
        service = observed.services.get(name)
        if service is not None and service.running and service.data_dir:
            actions.append(StopService(name, service.data_dir))
            if service.data_dir == desired.ram_dir(name):
                warnings.append(
                    f"{name}'s data stays on tmpfs in {service.data_dir}: it survives `down` but not a reboot"
                )
    return Plan(actions=tuple(actions), warnings=tuple(warnings))


def _plan_ram_root(
    desired: StateSpec, observed: ObservedState, actions: list[Action], blockers: list[str]
) -> None:
    root = observed.ram_root
    mount = should_mount(desired, observed)
    size_bytes = desired.ram.tmpfs_size.resolve(observed.host.mem_total)
    size_option = desired.ram.tmpfs_size.mount_option()

    if mount and not root.dedicated_mount:
        holding = [
            name
            for name in desired.services.configured()
            if (svc := observed.services.get(name)) is not None and (svc.ram.initialized or svc.running)
        ]
        if holding:
            blockers.append(
                f"{root.path} already holds data of {', '.join(holding)} but is not a dedicated tmpfs; "
                "mounting one there would hide that data. Set ram.mount: never to keep using it as it is"
            )
            return
        actions.append(PrepareRamRoot(root.path, True, size_option, size_bytes))
        return

    if root.dedicated_mount:
        fs = root.filesystem
        current = fs.size_bytes if fs is not None else None
        if mount and current is not None and abs(current - size_bytes) > _SIZE_TOLERANCE:
            used = (fs.used_bytes if fs is not None else 0) or 0
            if size_bytes < used:
                blockers.append(
                    f"cannot shrink the tmpfs at {root.path} to {size_option} ({format_bytes(size_bytes)}): "
                    f"it holds {format_bytes(used)}. Raise ram.tmpfs_size"
                )
            else:
                actions.append(ResizeRamRoot(root.path, size_option, size_bytes, current))
        return

    # Not mounting: the directory must already sit on a tmpfs, or "RAM mode" would write to disk.
    fs = root.filesystem
    if fs is None or not fs.is_tmpfs:
        where = f"on {fs.fstype} ({fs.mount_point})" if fs else "on an unknown filesystem"
        blockers.append(
            f"ram.path {root.path} is {where}, not on a tmpfs: RAM mode would write to disk. "
            "Use a path under /dev/shm, or set ram.mount: always (needs root)"
        )
        return
    if not root.exists:
        actions.append(PrepareRamRoot(root.path, False, size_option, size_bytes))


def _plan_service(
    desired: StateSpec,
    name: str,
    spec: object,
    service: ServiceObservation,
    actions: list[Action],
    blockers: list[str],
    warnings: list[str],
) -> None:
    mode = desired.mode
    other_mode = "disk" if mode == "ram" else "ram"
    target = service.location(mode)
    other = service.location(other_mode)
    port = desired.port(name)

    if target.foreign:
        blockers.append(
            f"{name}: {target.path} is not empty and does not hold {name} data; refusing to touch it. "
            f"Empty it or point {'ram.path' if mode == 'ram' else f'services.{name}.disk_dir'} elsewhere"
        )
        return
    if not target.reachable:
        blockers.append(
            f"{name}: the service user cannot reach {target.path} (a parent directory is not searchable "
            "by others). Choose a directory whose parents have mode o+x, such as /var/lib/reconciler"
        )
        return
    running_elsewhere = service.running and service.data_dir is not None and service.data_dir != target.path
    data_elsewhere = other.initialized and not target.initialized
    if running_elsewhere or data_elsewhere:
        where = service.data_dir if running_elsewhere else other.path
        blockers.append(
            f"{name} holds data in {where} ({other_mode} mode) but state.yaml asks for {mode} mode. "
            f"Switching a stack that holds data between modes is not supported yet. "
            f"Set `mode: {other_mode}` to keep the data where it is"
        )
        return

    if not target.initialized:
        actions.append(InitService(name, target.path, mode))

    if service.running and service.port != port:
        actions.append(RestartService(name, target.path, port, f"listening on {service.port}, want {port}"))
    elif not service.running:
        reason = f"process {service.pid} died" if service.died and service.pid else ""
        if service.died and not reason:
            reason = "its process died"
        actions.append(StartService(name, target.path, port, reason))

    if isinstance(spec, PostgresSpec):
        roles = service.roles if service.running else None
        databases = service.databases if service.running else None
        create_role = roles is None or spec.user not in roles
        create_database = databases is None or spec.database not in databases
        if create_role or create_database:
            known = roles is not None and databases is not None
            actions.append(
                EnsureDatabase(name, spec.database, spec.user, create_role, create_database, known)
            )
    if service.died:
        warnings.append(f"{name} was not running: its process had died")
