"""What the probes saw: plain, immutable data that the planner reads.

Design decision: these types live in the pure ``plan`` layer, not in ``observe``, so that the planner
depends on data only. ``observe`` (impure) fills them in from /proc, the filesystem and the servers;
tests build them by hand or with hypothesis. Everything the planner decides on must be here: if a
decision needs a fact, the fact gets a field, never a side channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from reconciler.plan.backupsets import BackupSet


@dataclass(frozen=True)
class Filesystem:
    """The filesystem a path lives on (from /proc/self/mountinfo and statvfs)."""

    mount_point: str
    fstype: str
    size_bytes: int | None = None
    used_bytes: int | None = None
    options: str = ""

    @property
    def is_tmpfs(self) -> bool:
        return self.fstype == "tmpfs"


@dataclass(frozen=True)
class DataDir:
    """One candidate data directory of a service (its RAM location or its disk location)."""

    path: str
    exists: bool = False
    initialized: bool = False  # holds this service's data (PG_VERSION / our marker)
    foreign: bool = False  # non-empty but not a data directory of this service: never touched
    reachable: bool = True  # the unprivileged service user can traverse every parent directory
    filesystem: Filesystem | None = None
    size_bytes: int = 0  # bytes of the files below it (0 when it does not exist)
    stale: bool = False  # a copy kept after a mode switch moved the data away: not authoritative
    # docker runtime, RAM location: data without the reconciler's marker (an image's entrypoint
    # initialised it, e.g. after a reboot); not counted as data while backup sets exist
    unclaimed: bool = False
    restore_incomplete: bool = False  # a restore into it never completed: not data (initialized=False)


@dataclass(frozen=True)
class ServiceObservation:
    name: str
    running: bool = False
    pid: int | None = None
    port: int | None = None  # the port the running process listens on
    data_dir: str | None = None  # the directory the running process serves
    died: bool = False  # a pid file names a process that no longer exists
    ram: DataDir = field(default_factory=lambda: DataDir(path=""))
    disk: DataDir = field(default_factory=lambda: DataDir(path=""))
    databases: frozenset[str] | None = None  # None: unknown (the server is not running)
    roles: frozenset[str] | None = None
    # postgres: "stale" (the role's stored password is not the configured one) or "unset:<VAR>" (the
    # configured password_env is not set); "" when there is nothing to say. Never a secret.
    role_password: str = ""
    size_bytes: int | None = None  # database size (postgres) or used memory (redis)
    version: str | None = None
    # docker runtime: the container's configuration differs from what the reconciler would create
    # (e.g. RAM_MODE): it is recreated. ``unmanaged_mount``: its data mount is neither of the service's
    # two directories (a named volume, a Docker tmpfs, another path): the planner refuses to guess.
    drift: str | None = None
    unmanaged_mount: str | None = None
    container: str | None = None

    def location(self, mode: str) -> DataDir:
        return self.ram if mode == "ram" else self.disk


@dataclass(frozen=True)
class RamRoot:
    """The directory that holds RAM-mode data directories, and whether it is on the intended tmpfs."""

    path: str
    exists: bool = False
    filesystem: Filesystem | None = None
    dedicated_mount: bool = False  # a tmpfs mounted exactly at ``path``


@dataclass(frozen=True)
class HostObservation:
    mem_total: int = 0
    mem_available: int = 0
    is_root: bool = False


@dataclass(frozen=True)
class BackupsObservation:
    """Backup sets found in the stores, and what the records say about them."""

    sets: tuple[BackupSet, ...] = ()
    verified: frozenset[str] = frozenset()  # sets whose last verification passed
    newest_attempt_failed: bool = False
    rejected: dict[tuple[str, str], str] = field(
        default_factory=dict
    )  # (store, set) → why it cannot be restored
    protected: frozenset[str] = frozenset()  # kept whatever retention says (see ProtectBackups)
    # (store, set) → None when the engine vouched for the complete set's manifest, else why not; a
    # complete set missing here was not checked (retention never counts nor deletes it)
    authenticity: dict[tuple[str, str], str | None] = field(default_factory=dict)
    # Sets whose data a deliberate restore discarded: never restored on boot, but ordinary sets for
    # retention (the pre-restore set is the way to undo that restore).
    superseded: frozenset[str] = frozenset()

    def not_for_restore(self) -> dict[tuple[str, str], str]:
        """(store, set) → why restore on boot must not pick it: rejected for its content, or superseded."""
        discarded = "superseded: a deliberate restore of an older set discarded its data"
        stores = {s.store for s in self.sets}
        return {
            **{(store, name): discarded for store in stores for name in self.superseded},
            **self.rejected,
        }

    def authenticity_in(self, store: str) -> dict[str, str | None]:
        return {name: why for (where, name), why in self.authenticity.items() if where == store}


@dataclass(frozen=True)
class OperationObservation:
    """A journaled operation (a mode switch) that has not finished: it runs to a safe point first."""

    operation_id: str
    kind: str
    from_mode: str
    to_mode: str
    next_step: str
    past_point_of_no_return: bool


@dataclass(frozen=True)
class ObservedState:
    services: dict[str, ServiceObservation]
    ram_root: RamRoot
    host: HostObservation = field(default_factory=HostObservation)
    backups: BackupsObservation = field(default_factory=BackupsObservation)
    operation: OperationObservation | None = None
    copy_bytes_per_second: float | None = None  # measured by the last mode switch on this host

    def with_service(self, service: ServiceObservation) -> ObservedState:
        return replace(self, services={**self.services, service.name: service})
