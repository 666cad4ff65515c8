"""Probes for the local runtime: build an ``ObservedState`` from /proc, the filesystem and the servers.

Design decisions:
- Read-only: nothing here creates, starts or fixes anything, so ``plan`` is always safe to run.
- Cheap: /proc and a single query per server; no subprocesses. The budget is a few milliseconds,
  because the daemon observes on every reconcile.
- A server that is up but does not answer a query is reported with unknown facts (``None``) instead
  of failing the whole observation: the planner then plans conservatively.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from reconciler.databases import postgres as pg
from reconciler.databases import redis as rd
from reconciler.errors import ReconcilerError
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


SUPERSEDED = "superseded: a deliberate restore of an older set discarded its data"

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


def read_journal(state_dir: str) -> dict[str, Any] | None:
    document = fs.read_json(os.path.join(state_dir, "journal.json"))
    return document if isinstance(document, dict) else None


def observe_backups(
    spec: StateSpec, record: dict[str, Any], include_remote: bool = False
) -> BackupsObservation:
    """Sets in the local store (a directory listing, no content read) and the recorded results.

    Drive is listed only when a restore may need it (a service has no data): listing it costs a
    network round trip and an import of the Google client, which a routine ``plan`` must not pay.
    """
    store = LocalStore(spec.resolve(spec.backup.stores.local.path))
    sets = tuple(group_sets(store.list(), store.name, spec.stack))
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
    # Sets whose data a deliberate restore discarded (engine/restore_op.py): never restored on boot.
    for name in record.get("superseded", []):
        for store_name in ("local", "gdrive"):
            rejected.setdefault((store_name, name), SUPERSEDED)
    return BackupsObservation(sets, verified, failed, rejected, frozenset(record.get("protected", [])))


def data_dir_facts(service: str, path: str, uid: int, gid: int, mounts: list[host.Mount]) -> DataDir:
    exists = os.path.isdir(path)
    initialized = False
    foreign = False
    if exists:
        initialized = holds_service_data(service, path)
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
    ram = data_dir_facts(name, spec.ram_dir(name), uid, gid, mounts)
    disk = data_dir_facts(name, spec.disk_dir(name), uid, gid, mounts)
    pid, data_dir, died = (_postgres_process if name == "postgres" else _redis_process)(runtime, ram, disk)
    running = pid is not None
    ports = host.listening_ports(pid, sockets) if pid is not None else set()
    port = next(iter(sorted(ports)), None)
    observation = ServiceObservation(
        name=name, running=running, pid=pid, port=port, data_dir=data_dir, died=died, ram=ram, disk=disk
    )
    if not running or port is None:
        return observation
    return with_server_facts(observation, svc_spec, runtime.endpoint(name, port), postgres_bindir())


def with_server_facts(
    observation: ServiceObservation, svc_spec: object, endpoint: Endpoint, bindir: str
) -> ServiceObservation:
    """Add what the running server says about itself; a server that does not answer adds nothing."""
    from dataclasses import replace

    try:
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


def _redis_process(runtime: LocalRuntime, *dirs: DataDir) -> tuple[int | None, str | None, bool]:
    pid = read_pid(runtime.redis_pidfile())
    if pid is None:
        return None, None, False
    cmdline = host.process_cmdline(pid) if host.process_alive(pid) else []
    if cmdline and "redis-server" in cmdline[0]:
        return pid, host.process_cwd(pid), False
    return None, None, True
