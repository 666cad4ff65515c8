"""The actions a plan is made of.

Design decisions:
- An action is inert data: what to do, to what, and a sentence for humans. The engine owns the code
  that performs it (``engine/steps.py``); the planner owns the decision to do it. Neither needs the
  other's internals, and a plan can be printed, serialised to JSON or journaled as it is.
- Each action also states its *expected effect* on the observed state (``simulate``). That makes the
  planner's central promise testable without any server: planning again against the state that the
  plan's own actions produce must yield an empty plan (convergence in one apply).
- ``marker`` follows Terraform: ``+`` brings something into existence, ``~`` changes something that
  exists, ``-`` takes something away. ``destroys_data`` flags the actions that may lose data; a
  property test checks that every such action comes after a backup of that service.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import ClassVar, Literal

from reconciler.plan.backupsets import MANIFEST_SUFFIX, BackupSet, StoredFile, set_name
from reconciler.plan.observed import DataDir, Filesystem, ObservedState, RamRoot

Marker = Literal["+", "~", "-"]


@dataclass(frozen=True)
class Action:
    marker: ClassVar[Marker] = "~"
    destroys_data: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        return type(self).__name__

    @property
    def service(self) -> str | None:
        return getattr(self, "service_name", None)

    def describe(self) -> str:
        raise NotImplementedError

    def simulate(self, observed: ObservedState) -> ObservedState:
        """The observed state once this action has succeeded."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "marker": self.marker, "description": self.describe(), **asdict(self)}


@dataclass(frozen=True)
class PrepareRamRoot(Action):
    """Create the RAM-mode root; mount a dedicated tmpfs there when asked to."""

    marker: ClassVar[Marker] = "+"
    path: str
    mount: bool
    size_option: str  # tmpfs ``size=`` value, e.g. "25%" or "4294967296"
    size_bytes: int  # the same, resolved against the host's memory

    def describe(self) -> str:
        if self.mount:
            return f"mount a tmpfs at {self.path} (size {self.size_option})"
        return f"create RAM directory {self.path}"

    def simulate(self, observed: ObservedState) -> ObservedState:
        fs = observed.ram_root.filesystem
        if self.mount:
            fs = Filesystem(self.path, "tmpfs", self.size_bytes, 0, f"size={self.size_option}")
        root = RamRoot(self.path, exists=True, filesystem=fs, dedicated_mount=self.mount)
        return replace(observed, ram_root=root)


@dataclass(frozen=True)
class ResizeRamRoot(Action):
    marker: ClassVar[Marker] = "~"
    path: str
    size_option: str
    size_bytes: int
    current_bytes: int

    def describe(self) -> str:
        from reconciler.spec.units import format_bytes

        return (
            f"resize the tmpfs at {self.path} from {format_bytes(self.current_bytes)} "
            f"to {self.size_option} ({format_bytes(self.size_bytes)})"
        )

    def simulate(self, observed: ObservedState) -> ObservedState:
        fs = observed.ram_root.filesystem
        assert fs is not None
        root = replace(observed.ram_root, filesystem=replace(fs, size_bytes=self.size_bytes))
        return replace(observed, ram_root=root)


@dataclass(frozen=True)
class InitService(Action):
    """Create an empty data directory (initdb for PostgreSQL)."""

    marker: ClassVar[Marker] = "+"
    service_name: str
    data_dir: str
    mode: str

    def describe(self) -> str:
        where = "on tmpfs" if self.mode == "ram" else "on disk"
        return f"initialise an empty {self.service_name} data directory {self.data_dir} ({where})"

    def simulate(self, observed: ObservedState) -> ObservedState:
        service = observed.services[self.service_name]
        location = replace(service.location(self.mode), exists=True, initialized=True, foreign=False)
        changed = replace(service, ram=location) if self.mode == "ram" else replace(service, disk=location)
        return observed.with_service(changed)


@dataclass(frozen=True)
class StartService(Action):
    marker: ClassVar[Marker] = "+"
    service_name: str
    data_dir: str
    port: int
    reason: str = ""

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"start {self.service_name} on 127.0.0.1:{self.port} with data in {self.data_dir}{why}"

    def simulate(self, observed: ObservedState) -> ObservedState:
        service = observed.services[self.service_name]
        started = replace(
            service,
            running=True,
            died=False,
            pid=service.pid or -1,
            port=self.port,
            data_dir=self.data_dir,
            drift=None,
        )
        return observed.with_service(started)


@dataclass(frozen=True)
class RestartService(StartService):
    marker: ClassVar[Marker] = "~"

    def describe(self) -> str:
        return f"restart {self.service_name} on 127.0.0.1:{self.port} ({self.reason})"


@dataclass(frozen=True)
class EnsureDatabase(Action):
    """Create the application's role and database when missing (idempotent when executed)."""

    marker: ClassVar[Marker] = "+"
    service_name: str
    database: str
    owner: str
    create_role: bool
    create_database: bool
    known_missing: bool = True  # False: the server is down, so what exists is not known yet
    set_password: bool = False  # the role exists with another password than the configured one

    def describe(self) -> str:
        if not self.known_missing:
            return f"ensure role {self.owner} and database {self.database} exist in {self.service_name}"
        if self.set_password and not (self.create_role or self.create_database):
            return f"set the password of role {self.owner} in {self.service_name} (it differs from the configured one)"
        parts = []
        if self.create_role:
            parts.append(f"role {self.owner}")
        if self.create_database:
            parts.append(f"database {self.database} owned by {self.owner}")
        return f"create {' and '.join(parts)} in {self.service_name}"

    def simulate(self, observed: ObservedState) -> ObservedState:
        service = observed.services[self.service_name]
        changed = replace(
            service,
            roles=(service.roles or frozenset()) | {self.owner},
            databases=(service.databases or frozenset()) | {self.database},
            role_password="" if service.role_password == "stale" else service.role_password,
        )
        return observed.with_service(changed)


@dataclass(frozen=True)
class StopService(Action):
    marker: ClassVar[Marker] = "-"
    service_name: str
    data_dir: str

    def describe(self) -> str:
        return f"stop {self.service_name} (its data stays in {self.data_dir})"

    def simulate(self, observed: ObservedState) -> ObservedState:
        service = observed.services[self.service_name]
        return observed.with_service(replace(service, running=False, pid=None, port=None, data_dir=None))


@dataclass(frozen=True)
class PruneBackups(Action):
    """Delete backup sets that the retention policy no longer keeps (never the newest verified one)."""

    marker: ClassVar[Marker] = "-"
    store: str
    set_names: tuple[str, ...]

    def describe(self) -> str:
        names = ", ".join(self.set_names)
        return (
            f"delete {len(self.set_names)} backup set(s) from the {self.store} store per retention: {names}"
        )

    def simulate(self, observed: ObservedState) -> ObservedState:
        remaining = tuple(
            s for s in observed.backups.sets if s.name not in self.set_names or s.store != self.store
        )
        return replace(observed, backups=replace(observed.backups, sets=remaining))


@dataclass(frozen=True)
class RestoreFromBackup(Action):
    """Bring empty services back from the newest usable backup set instead of starting them empty.

    The engine checks each candidate (manifest MAC, sizes, sha256) before initialising anything, falls
    back to the next on any failure, records every rejection, and never leaves an empty server running.
    """

    marker: ClassVar[Marker] = "+"
    services: tuple[str, ...]
    candidates: tuple[tuple[str, str], ...]  # (store, set name), in the order to try
    data_dirs: tuple[str, ...]
    ports: tuple[int, ...]
    mode: str
    database: str | None = None
    owner: str | None = None
    accounts: tuple[tuple[str, str, str], ...] = ()  # (service, database, owner) of other SQL engines

    @property
    def service(self) -> str | None:
        return None

    def describe(self) -> str:
        store, name = self.candidates[0]
        fallback = (
            f"; if it fails, {len(self.candidates) - 1} older set(s)" if len(self.candidates) > 1 else ""
        )
        return f"restore {' and '.join(self.services)} from backup set {name} ({store} store){fallback}"

    def simulate(self, observed: ObservedState) -> ObservedState:
        for name, data_dir, port in zip(self.services, self.data_dirs, self.ports, strict=True):
            service = observed.services[name]
            location = replace(
                service.location(self.mode),
                exists=True,
                initialized=True,
                foreign=False,
                restore_incomplete=False,
            )
            service = (
                replace(service, ram=location) if self.mode == "ram" else replace(service, disk=location)
            )
            service = replace(
                service, running=True, died=False, pid=service.pid or -1, port=port, data_dir=data_dir
            )
            accounts = [(db, owner) for svc, db, owner in self.accounts if svc == name]
            if self.database and self.owner and name == "postgres":
                accounts.append((self.database, self.owner))
            for database, owner in accounts:
                service = replace(
                    service,
                    roles=(service.roles or frozenset()) | {owner},
                    databases=(service.databases or frozenset()) | {database},
                )
            observed = observed.with_service(service)
        return observed


@dataclass(frozen=True)
class ProtectBackups(Action):
    """Exempt existing sets from retention before the stack starts empty, so that backups of the empty
    database can never rotate the real ones away."""

    marker: ClassVar[Marker] = "~"
    set_names: tuple[str, ...]

    def describe(self) -> str:
        return f"protect {len(self.set_names)} existing backup set(s) from retention (the stack starts empty)"

    def simulate(self, observed: ObservedState) -> ObservedState:
        backups = replace(observed.backups, protected=observed.backups.protected | frozenset(self.set_names))
        return replace(observed, backups=backups)


@dataclass(frozen=True)
class TakeBackup(Action):
    """Take a backup set because the newest one breaks ``backup.stale_after`` (or there is none): drift
    that ``plan`` shows with its numbers and ``apply`` heals through the engine's one backup path."""

    marker: ClassVar[Marker] = "+"
    stack: str
    reason: str
    trigger: str
    taken_at: str  # ISO time the planner read (the new set dates from the clock, like any set)

    @property
    def service(self) -> str | None:
        return None

    def describe(self) -> str:
        return f"take a backup set ({self.reason})"

    def simulate(self, observed: ObservedState) -> ObservedState:
        created = datetime.fromisoformat(self.taken_at)
        sequence = max((s.sequence for s in observed.backups.sets), default=0) + 1
        name = set_name(self.stack, created, self.trigger, sequence)
        new = BackupSet(
            name, self.stack, created, self.trigger, "local", (StoredFile(name + MANIFEST_SUFFIX, 1),)
        )
        backups = observed.backups
        authenticity = {**backups.authenticity, ("local", name): None}
        return replace(
            observed, backups=replace(backups, sets=(*backups.sets, new), authenticity=authenticity)
        )


@dataclass(frozen=True)
class FallBackToDisk(Action):
    """Record the RAM-pressure fallback (``ram.on_pressure: fallback-to-disk``): the stack runs in disk
    mode until state.yaml is edited. The switch itself follows as an ordinary ``SwitchMode``."""

    marker: ClassVar[Marker] = "~"
    reason: str

    def describe(self) -> str:
        return f"fall back to disk mode until state.yaml is edited (ram.on_pressure: fallback-to-disk): {self.reason}"

    def simulate(self, observed: ObservedState) -> ObservedState:
        return observed  # the effective spec changes (engine/context.py), not the world


SWITCH_STEPS: tuple[tuple[str, str], ...] = (
    ("preflight", "check that the data fits where it goes"),
    ("precopy", "copy the data directories while the services still run"),
    ("drain", "stop the applications"),
    ("backup", "take a pre-switch backup set and check it (while drained)"),
    ("fingerprint", "record per-table row counts and checksums, and the Redis dataset digest"),
    ("stop", "stop the services"),
    ("copy", "copy again what changed since the first copy"),
    ("start", "start the services on the new data directories"),
    ("verify", "compare the data with the fingerprint (point of no return once it passes)"),
    ("retire", "retire the old copies"),
    ("resume", "start the applications"),
    ("backup-after", "take a backup set in the new mode"),
)


@dataclass(frozen=True)
class SwitchMode(Action):
    """Move a stack that holds data between RAM and disk: the ordered, journaled, crash-safe operation."""

    marker: ClassVar[Marker] = "~"
    from_mode: str
    to_mode: str
    services: tuple[str, ...]
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    ports: tuple[int, ...]
    data_bytes: int
    expected_downtime_seconds: float
    keep_old_copy: bool
    backup_while_drained: bool = False
    # The longest the drained apps may take to stop (drain.stop_timeout; 0 when none are drained).
    drain_stop_timeout_seconds: float = 0

    @property
    def service(self) -> str | None:
        return None

    def describe(self) -> str:
        from reconciler.spec.units import format_bytes

        bound = (
            f", up to {self.expected_downtime_seconds + self.drain_stop_timeout_seconds:.1f} s if the apps take "
            f"their whole drain.stop_timeout to stop"
            if self.drain_stop_timeout_seconds
            else ""
        )
        return (
            f"switch {' and '.join(self.services)} from {self.from_mode} to {self.to_mode} mode "
            f"({format_bytes(self.data_bytes)}, expected write downtime ~{self.expected_downtime_seconds:.1f} s{bound})"
        )

    def step_names(self) -> list[str]:
        names = [name for name, _ in SWITCH_STEPS]
        if not self.backup_while_drained:  # the backup first, while the apps still run
            names.remove("backup")
            names.insert(1, "backup")
        return names

    def steps(self) -> list[str]:
        texts = dict(SWITCH_STEPS)
        if not self.backup_while_drained:
            texts["backup"] = "take a pre-switch backup set and check it (online, before draining)"
        details = {
            "precopy": f"copy {', '.join(f'{s} → {t}' for s, t in zip(self.sources, self.targets, strict=True))} "
            "while the services still run",
            "retire": (
                "keep the disk copies as stale safety copies"
                if self.keep_old_copy
                else "remove the old copies"
            ),
        }
        return [details.get(name, texts[name]) for name in self.step_names()]

    def simulate(self, observed: ObservedState) -> ObservedState:
        for name, target, port in zip(self.services, self.targets, self.ports, strict=True):
            service = observed.services[name]
            new = replace(
                service.location(self.to_mode), exists=True, initialized=True, foreign=False, stale=False
            )
            old = service.location(self.from_mode)
            old = replace(old, initialized=False, stale=old.exists and self.keep_old_copy)
            service = replace(
                service,
                **({"ram": new, "disk": old} if self.to_mode == "ram" else {"disk": new, "ram": old}),  # type: ignore[arg-type]
            )
            service = replace(
                service, running=True, died=False, pid=service.pid or -1, port=port, data_dir=target
            )
            observed = observed.with_service(service)
        return observed


@dataclass(frozen=True)
class ResumeOperation(Action):
    """Finish (or roll back) an operation that a crash or a kill interrupted, from its journal."""

    marker: ClassVar[Marker] = "~"
    operation_id: str
    operation_kind: str
    next_step: str
    past_point_of_no_return: bool

    def describe(self) -> str:
        where = (
            "forward only (past the point of no return)"
            if self.past_point_of_no_return
            else "from its journal"
        )
        return f"resume the interrupted {self.operation_kind} {self.operation_id} at step {self.next_step}, {where}"

    def simulate(self, observed: ObservedState) -> ObservedState:
        return replace(observed, operation=None)


def simulate_all(observed: ObservedState, actions: tuple[Action, ...]) -> ObservedState:
    for action in actions:
        observed = action.simulate(observed)
    return observed


__all__ = [
    "Action",
    "DataDir",
    "EnsureDatabase",
    "FallBackToDisk",
    "InitService",
    "PrepareRamRoot",
    "ProtectBackups",
    "PruneBackups",
    "ResizeRamRoot",
    "RestartService",
    "RestoreFromBackup",
    "ResumeOperation",
    "StartService",
    "StopService",
    "SwitchMode",
    "TakeBackup",
    "simulate_all",
]
