"""Probes for the docker runtime: the Engine API for containers, the host for data directories.

Design decisions:
- One ``GET /containers/json`` lists every container (running or not) with its labels, state and
  mounts; only the stack's service containers are then inspected. A pass over a 5-container stack
  is a handful of requests on the local socket (bench/docker_runtime.py measures it).
- A service's container is found by name (``services.<name>.container``, default ``<stack>-<name>``),
  else by Compose labels (``com.docker.compose.project`` = stack, ``com.docker.compose.service`` =
  the service's name), so a stack started by ``docker compose up`` is adopted as it is.
- The data directories are observed on the host exactly as for the local runtime (they are host
  directories bind-mounted into the containers); the container only tells which one it serves.
- Database facts come from the server itself (psql through exec, RESP over loopback), so the
  database size is the one measured inside the container.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from reconciler.observe.local import data_dir_facts, with_server_facts
from reconciler.observe.local import observe as observe_host
from reconciler.plan.observed import ObservedState, ServiceObservation
from reconciler.runtimes.docker import DATA_PATHS, RAM_MODE_ENV, DockerRuntime, container_env, data_mount
from reconciler.spec.model import StateSpec
from reconciler.system import host

log = logging.getLogger(__name__)


def find_containers(runtime: DockerRuntime, services: list[str]) -> dict[str, dict[str, Any]]:
    """Service name → the container's inspect document, for the services whose container exists."""
    listing = runtime.client.api.containers(all=True)
    by_name = {name.lstrip("/"): c for c in listing for name in c.get("Names") or []}
    found: dict[str, dict[str, Any]] = {}
    for service in services:
        configured = runtime.spec.services.configured()[service].container
        summary = by_name.get(str(configured or f"{runtime.stack}-{service}"))
        if summary is None and not configured:
            summary = next(
                (
                    c
                    for c in listing
                    if (c.get("Labels") or {}).get("com.docker.compose.project") == runtime.stack
                    and (c.get("Labels") or {}).get("com.docker.compose.service") == service
                ),
                None,
            )
        if summary is not None:
            found[service] = runtime.client.api.inspect_container(summary["Id"])
    return found


def observe(spec: StateSpec, runtime: DockerRuntime) -> ObservedState:
    containers = find_containers(runtime, list(spec.services.configured()))

    def probe(
        name: str, svc_spec: object, mounts: list[host.Mount], _sockets: dict[str, int]
    ) -> ServiceObservation:
        return _observe_service(spec, runtime, name, svc_spec, containers.get(name), mounts)

    return observe_host(spec, runtime.host_side, probe)


def _observe_service(
    spec: StateSpec,
    runtime: DockerRuntime,
    name: str,
    svc_spec: object,
    attrs: dict[str, Any] | None,
    mounts: list[host.Mount],
) -> ServiceObservation:
    # The container's own user owns the files; reachability of host parents does not matter to a bind.
    ram = data_dir_facts(name, spec.ram_dir(name), 0, 0, mounts)
    disk = data_dir_facts(name, spec.disk_dir(name), 0, 0, mounts)
    if attrs is None:
        return ServiceObservation(name=name, ram=ram, disk=disk)
    state = attrs.get("State") or {}
    container = str(attrs.get("Name", "")).lstrip("/")
    running = bool(state.get("Running")) and not state.get("Paused") and not state.get("Restarting")
    health = (state.get("Health") or {}).get("Status")
    mount = data_mount(attrs, DATA_PATHS[name])
    data_dir: str | None = None
    unmanaged: str | None = None
    if mount is None:
        unmanaged = f"the container's own filesystem at {DATA_PATHS[name]} (no mount)"
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
    return with_server_facts(observation, svc_spec, runtime.endpoint(name, port), "")
