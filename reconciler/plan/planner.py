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
- The time-driven promises of state.yaml are drift too (``plan/schedule.py``): a backup set owed
  (``TakeBackup``, last, before retention) and RAM headroom below ``ram.min_headroom``, healed by the
  fallback to disk when the spec says so, otherwise ``Plan.unhealable``: the stack is not in sync, yet
  the other repairs still run (unlike a blocker, it is nothing apply could make worse).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from reconciler.plan.actions import (
    Action,
    EnsureDatabase,
    FallBackToDisk,
    InitService,
    PrepareRamRoot,
    ProtectBackups,
    PruneBackups,
    ResizeRamRoot,
    RestartService,
    RestoreFromBackup,
    ResumeOperation,
    StartService,
    StopService,
    SwitchMode,
    TakeBackup,
)
from reconciler.plan.backupsets import retention
from reconciler.plan.failures import STAYS_DOWN
from reconciler.plan.hosts import (
    HostVerdict,
    backups_scheduled_here,
    restorable_here,
    retained_here,
    set_services,
)
from reconciler.plan.observed import ObservedState, ServiceObservation
from reconciler.plan.schedule import backups_impossible, observed_backup_drift, ram_headroom
from reconciler.plan.selection import select_restore
from reconciler.spec.model import MariadbSpec, PostgresSpec, StateSpec
from reconciler.spec.units import format_bytes

# tmpfs rounds its size to whole pages, and "25%" is computed from the kernel's page count.
_SIZE_TOLERANCE = 64 * 1024


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    blockers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    not_for_host: str | None = None  # why this host leaves the stack alone (``hosts:``); no actions then
    # Drift that apply cannot heal (RAM headroom below ram.min_headroom with ram.on_pressure: warn):
    # unlike a blocker it does not stop the other actions, but the stack is not in sync.
    unhealable: tuple[str, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not self.actions and not self.blockers and not self.unhealable

    def counts(self) -> dict[str, int]:
        return {marker: sum(1 for a in self.actions if a.marker == marker) for marker in "+~-"}

    def summary(self) -> str:
        if self.blockers:
            count = len(self.blockers)
            return f"Plan blocked: {count} problem{'s' if count != 1 else ''} must be resolved first."
        if self.not_for_host is not None:
            return "No changes: the stack is not for this host."
        count = len(self.unhealable)
        cannot = f"{count} problem{'s' if count != 1 else ''} apply cannot heal" if count else ""
        if not self.actions:
            return f"No changes apply can make; {cannot}." if cannot else "No changes: the stack is in sync."
        c = self.counts()
        summary = f"Plan: {c['+']} to add, {c['~']} to change, {c['-']} to remove."
        return f"{summary[:-1]}; {cannot}." if cannot else summary

    def to_dict(self) -> dict[str, object]:
        return {
            "in_sync": self.in_sync,
            "summary": self.summary(),
            "actions": [a.to_dict() for a in self.actions],
            "blockers": list(self.blockers),
            "unhealable": list(self.unhealable),
            "warnings": list(self.warnings),
            "counts": self.counts(),
            "notes": list(self.notes),
            "notForThisHost": self.not_for_host,
        }


def should_mount(desired: StateSpec, observed: ObservedState) -> bool:
    return desired.ram.mount == "always" or (desired.ram.mount == "auto" and observed.host.is_root)


# Room to spare when data moves into RAM: PostgreSQL grows its files while it runs (WAL, temp files).
RAM_SAFETY_FACTOR = 1.2
# Copy speed assumed before the first switch on a host has measured one (bench/switch.py: tmpfs<->disk).
DEFAULT_COPY_BYTES_PER_SECOND = 300 * 1024**2
SWITCH_FIXED_SECONDS = 3.0  # stop, start and verify of small servers
BACKUP_BYTES_PER_SECOND = 100 * 1024**2  # bench/backup.py: ~12 s for a 1.1 GB database
CHECKSUM_BYTES_PER_SECOND = 1024**3  # bench/switch.py: per-table checksums of a 1.1 GB database in ~1 s
CHANGED_SHARE = 0.1  # assumed share of the data directory rewritten between pre-copy and stop


def not_for_host(verdict: HostVerdict) -> Plan:
    """The plan on a host that ``hosts:`` leaves out: nothing at all, and why.

    Not "desired: nothing": a host that stops matching never stops, deletes or backs up anything
    (running services are left alone); it needs no observation either, so it is decided before any.
    """
    reason = verdict.stack_reason or ""
    return Plan(
        not_for_host=reason,
        notes=(
            f"not for this host: {reason}",
            "nothing is started, stopped, restored, backed up or deleted here; if this host no longer "
            "matches, services of this stack still running here are left alone: `reconciler down` stops them",
        ),
    )


def plan_for_host(
    desired: StateSpec,
    observed: ObservedState,
    now: datetime,
    verdict: HostVerdict | None,
    allow_empty: bool = False,
    upkeep: bool = True,
) -> Plan:
    """``plan`` behind the host conditions: ``desired`` already holds only this host's services
    (``hosts.for_this_host``); the services left out are named in the notes."""
    if verdict is not None and not verdict.matches:
        return not_for_host(verdict)
    skipped = frozenset(verdict.skipped) if verdict is not None else frozenset()
    the_plan = plan(desired, observed, now, allow_empty, skipped, upkeep)
    return replace(the_plan, notes=the_plan.notes + verdict.notes()) if verdict is not None else the_plan


def plan(
    desired: StateSpec,
    observed: ObservedState,
    now: datetime,
    allow_empty: bool = False,
    skipped: frozenset[str] = frozenset(),
    upkeep: bool = True,
) -> Plan:
    """The ordered actions that take ``observed`` to ``desired``, or the blockers that forbid acting.

    ``allow_empty``: start services empty even though backup sets exist that cannot be restored
    (``reconciler apply --allow-empty``); the existing sets are protected from retention first.
    ``skipped``: services ``hosts:`` leaves to other hosts (``desired`` holds the others): their sets
    are not this host's to restore from or to rotate (``hosts.restorable_here``, ``hosts.retained_here``).
    ``upkeep``: include the time-driven promises of state.yaml (``backup.stale_after``,
    ``ram.min_headroom``; see ``plan/schedule.py``). The daemon plans without them: it keeps those
    promises in its own upkeep, with its own backoff, from the same pure functions.
    """
    if observed.operation is not None:
        op = observed.operation
        return Plan(
            actions=(ResumeOperation(op.operation_id, op.kind, op.next_step, op.past_point_of_no_return),),
            warnings=(
                f"an interrupted {op.kind} ({op.from_mode} → {op.to_mode}) runs to a safe point first; "
                "changes to state.yaml are planned after it",
            ),
        )
    pressure = _ram_pressure(desired, observed) if upkeep else ()
    if pressure and desired.ram.on_pressure == "fallback-to-disk":
        disk = desired.model_copy(update={"mode": "disk"}).with_base_dir(desired.base_dir)
        fallback = plan(disk, observed, now, allow_empty, skipped, upkeep)
        if fallback.blockers:
            return fallback
        return replace(fallback, actions=(FallBackToDisk("; ".join(pressure)), *fallback.actions))
    actions: list[Action] = []
    blockers: list[str] = []
    warnings: list[str] = []

    if desired.mode == "ram":
        _plan_ram_root(desired, observed, actions, blockers)

    empty: list[str] = []
    switching: list[str] = []
    per_service: list[Action] = []
    before_switch: list[Action] = []
    for name, spec in desired.services.configured().items():
        service = observed.services.get(name) or ServiceObservation(name=name)
        verdict = _plan_service(desired, name, spec, service, per_service, before_switch, blockers, warnings)
        if verdict == "empty":
            empty.append(name)
        elif verdict == "switch":
            switching.append(name)

    if switching:
        actions.extend(before_switch)
        _plan_switch(desired, observed, switching, actions, blockers)
    protected = set(observed.backups.protected)
    if empty:
        protected |= _plan_empty_services(
            desired,
            observed,
            now,
            empty,
            allow_empty,
            actions,
            blockers,
            warnings,
        )
    actions.extend(per_service)
    if upkeep:  # after a switch too: the step is skipped when the switch's own set made it fresh
        ours = frozenset(desired.services.configured())
        mine = backups_scheduled_here(observed.backups, ours, skipped)
        _plan_backup(desired, replace(observed, backups=mine), now, actions, warnings)

    retained = replace(observed.backups, sets=retained_here(observed.backups.sets, skipped))
    _plan_retention(
        desired, replace(observed, backups=retained), now, actions, warnings, frozenset(protected)
    )

    if blockers:
        return Plan(actions=(), blockers=tuple(blockers), warnings=tuple(warnings))
    unhealable = tuple(
        f"RAM headroom: {problem}. Free memory, lower ram.min_headroom, set ram.on_pressure: "
        "fallback-to-disk to let apply move the data to disk, or switch to mode: disk"
        for problem in pressure
    )
    return Plan(actions=tuple(actions), warnings=tuple(warnings), unhealable=unhealable)


def _ram_pressure(desired: StateSpec, observed: ObservedState) -> tuple[str, ...]:
    """The headroom checks that fail while the stack holds data in RAM (before that, entering RAM mode
    is the switch's preflight, which checks the same room with the data's size added)."""
    if desired.mode != "ram":
        return ()
    in_ram = any(
        (svc := observed.services.get(name)) is not None
        and (svc.ram.initialized or (svc.running and svc.data_dir == svc.ram.path))
        for name in desired.services.configured()
    )
    return ram_headroom(desired, _after_planned_resize(desired, observed)).problems if in_ram else ()


def _after_planned_resize(desired: StateSpec, observed: ObservedState) -> ObservedState:
    """``observed`` with the dedicated tmpfs at the size ``_plan_ram_root`` resizes it to, when it does:
    a larger ``ram.tmpfs_size`` is the cure for a full tmpfs, so the headroom is judged after it (not
    reported as unhealable, nor healed by falling back to disk instead)."""
    root, fs = observed.ram_root, observed.ram_root.filesystem
    if not (root.dedicated_mount and should_mount(desired, observed)) or fs is None or fs.size_bytes is None:
        return observed
    planned = desired.ram.tmpfs_size.resolve(observed.host.mem_total)
    if abs(fs.size_bytes - planned) <= _SIZE_TOLERANCE or planned < (fs.used_bytes or 0):
        return observed  # no resize planned (or a shrink refused as a blocker)
    return replace(observed, ram_root=replace(root, filesystem=replace(fs, size_bytes=planned)))


def _plan_backup(
    desired: StateSpec, observed: ObservedState, now: datetime, actions: list[Action], warnings: list[str]
) -> None:
    """A backup set when the newest one breaks backup.stale_after (or none exists): last, once every
    service runs, before retention (which then counts it; apply runs the retention it makes due)."""
    drift = observed_backup_drift(desired, observed.backups, now)
    if drift is None:
        return
    impossible = backups_impossible(desired)
    if impossible:
        warnings.append(f"{drift.reason}, and {impossible}")
        return
    actions.append(TakeBackup(desired.stack, drift.reason, drift.trigger, now.isoformat()))


def _plan_switch(
    desired: StateSpec,
    observed: ObservedState,
    switching: list[str],
    actions: list[Action],
    blockers: list[str],
) -> None:
    to_mode = desired.mode
    from_mode = "disk" if to_mode == "ram" else "ram"
    data_bytes = sum(observed.services[name].location(from_mode).size_bytes for name in switching)
    needed = int(data_bytes * RAM_SAFETY_FACTOR)
    if to_mode == "ram":
        root = observed.ram_root
        if root.dedicated_mount or not should_mount(desired, observed):
            fs = root.filesystem
            free = (fs.size_bytes or 0) - (fs.used_bytes or 0) if fs is not None else 0
        else:
            free = desired.ram.tmpfs_size.resolve(observed.host.mem_total)
        if needed > free:
            blockers.append(
                f"preflight: the data ({format_bytes(data_bytes)}, {format_bytes(needed)} with a "
                f"{RAM_SAFETY_FACTOR:g}x safety factor) does not fit the tmpfs at {root.path}, which has "
                f"{format_bytes(max(free, 0))} free. Raise ram.tmpfs_size, or stay in disk mode"
            )
            return
        if free - needed < desired.ram.min_headroom:  # the headroom drift check, before the switch
            blockers.append(
                f"preflight: after moving {format_bytes(needed)} into the tmpfs at {root.path} only "
                f"{format_bytes(max(free - needed, 0))} of it would stay free, below ram.min_headroom "
                f"({format_bytes(desired.ram.min_headroom)}): the databases' writes fail when it is full. "
                "Raise ram.tmpfs_size, lower ram.min_headroom, or stay in disk mode"
            )
            return
        left = observed.host.mem_available - needed
        if left < desired.ram.min_headroom:
            blockers.append(
                f"preflight: after moving {format_bytes(needed)} into RAM only {format_bytes(max(left, 0))} of "
                f"memory would stay available, below ram.min_headroom ({format_bytes(desired.ram.min_headroom)}). "
                "Free memory, lower ram.min_headroom, or stay in disk mode"
            )
            return
    speed = observed.copy_bytes_per_second or DEFAULT_COPY_BYTES_PER_SECOND
    actions.append(
        SwitchMode(
            from_mode=from_mode,
            to_mode=to_mode,
            services=tuple(switching),
            sources=tuple(observed.services[name].location(from_mode).path for name in switching),
            targets=tuple(desired.data_dir(name) for name in switching),
            ports=tuple(desired.port(name) for name in switching),
            data_bytes=data_bytes,
            expected_downtime_seconds=round(
                SWITCH_FIXED_SECONDS
                + 2 * data_bytes / CHECKSUM_BYTES_PER_SECOND  # fingerprint before, verify after
                + CHANGED_SHARE * data_bytes / speed  # the bulk is pre-copied while the apps run
                + (data_bytes / BACKUP_BYTES_PER_SECOND if desired.ram.switch_backup == "drained" else 0),
                1,
            ),
            keep_old_copy=to_mode == "ram" and desired.ram.keep_disk_copy,
            backup_while_drained=desired.ram.switch_backup == "drained",
            drain_stop_timeout_seconds=(
                desired.drain.stop_timeout.total_seconds()
                if desired.runtime == "docker" and desired.drain.containers
                else 0
            ),
        )
    )


def _plan_empty_services(
    desired: StateSpec,
    observed: ObservedState,
    now: datetime,
    empty: list[str],
    allow_empty: bool,
    actions: list[Action],
    blockers: list[str],
    warnings: list[str],
) -> set[str]:
    """Services with no data where they should have it: restore them, refuse, or start them empty.

    Returns the set names that retention must keep during this plan: the restore candidates, or the
    sets being protected before an empty start (their protection takes effect within this same plan).
    """
    empty = _without_unheld(desired, observed, empty, actions, blockers, warnings)
    if not empty:
        return set()
    candidates = restorable_here(observed.backups.sets, frozenset(empty))
    others = sum(1 for s in observed.backups.sets if s.complete) - sum(1 for s in candidates if s.complete)
    selection = select_restore(candidates, observed.backups.not_for_restore(), now, desired.stack)
    warnings.extend(selection.warnings)
    if selection.candidates:
        pg = desired.services.postgres
        actions.append(
            RestoreFromBackup(
                services=tuple(empty),
                candidates=tuple((s.store, s.name) for s in selection.candidates),
                data_dirs=tuple(desired.data_dir(name) for name in empty),
                ports=tuple(desired.port(name) for name in empty),
                mode=desired.mode,
                database=pg.database if pg is not None and "postgres" in empty else None,
                owner=pg.user if pg is not None and "postgres" in empty else None,
                accounts=tuple(
                    (name, svc.database, svc.user)
                    for name, svc in desired.services.configured().items()
                    if name in empty and isinstance(svc, MariadbSpec)
                ),
            )
        )
        return {s.name for s in selection.candidates}
    if selection.rejected and not allow_empty:
        reasons = "; ".join(f"{s.name} ({s.store}): {why}" for s, why in selection.rejected)
        blockers.append(
            f"{' and '.join(empty)} have no data, and none of the {len(selection.rejected)} backup set(s) can be "
            f"restored: {reasons}. {STAYS_DOWN}. Fix or replace the backups, "
            "or run `reconciler apply --allow-empty` to start empty on purpose (the old sets are then protected)"
        )
        return set()
    protect: set[str] = set()
    if selection.rejected:
        protect = {s.name for s, _ in selection.rejected}
        names = tuple(sorted(protect - observed.backups.protected))
        if names:
            actions.append(ProtectBackups(names))
        warnings.append(
            f"starting {' and '.join(empty)} EMPTY on request (--allow-empty): no backup set can be restored"
        )
    else:
        incomplete = [s.name for s in observed.backups.sets if not s.complete]
        note = f" ({len(incomplete)} incomplete set(s) ignored)" if incomplete else ""
        if others:
            note += f"; its {others} set(s) hold only other services (added since, or another host's)"
        what = f"{' and '.join(empty)} of stack {desired.stack}" if others else f"stack {desired.stack}"
        warnings.append(
            f"no backup of {what} exists in any store{note}: {' and '.join(empty)} will start with EMPTY data"
        )
    _start_empty(desired, observed, empty, actions, blockers)
    return protect


def _without_unheld(
    desired: StateSpec,
    observed: ObservedState,
    empty: list[str],
    actions: list[Action],
    blockers: list[str],
    warnings: list[str],
) -> list[str]:
    """Start empty the services that no complete set holds, while others of ``empty`` have sets: a
    service added to the stack (or moved to this host) after its last backup. Restoring it together
    with the others would reject every set holding only them (their data refused for its absence).
    Only when every complete set's members are known from its file names; the rest are returned."""
    complete = [s for s in observed.backups.sets if s.complete]
    services = [set_services(s) for s in complete]
    if not complete or not all(services):
        return empty
    held = frozenset().union(*services)
    unheld = [name for name in empty if name not in held]
    if not unheld or len(unheld) == len(empty):
        return empty
    warnings.append(
        f"no backup set of stack {desired.stack} holds {' or '.join(unheld)} (added since, or moved here from "
        f"another host): {' and '.join(unheld)} will start with EMPTY data"
    )
    _start_empty(desired, observed, unheld, actions, blockers)
    return [name for name in empty if name in held]


def _start_empty(
    desired: StateSpec, observed: ObservedState, names: list[str], actions: list[Action], blockers: list[str]
) -> None:
    for name in names:
        service = observed.services.get(name) or ServiceObservation(name=name)
        target = service.location(desired.mode)
        if target.restore_incomplete:  # initdb never runs over it, and it is never served as it is
            blockers.append(
                f"{name}: {target.path} holds a restore that did not complete, and no backup set is left to "
                "restore it from. Move the directory away to start empty, or bring the backup sets back"
            )
            continue
        _fresh_service(desired, name, desired.services.configured()[name], service, actions)


def _plan_retention(
    desired: StateSpec,
    observed: ObservedState,
    now: datetime,
    actions: list[Action],
    warnings: list[str],
    protected: frozenset[str],
) -> None:
    backups = observed.backups
    for store in sorted({s.store for s in backups.sets}):
        sets = [s for s in backups.sets if s.store == store]
        decision = retention(
            sets,
            desired.backup.retention,
            now,
            backups.verified,
            backups.newest_attempt_failed,
            protected,
            authenticity=backups.authenticity_in(store),
            require_verified=desired.daemon.verify_new_sets,
            rejected={name: why for (where, name), why in backups.rejected.items() if where == store},
            superseded=backups.superseded,
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


def _serves_from_below(data_dir: str | None, root: str) -> bool:
    """A running service's data directory is the RAM root or below it (a service serving its disk
    directory holds nothing a mount at the RAM root could hide)."""
    return data_dir is not None and (data_dir == root or data_dir.startswith(root.rstrip("/") + "/"))


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
            if (svc := observed.services.get(name)) is not None
            and (svc.ram.initialized or (svc.running and _serves_from_below(svc.data_dir, root.path)))
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
    before_switch: list[Action],
    blockers: list[str],
    warnings: list[str],
) -> str:
    """Plan one service. Returns "ok", "blocked", "empty" (no data anywhere: restore or initialise)
    or "switch" (its data is in the other mode's location and must move; what the switch needs first
    goes to ``before_switch``)."""
    mode = desired.mode
    other_mode = "disk" if mode == "ram" else "ram"
    target = service.location(mode)
    other = service.location(other_mode)

    if target.foreign:
        blockers.append(
            f"{name}: {target.path} is not empty and does not hold {name} data; refusing to touch it. "
            f"Empty it or point {'ram.path' if mode == 'ram' else f'services.{name}.disk_dir'} elsewhere"
        )
        return "blocked"
    if not target.reachable:
        blockers.append(
            f"{name}: the service user cannot reach {target.path} (a parent directory is not searchable "
            "by others). Choose a directory whose parents have mode o+x, such as /var/lib/reconciler"
        )
        return "blocked"
    if service.unmanaged_mount:
        blockers.append(
            f"{name}: container {service.container} keeps its data in {service.unmanaged_mount}, which is "
            f"neither {service.ram.path} (ram mode) nor {service.disk.path} (disk mode); refusing to guess "
            f"which data is current. Point services.{name}.disk_dir at it, or move the data and recreate the container"
        )
        return "blocked"
    if service.died:
        warnings.append(f"{name} was not running: its process had died")
    if service.role_password.startswith("unset:"):
        warnings.append(
            f"{name}: services.{name}.password_env names {service.role_password[6:]}, which is not set: "
            "the role's password is left as it is, and an application logging in with a password may fail"
        )
    target_has_data = target.initialized and not target.stale
    running_elsewhere = service.running and service.data_dir is not None and service.data_dir != target.path
    other_has_data = running_elsewhere or (other.initialized and not other.stale)
    if target_has_data and other_has_data:
        blockers.append(
            f"{name} holds data both in {target.path} ({mode} mode) and in {other.path} ({other_mode} mode); "
            "refusing to guess which is current. Move the one you do not want out of the way"
        )
        return "blocked"
    if other_has_data:
        # Repairs come before the switch: its first act is a backup of the running services, so a dead
        # service is started where its data is, and a missing role or database is created there (it
        # moves with the data).
        if not service.running:
            reason = (
                "its process died; the switch backs it up first"
                if service.died
                else "the switch backs it up first"
            )
            before_switch.append(StartService(name, other.path, desired.port(name), reason))
        _ensure_database(spec, service, before_switch)
        return "switch"
    if not target_has_data:
        if target.restore_incomplete:
            warnings.append(
                f"{name}: the restore into {target.path} did not complete; it is restored again (never served as it is)"
            )
        return "empty"
    _running_service(desired, name, spec, service, actions)
    return "ok"


def _fresh_service(
    desired: StateSpec, name: str, spec: object, service: ServiceObservation, actions: list[Action]
) -> None:
    actions.append(InitService(name, desired.data_dir(name), desired.mode))
    _running_service(desired, name, spec, service, actions)


def _running_service(
    desired: StateSpec, name: str, spec: object, service: ServiceObservation, actions: list[Action]
) -> None:
    target = desired.data_dir(name)
    port = desired.port(name)
    if service.running and service.port != port:
        actions.append(RestartService(name, target, port, f"listening on {service.port}, want {port}"))
    elif service.running and service.drift:
        actions.append(
            RestartService(name, target, port, f"recreate container {service.container}: {service.drift}")
        )
    elif not service.running:
        reason = f"process {service.pid} died" if service.died and service.pid else ""
        if service.died and not reason:
            reason = "its process died"
        actions.append(StartService(name, target, port, reason))

    _ensure_database(spec, service, actions)


def _ensure_database(spec: object, service: ServiceObservation, actions: list[Action]) -> None:
    if isinstance(spec, PostgresSpec | MariadbSpec):
        roles = service.roles if service.running else None
        databases = service.databases if service.running else None
        create_role = roles is None or spec.user not in roles
        create_database = databases is None or spec.database not in databases
        stale = service.running and service.role_password == "stale"
        if create_role or create_database or stale:
            known = roles is not None and databases is not None
            actions.append(
                EnsureDatabase(
                    service.name, spec.database, spec.user, create_role, create_database, known, stale
                )
            )
