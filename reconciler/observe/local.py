"""Probes for the local runtime: build an ``ObservedState`` from /proc, the filesystem and the servers.

Design decisions:
- Read-only: nothing here creates, starts or fixes anything, so ``plan`` is always safe to run.
- Cheap: /proc and a single query per server; no subprocesses. The budget is a few milliseconds,
  because the daemon observes on every reconcile. (One more psql round trip, ~15 ms, reads the role's
  stored password verifier when state.yaml configures a password: it is compared here, never kept.)
- A server that is up but does not answer a query is reported with unknown facts (``None``) instead
  of failing the whole observation: the planner then plans conservatively.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

from reconciler.backup import vouch
from reconciler.databases import postgres as pg
from reconciler.databases import redis as rd
from reconciler.databases.engine import engine_for
from reconciler.errors import PermanentError, ReconcilerError
from reconciler.plan.backupsets import group_sets
from reconciler.plan.observed import (
    BackupsObservation,
    DataDir,
    HostObservation,
    ObservedState,
    OperationObservation,
    RamRoot,
    ServiceObservation,
)
from reconciler.runtimes.base import Endpoint
from reconciler.runtimes.local import (
    MARKER,
    LocalRuntime,
    holds_service_data,
    postgres_bindir,
    read_marker,
    read_pid,
)
from reconciler.spec.model import PostgresSpec, StateSpec
from reconciler.stores.local import LocalStore
from reconciler.system import fs, host

log = logging.getLogger(__name__)


ServiceObserver = Callable[[str, object, list[host.Mount], dict[str, int]], ServiceObservation]


def observe(
    spec: StateSpec, runtime: LocalRuntime, service_observer: ServiceObserver | None = None
) -> ObservedState:
    """Everything the planner needs; ``service_observer`` replaces the /proc probe (the docker runtime)."""
    mounts = host.read_mounts()
    mem_total, mem_available = host.memory()
    ram_path = spec.ram_root
    ram_fs = host.filesystem_of(ram_path, mounts)
    ram_root = RamRoot(
        path=ram_path,
        exists=os.path.isdir(ram_path),
        filesystem=ram_fs,
        dedicated_mount=ram_fs is not None
        and ram_fs.mount_point == os.path.normpath(ram_path)
        and ram_fs.is_tmpfs,
    )
    sockets = host.listening_sockets()

    def local_probe(
        name: str, svc_spec: object, mounts: list[host.Mount], sockets: dict[str, int]
    ) -> ServiceObservation:
        return _observe_service(spec, runtime, name, svc_spec, mounts, sockets)

    probe = service_observer or local_probe
    services = {
        name: probe(name, svc_spec, mounts, sockets) for name, svc_spec in spec.services.configured().items()
    }
    if "postgres" in services and spec.services.postgres is not None:
        role_password = _role_password(spec, spec.services.postgres, runtime, services["postgres"])
        if role_password:
            services["postgres"] = replace(services["postgres"], role_password=role_password)
    needs_restore = any(
        (not s.running or s.location(spec.mode).restore_incomplete)
        and not s.location(spec.mode).initialized
        and not s.location("disk" if spec.mode == "ram" else "ram").initialized
        for s in services.values()
    )
    journal = read_journal(spec.state_path)
    operation = None
    if journal is not None and journal.get("status") == "running":
        pending = [step["name"] for step in journal["steps"] if step["status"] != "done"]
        operation = OperationObservation(
            str(journal["id"]),
            str(journal["kind"]),
            str(journal["from"]),
            str(journal["to"]),
            pending[0] if pending else "finish",
            bool(journal.get("past_point_of_no_return")),
        )
    record = fs.read_json(os.path.join(spec.state_path, "backups.json"))
    record = record if isinstance(record, dict) else {}
    speed = record.get("copy_bytes_per_second")
    return ObservedState(
        services,
        ram_root,
        HostObservation(mem_total, mem_available, host.is_root()),
        observe_backups(spec, record, include_remote=needs_restore),
        operation,
        float(speed) if speed else None,
    )


def _role_password(spec: StateSpec, pgspec: PostgresSpec, runtime: Any, service: ServiceObservation) -> str:
    """Is the role's stored password the configured one? ("stale", "unset:VAR" or "".)

    The configured password is read here, compared with the stored SCRAM verifier (recomputed with
    its salt) and dropped; only the verdict reaches the plan. Problems reading a password *file*
    are left to ``apply``, which reports them with what to do.
    """
    if (
        not service.running
        or service.port is None
        or service.roles is None
        or pgspec.user not in service.roles
    ):
        return ""
    if pgspec.password_env:
        password = os.environ.get(pgspec.password_env)
        if password is None:
            return f"unset:{pgspec.password_env}"
    elif pgspec.password_file:
        try:
            with open(spec.resolve(pgspec.password_file), encoding="utf-8") as handle:
                password = handle.read().strip()
        except (OSError, ValueError):
            return ""
    else:
        return ""
    bindir = postgres_bindir() if runtime.name == "local" else ""
    try:
        stored = pg.role_verifier(runtime.endpoint("postgres", service.port), pgspec.user, bindir)
    except ReconcilerError as exc:
        log.warning("cannot read the password of role %s: %s", pgspec.user, exc)
        return ""
    return "" if pg.verifier_matches(stored, password) else "stale"


def read_journal(state_dir: str) -> dict[str, Any] | None:
    """The running operation's journal, or None; a journal.json this reconciler did not write is refused.

    A planted, hand-truncated or other-version file used to crash every command (``KeyError``) or be
    acted on; an operation may be half done, so it is neither ignored nor guessed at."""
    path = os.path.join(state_dir, "journal.json")
    try:
        document = fs.read_json(path)
    except (ValueError, OSError) as exc:
        return _not_a_journal(path, f"unreadable: {exc}")
    if document is None:
        return None
    if not isinstance(document, dict):
        return _not_a_journal(path, "not a JSON object")
    if document.get("status") not in ("running", "done", "rolled-back", "abandoned", "failed"):
        return _not_a_journal(path, "no known status")
    if document["status"] != "running":
        return None
    expected = {"id": str, "kind": str, "from": str, "to": str, "payload": dict, "steps": list}
    wrong = [key for key, kind in expected.items() if not isinstance(document.get(key), kind)]
    for step in document.get("steps") or []:
        if not (isinstance(step, dict) and isinstance(step.get("name"), str) and "status" in step):
            wrong.append("steps[]")
            break
    if wrong:
        return _not_a_journal(path, f"missing or malformed: {', '.join(wrong)}")
    return document


def _not_a_journal(path: str, what: str) -> NoReturn:
    raise PermanentError(
        f"{path} is not a journal this reconciler wrote ({what}). An operation (a mode switch or a restore) "
        "may be half done: check that the services serve the data you expect (or restore a backup set), "
        "then move the file away and run `reconciler apply`"
    )


def observe_backups(
    spec: StateSpec, record: dict[str, Any], include_remote: bool = False
) -> BackupsObservation:
    """Sets in the local store (a directory listing, no content read) and the recorded results.

    Drive is listed only when a restore may need it (a service has no data): listing it costs a
    network round trip and an import of the Google client, which a routine ``plan`` must not pay.
    """
    store = LocalStore(spec.resolve(spec.backup.stores.local.path))
    sets = tuple(group_sets(store.list(), store.name, spec.stack))
    authenticity = {(store.name, name): why for name, why in vouch.local_doubts(spec, store, sets).items()}
    gdrive = spec.backup.stores.gdrive
    if include_remote and gdrive.enabled and gdrive.credentials_file:
        from reconciler.errors import ReconcilerError
        from reconciler.stores.gdrive import GdriveStore

        try:
            remote = GdriveStore(gdrive, spec.resolve(gdrive.credentials_file), attempts=3, deadline=30)
            sets += tuple(group_sets(remote.list(), remote.name, spec.stack))
        except ReconcilerError as exc:
            log.warning("cannot list the Drive store, restoring from local sets only: %s", exc)
    verified = frozenset(name for name, result in record.get("verified", {}).items() if result.get("ok"))
    failed = record.get("last_attempt", {}).get("result") == "failed"
    rejected = {
        (key.partition("/")[0], key.partition("/")[2]): str(reason)
        for key, reason in record.get("rejected", {}).items()
    }
    return BackupsObservation(
        sets,
        verified,
        failed,
        rejected,
        frozenset(record.get("protected", [])),
        authenticity,
        # Sets whose data a deliberate restore discarded (engine/restore_op.py): never restored on boot.
        frozenset(record.get("superseded", [])),
    )


def data_dir_facts(
    service: str,
    path: str,
    uid: int,
    gid: int,
    mounts: list[host.Mount],
    markers: tuple[str, ...] | None = None,
) -> DataDir:
    exists = os.path.isdir(path)
    initialized = False
    foreign = False
    if exists:
        initialized = holds_service_data(service, path, markers)
        if initialized:
            marker = read_marker(path)
            foreign = marker is not None and marker.get("service") != service
        else:
            foreign = any(entry != MARKER for entry in os.listdir(path))
    marker = read_marker(path) if exists else None
    # A restore that has not completed left this directory: its content is no set's, so it is neither
    # data to serve nor to back up; the planner restores it again (engine/restore_op.py).
    incomplete = bool(marker and marker.get("restoring")) and not foreign
    return DataDir(
        path=path,
        exists=exists,
        initialized=initialized and not foreign and not incomplete,
        restore_incomplete=incomplete,
        foreign=foreign,
        reachable=host.reachable_by(path, uid, gid),
        filesystem=host.filesystem_of(path, mounts),
        size_bytes=host.tree_size(path) if exists else 0,
        stale=bool(marker and marker.get("stale")),
    )


def _observe_service(
    spec: StateSpec,
    runtime: LocalRuntime,
    name: str,
    svc_spec: object,
    mounts: list[host.Mount],
    sockets: dict[str, int],
) -> ServiceObservation:
    _, uid, gid = runtime.account(name)
    markers = runtime.data_markers(name)
    ram = data_dir_facts(name, spec.ram_dir(name), uid, gid, mounts, markers)
    disk = data_dir_facts(name, spec.disk_dir(name), uid, gid, mounts, markers)
    if name in runtime.recipes:
        pid, data_dir, died = _recipe_process(runtime, name)
    else:
        pid, data_dir, died = (_postgres_process if name == "postgres" else _redis_process)(
            runtime, ram, disk
        )
    running = pid is not None
    ports = host.listening_ports(pid, sockets) if pid is not None else set()
    port = next(iter(sorted(ports)), None)
    observation = ServiceObservation(
        name=name, running=running, pid=pid, port=port, data_dir=data_dir, died=died, ram=ram, disk=disk
    )
    if not running or port is None:
        return observation
    password = _configured_password(spec, svc_spec) if engine_for(name) else None
    return with_server_facts(observation, svc_spec, runtime.endpoint(name, port), postgres_bindir(), password)


def _configured_password(spec: StateSpec, svc_spec: object) -> str | None:
    """An engine's configured password to compare with the stored one ("unset:VAR" when the variable is
    missing); None when there is none or its file cannot be read (``apply`` reports that)."""
    env_name = getattr(svc_spec, "password_env", None)
    file_name = getattr(svc_spec, "password_file", None)
    if env_name:
        return os.environ.get(env_name, f"unset:{env_name}")
    if file_name:
        try:
            with open(spec.resolve(file_name), encoding="utf-8") as handle:
                return handle.read().strip()
        except (OSError, ValueError):
            return None
    return None


def with_server_facts(
    observation: ServiceObservation,
    svc_spec: object,
    endpoint: Endpoint,
    bindir: str,
    password: str | None = None,
) -> ServiceObservation:
    """Add what the running server says about itself; a server that does not answer adds nothing.

    ``password`` (engines on the interface) is only compared with the stored one, never kept."""
    from dataclasses import replace

    engine = engine_for(observation.name)
    try:
        if engine is not None:
            unset = password if password is not None and password.startswith("unset:") else None
            efacts = engine.facts(endpoint, svc_spec, None if unset else password)
            return replace(
                observation,
                databases=efacts.databases,
                roles=efacts.roles,
                size_bytes=efacts.size_bytes,
                version=efacts.version,
                role_password=unset or efacts.role_password,
            )
        if isinstance(svc_spec, PostgresSpec):
            facts = pg.facts(endpoint, svc_spec.database, bindir)
            return replace(
                observation,
                databases=facts.databases,
                roles=facts.roles,
                size_bytes=facts.size_bytes,
                version=facts.version,
            )
        rfacts = rd.probe(endpoint)
        return replace(observation, size_bytes=rfacts.used_memory, version=rfacts.version)
    except ReconcilerError as exc:
        log.warning("%s is running but did not answer: %s", observation.name, exc)
        return observation


def _postgres_process(runtime: LocalRuntime, *dirs: DataDir) -> tuple[int | None, str | None, bool]:
    died = False
    for location in dirs:
        pid = read_pid(os.path.join(location.path, "postmaster.pid"))
        if pid is None:
            continue
        cmdline = host.process_cmdline(pid) if host.process_alive(pid) else []
        if cmdline and "postgres" in os.path.basename(cmdline[0]):
            return pid, location.path, False
        died = True
    return None, None, died


def _recipe_process(runtime: LocalRuntime, name: str) -> tuple[int | None, str | None, bool]:
    """A recipe's server: its pid file, its process name, the directory it serves (its cwd)."""
    pid = read_pid(runtime.pidfile(name))
    if pid is None:
        return None, None, False
    cmdline = host.process_cmdline(pid) if host.process_alive(pid) else []
    if cmdline and os.path.basename(cmdline[0]) in runtime.recipe(name).process_names:
        return pid, host.process_cwd(pid), False
    return None, None, True


def _redis_process(runtime: LocalRuntime, *dirs: DataDir) -> tuple[int | None, str | None, bool]:
    pid = read_pid(runtime.redis_pidfile())
    if pid is None:
        return None, None, False
    cmdline = host.process_cmdline(pid) if host.process_alive(pid) else []
    if cmdline and "redis-server" in cmdline[0]:
        return pid, host.process_cwd(pid), False
    return None, None, True
