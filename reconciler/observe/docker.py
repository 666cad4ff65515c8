"""Probes for the docker runtime: the Engine API for containers, the host for data directories.

Design decisions:
- One ``GET /containers/json`` lists every container (running or not) with its labels, state and
  mounts; only the stack's service containers are then inspected: three read-only GETs on the local
  socket for a two-service stack, through ``runtime.reader`` (runtimes/engine.py), not docker-py,
  whose import alone cost ~45 ms of every ``plan`` (bench/plan_noop.py measures it).
- A service's container is found by name (``services.<name>.container``, default ``<stack>-<name>``),
  else by Compose labels (``com.docker.compose.project`` = stack, ``com.docker.compose.service`` =
  the service's name), so a stack started by ``docker compose up`` is adopted as it is.
- The data directories are observed on the host exactly as for the local runtime (they are host
  directories bind-mounted into the containers); the container only tells which one it serves.
- RAM data without the reconciler's marker is *unclaimed* (``DataDir.unclaimed``): after a reboot,
  the restart policy starts a container whose entrypoint initialises an empty database there. While
  a complete backup set exists it counts as no data, so it is never served as in sync nor backed up
  (``disown_unclaimed``). A RAM data mount Docker would re-create when missing (``-v``) is drift: the
  container is recreated with a ``Mounts`` bind that fails to start without its directory.
- Database facts come from the server itself (RESP over loopback; psql through the host's client on
  the bind-mounted socket directory, or through exec when the host has no psql or no socket), so the
  database size is the one the server measures.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any

from reconciler.observe.local import _configured_password, data_dir_facts, with_server_facts
from reconciler.observe.local import observe as observe_host
from reconciler.plan.observed import ObservedState, ServiceObservation
from reconciler.runtimes.docker import (
    RAM_MODE_ENV,
    DockerRuntime,
    container_env,
    container_names,
    creates_missing_source,
    data_mount,
    find_container,
)
from reconciler.runtimes.local import read_marker
from reconciler.spec.model import StateSpec
from reconciler.system import host

log = logging.getLogger(__name__)


def find_containers(runtime: DockerRuntime, services: list[str]) -> dict[str, dict[str, Any]]:
    """Service name → the container's inspect document, for the services whose container exists.

    Read-only GETs through ``runtime.reader`` (no docker-py): one listing, one inspect per service."""
    listing = runtime.reader.containers()
    found: dict[str, dict[str, Any]] = {}
    for service in services:
        configured = runtime.spec.services.configured()[service].container
        name = str(configured or f"{runtime.stack}-{service}")
        summary = find_container(listing, runtime.stack, service, name, configured)
        if summary is not None:
            found[service] = runtime.reader.inspect(str(summary["Id"]))
            names = container_names(summary)
            runtime.remember(service, name if name in names else names[0])
    return found


def observe(spec: StateSpec, runtime: DockerRuntime) -> ObservedState:
    containers = find_containers(runtime, list(spec.services.configured()))

    def probe(
        name: str, svc_spec: object, mounts: list[host.Mount], _sockets: dict[str, int]
    ) -> ServiceObservation:
        return _observe_service(spec, runtime, name, svc_spec, containers.get(name), mounts)

    return disown_unclaimed(observe_host(spec, runtime.host_side, probe))


def disown_unclaimed(observed: ObservedState) -> ObservedState:
    """RAM data without the reconciler's marker holds no data the planner may keep, while sets exist.

    Only the reconciler creates directories under ``ram.path``; data there without its marker was made
    by someone else, in practice an image's entrypoint initialising an empty database in a directory
    Docker re-created after a reboot. Serving it (or backing it up, where it would become the newest
    set) while real backup sets exist would replace the real data by nothing, so it counts as no data:
    the planner restores the newest set and the runtime sets the directory aside first. With no
    complete set anywhere, it is the only data there is and is kept as it is.
    """
    if not any(s.complete for s in observed.backups.sets):
        return observed
    for name, service in observed.services.items():
        if service.ram.unclaimed and service.ram.initialized:
            log.warning(
                "%s: %s holds data the reconciler did not create (no marker): it is not served or backed "
                "up; the newest backup set is restored instead",
                name,
                service.ram.path,
            )
            observed = observed.with_service(replace(service, ram=replace(service.ram, initialized=False)))
    return observed


def _observe_service(
    spec: StateSpec,
    runtime: DockerRuntime,
    name: str,
    svc_spec: object,
    attrs: dict[str, Any] | None,
    mounts: list[host.Mount],
) -> ServiceObservation:
    # The container's own user owns the files; reachability of host parents does not matter to a bind.
    markers = runtime.data_markers(name)
    ram = data_dir_facts(name, spec.ram_dir(name), 0, 0, mounts, markers)
    if ram.initialized and read_marker(ram.path) is None:
        ram = replace(ram, unclaimed=True)
    disk = data_dir_facts(name, spec.disk_dir(name), 0, 0, mounts, markers)
    if attrs is None:
        return ServiceObservation(name=name, ram=ram, disk=disk)
    state = attrs.get("State") or {}
    container = str(attrs.get("Name", "")).lstrip("/")
    running = bool(state.get("Running")) and not state.get("Paused") and not state.get("Restarting")
    health = (state.get("Health") or {}).get("Status")
    mount = data_mount(attrs, runtime.data_path(name))
    data_dir: str | None = None
    unmanaged: str | None = None
    if mount is None:
        unmanaged = f"the container's own filesystem at {runtime.data_path(name)} (no mount)"
    elif mount.get("Type") == "bind":
        source = os.path.normpath(str(mount.get("Source")))
        if source in (ram.path, disk.path):
            data_dir = source
        else:
            unmanaged = f"a bind mount of {source}"
    elif mount.get("Type") == "volume":
        unmanaged = f"the named volume {mount.get('Name')} ({mount.get('Source')})"
    else:
        unmanaged = f"a Docker tmpfs mount ({mount.get('Options') or 'no options'}), which is emptied by every container restart"
    drift = None
    wanted = runtime.desired_env(name)
    env = container_env(attrs)
    if data_dir is not None and any(env.get(k) != v for k, v in wanted.items()):
        drift = f"{RAM_MODE_ENV}={env.get(RAM_MODE_ENV, '(unset)')}, want {wanted[RAM_MODE_ENV]}"
    elif data_dir == ram.path and creates_missing_source(attrs, runtime.data_path(name)):
        drift = "its RAM data is a -v bind, which Docker re-creates empty after a reboot"
    port = spec.port(name)
    observation = ServiceObservation(
        name=name,
        running=running,
        pid=int(state.get("Pid") or 0) or None,
        port=port if running else None,
        data_dir=data_dir,
        died=bool(state.get("ExitCode")) and not running and state.get("Status") == "exited",
        ram=ram,
        disk=disk,
        drift=drift,
        unmanaged_mount=unmanaged,
        container=container,
    )
    if health == "unhealthy":
        log.warning("container %s reports itself unhealthy", container)
    if not running:
        return observation
    password = _configured_password(spec, svc_spec) if name in runtime.recipes else None
    return with_server_facts(observation, svc_spec, runtime.endpoint(name, port), "", password)
