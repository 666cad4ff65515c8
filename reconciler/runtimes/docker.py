"""The ``docker`` runtime: PostgreSQL and Redis in containers, driven through the Docker Engine API.

Design decisions:
- RAM mode bind-mounts a directory of the host's tmpfs (the same ``ram.path`` the local runtime uses,
  with its size limit, mode 0700) into the container, instead of a Docker ``tmpfs`` mount. A Docker
  tmpfs lives and dies with the container: every ``docker restart``, restart-policy restart after a
  crash, engine upgrade or recreate would silently empty the database. A host tmpfs survives all of
  those and is lost only with the machine, which is the one event restore-on-boot is built for. The
  container still sees its data directory on tmpfs (``mount`` inside says so), and everything the
  engine does with data directories (copy, verify, restore, the mode switch) is the same code for
  both runtimes.
- A service's container is recreated, never edited: Docker cannot change a mount in place. The new
  container copies the old one's configuration (image, command, entrypoint, env, labels, user,
  networks, ports, restart policy, healthcheck, ...) and changes only the data mount and RAM_MODE.
  The old container is renamed aside until the new one exists, so a failure leaves the old one.
- The PostgreSQL socket directory is a host directory bind-mounted at /run/postgresql: the engine
  connects as the superuser over that socket (local trust inside the container), exactly as with the
  local runtime, and no superuser password is needed on the network.
- Database programs (pg_dump, pg_restore, psql) run inside the container through exec, so their
  version always matches the server; their input and output stream through the Engine API socket
  (``ExecProcess``), with no temporary file in the container.
- Engine errors become actionable messages at this boundary (``engine_call``/``engine_errors``,
  runtimes/engine.py): no socket, engine not answering, image missing, a name taken by a foreign
  container, a port taken. No docker-py or requests exception leaves this module.
- docker-py is imported only to change something; observation reads through ``reader`` (plain GETs).
- RAM data is bound with a ``Mounts`` bind, never ``-v``: after a reboot the restart policy starts the
  container before the reconciler runs, and Docker would create the missing RAM directory empty on
  plain /dev/shm for the image's entrypoint to initialise an empty database in. With a ``Mounts`` bind
  the start fails until the reconciler has restored the data. Data directories the reconciler made
  carry its marker; ``init_service`` sets aside content without one (see docs/ARCHITECTURE.md,
  "Docker after a reboot").
- Engines on the interface (MariaDB) are given as ``ServerRecipe``s, as to the local runtime: the
  recipe names the image's data path, socket directory and command. Their socket directory is a host
  directory bound into the container like PostgreSQL's, and their client programs (``mariadb``,
  ``mariadb-dump``) run on the host against it: a statement costs ~5 ms that way and ~50 ms through
  exec, and the engine module runs unchanged on both runtimes (the host's MariaDB root is the
  container's root, ``unix_socket`` authenticates it by uid 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from reconciler.errors import CommandFailed, HostFault, PermanentError, TransientError
from reconciler.runtimes.base import Endpoint, ServerRecipe
from reconciler.runtimes.engine import (
    DockerPyReader,
    EngineReader,
    engine_call,
    engine_errors,
    engine_url,
    unreachable,
)
from reconciler.runtimes.local import MARKER, LocalRuntime, read_marker
from reconciler.system import failpoints, fs, proc

log = logging.getLogger(__name__)

DATA_PATHS = {"postgres": "/var/lib/postgresql/data", "redis": "/data"}
PG_SOCKET_DIR = "/run/postgresql"
RAM_MODE_ENV = "RAM_MODE"
_START_TIMEOUT = 90.0
_STOP_TIMEOUT = 60


def connect_engine() -> Any:
    """A docker-py client, or an error that says what is wrong with the engine and what to do."""
    import docker

    url = engine_url()
    if url.startswith("unix://") and not os.path.exists(url[len("unix://") :]):
        raise unreachable(url, FileNotFoundError(url))
    with engine_errors("connecting"):
        client = docker.DockerClient(base_url=url, timeout=60)
        client.api.ping()
    return client


class DockerRuntime:
    name = "docker"

    def __init__(
        self, stack: str, state_dir: str, spec: Any, recipes: Mapping[str, ServerRecipe] | None = None
    ) -> None:
        self.stack = stack
        self.state_dir = state_dir
        self.spec = spec  # StateSpec: container names, images, credentials references
        # RAM root and run directories are host things; the recipes: engines on the interface
        self.host_side = LocalRuntime(stack, state_dir, recipes)
        self.recipes = self.host_side.recipes
        self._client: Any = None
        self._reader: EngineReader | DockerPyReader | None = None
        self._names: dict[str, str] = {}

    @property
    def client(self) -> Any:
        """docker-py, for what changes the engine (imported on first use: observation never needs it)."""
        if self._client is None:
            self._client = connect_engine()
        return self._client

    @property
    def reader(self) -> EngineReader | DockerPyReader:
        """Read-only Engine API access for observation (see runtimes/engine.py)."""
        if self._reader is None:
            url = engine_url()
            self._reader = EngineReader(url) if EngineReader.supports(url) else DockerPyReader(self.client)
        return self._reader

    def remember(self, service: str, container: str) -> None:
        """The container observation found for ``service`` (saves ``container_name`` a lookup)."""
        self._names[service] = container

    # -- layout ---------------------------------------------------------------------------------

    @engine_call("looking up a service's container")
    def container_name(self, service: str) -> str:
        """The service's container: by its configured (or default) name, else by Compose labels."""
        if service in self._names:
            return self._names[service]
        configured = self.spec.services.configured()[service].container
        name = str(configured or f"{self.stack}-{service}")
        if not configured:
            found = find_container(self.reader.containers(), self.stack, service, name, None)
            if found is not None and name not in container_names(found):
                name = container_names(found)[0]
        self._names[service] = name
        return name

    def socket_dir(self, service: str) -> str:
        return self.host_side.socket_dir(service)

    def data_path(self, service: str) -> str:
        """Where the service's image keeps its data (the data directory is bound there)."""
        recipe = self.recipes.get(service)
        return recipe.container_data_dir if recipe is not None else DATA_PATHS[service]

    def endpoint(self, service: str, port: int) -> Endpoint:
        container = self.container_name(service)
        if service == "postgres":
            return Endpoint(self.socket_dir("postgres"), port, "postgres", container, PG_SOCKET_DIR)
        recipe = self.recipes.get(service)
        if recipe is not None:
            return dataclasses.replace(
                recipe.endpoint(self.socket_dir(service), port),
                container=container,
                container_host=recipe.container_socket_dir,
            )
        return Endpoint("127.0.0.1", port, "default", container)

    def account(self, service: str) -> tuple[str | None, int, int]:
        return self.host_side.account(service)

    def data_markers(self, service: str) -> tuple[str, ...] | None:
        return self.host_side.data_markers(service)

    # -- RAM root (on the host) -----------------------------------------------------------------

    def prepare_ram_root(self, path: str, mount: bool, size_option: str) -> None:
        self.host_side.prepare_ram_root(path, mount, size_option)

    def resize_ram_root(self, path: str, size_option: str) -> None:
        self.host_side.resize_ram_root(path, size_option)

    # -- services -------------------------------------------------------------------------------

    @engine_call("initialising a service's data directory")
    def init_service(self, service: str, data_dir: str) -> None:
        """A data directory of the reconciler's own: empty, initialised by the image, then marked.

        A container still running on this path is stopped first: nothing valid runs from a directory
        that is being initialised (after a reboot, the restart policy may have started it on a fresh
        directory). Content without the reconciler's marker (a database an image's entrypoint
        initialised on its own) is set aside next to it, never deleted. PostgreSQL's image refuses to
        initialise a directory holding any file, so its marker is written only after the container
        has initialised it and answers (so is an engine's on the interface, e.g. MariaDB); Redis needs no initialisation and is marked at once (a restore
        then puts its RDB file in before the first start).
        """
        # Held before the stop: a Redis stopped on an empty directory saves its empty dataset there,
        # which is nothing to keep. A PostgreSQL stopped while its entrypoint ran initdb leaves a
        # partial cluster, which is set aside like any unclaimed content.
        held = os.path.isdir(data_dir) and not fs.is_empty_dir(data_dir)
        self.stop_service(service, data_dir)  # only if it serves this directory
        held = held or (service != "redis" and os.path.isdir(data_dir) and not fs.is_empty_dir(data_dir))
        if held and read_marker(data_dir) is not None:
            return
        if held:
            aside = f"{data_dir}.unclaimed-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            os.rename(data_dir, aside)
            log.warning(
                "%s: %s held data the reconciler did not create (no %s marker); kept as %s",
                service,
                data_dir,
                MARKER,
                aside,
            )
        fs.ensure_dir(os.path.dirname(data_dir), 0o755)
        fs.ensure_dir(data_dir, 0o700)
        if service == "redis":
            self.claim_data_dir(service, data_dir)
            return
        port = self.spec.port(service)
        container = self._ensure_container(service, data_dir, port)
        self._start_and_wait(service, container, port)
        self.claim_data_dir(service, data_dir)
        log.info("initialised %s data directory %s in container %s", service, data_dir, container.name)

    def claim_data_dir(self, service: str, data_dir: str) -> None:
        """Write the marker that makes ``data_dir`` the reconciler's own (owned like the directory)."""
        marker = os.path.join(data_dir, MARKER)
        st = os.stat(data_dir)
        fs.atomic_write_json(marker, {"service": service, "stack": self.stack}, 0o600)
        os.chown(marker, st.st_uid, st.st_gid)

    @engine_call("starting a service's container")
    def start_service(self, service: str, data_dir: str, port: int) -> None:
        container = self._ensure_container(service, data_dir, port)
        self._start_and_wait(service, container, port)
        log.info("started %s in container %s with data in %s", service, container.name, data_dir)

    @engine_call("stopping a service's container")
    def stop_service(self, service: str, data_dir: str) -> None:
        container = self.find(service)
        if container is None:
            return
        container.reload()
        mount = data_mount(container.attrs, self.data_path(service))
        if (
            mount is not None
            and mount.get("Type") == "bind"
            and not _same_dir(str(mount.get("Source")), data_dir)
        ):
            return  # it serves another directory (the other mode's copy): stopping it is not asked for
        if container.status in ("running", "restarting", "paused"):
            if container.status == "paused":
                container.unpause()
            container.stop(timeout=_STOP_TIMEOUT)
            log.info("stopped %s (container %s)", service, container.name)

    @engine_call("stopping the apps' containers")
    def stop_containers(self, names: list[str]) -> list[str]:
        """Stop the named app containers that are running; return those stopped (to start them again)."""
        import docker.errors

        stopped = []
        for name in names:
            try:
                container = self.client.containers.get(name)
            except docker.errors.NotFound:
                raise PermanentError(f"drain.containers names {name}, but no such container exists") from None
            if container.status in ("running", "restarting"):
                container.stop(timeout=int(self.spec.drain.stop_timeout.total_seconds()))
                stopped.append(name)
        return stopped

    @engine_call("starting the apps' containers")
    def start_containers(self, names: list[str]) -> None:
        for name in reversed(names):
            self.client.containers.get(name).start()

    # -- containers -----------------------------------------------------------------------------

    def find(self, service: str) -> Any | None:
        import docker.errors

        try:
            return self.client.containers.get(self.container_name(service))
        except docker.errors.NotFound:
            return None

    def desired_env(self, service: str) -> dict[str, str]:
        return {RAM_MODE_ENV: "true" if self.spec.mode == "ram" else "false"}

    def _ensure_container(self, service: str, data_dir: str, port: int) -> Any:
        container = self.find(service)
        if container is None:
            return self._create(service, data_dir, port)
        mount = data_mount(container.attrs, self.data_path(service))
        env = container_env(container.attrs)
        wanted_env = self.desired_env(service)
        if (
            mount is not None
            and mount.get("Type") == "bind"
            and os.path.normpath(str(mount.get("Source"))) == os.path.normpath(data_dir)
            and all(env.get(k) == v for k, v in wanted_env.items())
            and not (  # RAM data only: a disk directory does not vanish at a reboot
                _same_dir(data_dir, self.spec.ram_dir(service))
                and creates_missing_source(container.attrs, self.data_path(service))
            )
        ):
            return container
        return self._recreate(service, container, data_dir)

    def _binds(self, service: str) -> list[str]:
        """Binds Docker may create when missing: only the server's socket directory (on disk)."""
        recipe = self.recipes.get(service)
        if service != "postgres" and recipe is None:
            return []
        self.host_side.ensure_run_dir(service)
        inside = recipe.container_socket_dir if recipe is not None else PG_SOCKET_DIR
        return [f"{self.socket_dir(service)}:{inside}"]

    def _create(self, service: str, data_dir: str, port: int) -> Any:
        import docker.errors

        spec = self.spec.services.configured()[service]
        image = getattr(spec, "image", None)
        name = self.container_name(service)
        if not image:
            raise PermanentError(
                f"container {name} does not exist and services.{service}.image is not set: set the image "
                "(e.g. postgres:15) so the reconciler can create it, or create it with docker compose"
            )
        env = {**self.desired_env(service)}
        if service == "postgres":
            # The application's role and database are created by EnsureDatabase, owned by that role
            # (PostgreSQL 15's public schema belongs to the database owner); the image only gets a superuser.
            env.update(POSTGRES_USER="postgres")
            command = ["postgres", "-p", str(port)]
        elif service in self.recipes:
            command = self.recipes[service].container_command(port)
        else:
            command = [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "3600 1 300 100 60 10000",  # the local runtime's settings: RDB snapshots, no AOF
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
                "--enable-debug-command",
                "local",
            ]
        self._refuse_second_server(service, name, data_dir)
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise PermanentError(
                f"image {image} for {service} is not present on this Docker engine: pull or build it "
                "first (`docker pull`, or scripts/docker-images for the test images). Nothing was changed"
            ) from None
        host_config = self.client.api.create_host_config(
            binds=self._binds(service),
            mounts=[data_bind(data_dir, self.data_path(service))],
            network_mode="host",
            restart_policy={"Name": "unless-stopped"},
        )
        failpoints.hit("docker.create", container=name, image=image)
        with engine_errors(f"creating container {name} for {service}"):
            created = self.client.api.create_container(
                image,
                command=command,
                name=name,
                environment=env,
                host_config=host_config,
                labels={"io.reconciler.stack": self.stack, "io.reconciler.service": service},
            )
        log.info("created container %s for %s from %s", name, service, image)
        return self.client.containers.get(created["Id"])

    def _refuse_second_server(self, service: str, name: str, data_dir: str) -> None:
        """Refuse to create ``name`` while another container runs on ``data_dir`` or the socket directory.

        The service's container is found by its name, so one renamed by hand (``docker rename``) is not
        found and still runs its server on the data directory. A second container there would be two
        servers on one data directory (PostgreSQL in containers does not notice: both are PID 1 in
        their own namespaces, so the lock file looks stale) and the readiness check would be answered
        by the old server through the shared socket directory: "started", while the new one is not.
        """
        data = os.path.normpath(data_dir)
        sockets = (
            {os.path.normpath(self.socket_dir(service))}
            if service == "postgres" or service in self.recipes
            else set()
        )
        ours = {"io.reconciler.stack": self.stack, "io.reconciler.service": service}
        for summary in self.reader.containers():
            if str(summary.get("State")) not in ("running", "restarting", "paused"):
                continue
            sources = {os.path.normpath(str(m.get("Source"))) for m in summary.get("Mounts") or []}
            labels = summary.get("Labels") or {}
            # The socket directory counts for this service's own containers only (its labels survive a
            # rename): an application may mount it to connect over the socket, which is not a server.
            mine = {data} | (sockets if all(labels.get(k) == v for k, v in ours.items()) else set())
            shared = sorted(sources & mine)
            if shared and name not in container_names(summary):
                other = (container_names(summary) or [str(summary.get("Id", ""))[:12]])[0]
                raise PermanentError(
                    f"container {other} is running with {', '.join(shared)} mounted, the data of {service}: "
                    f"a second container {name} there would run a second server on the same data. Stop it "
                    f"(`docker stop {other}`), or, if it is {service}'s container renamed by hand, rename it "
                    f"back (`docker rename {other} {name}`). Nothing was changed"
                )

    def _recreate(self, service: str, old: Any, data_dir: str) -> Any:
        """A new container with the old one's configuration, the data mount and RAM_MODE changed."""
        attrs = old.attrs
        config = dict(attrs["Config"])
        host_config = dict(attrs["HostConfig"])
        target = self.data_path(service)
        env = {**container_env(attrs), **self.desired_env(service)}
        config["Env"] = [f"{k}={v}" for k, v in env.items()]
        host_config["Binds"] = [b for b in host_config.get("Binds") or [] if _bind_target(b) != target]
        host_config["Mounts"] = [m for m in host_config.get("Mounts") or [] if m.get("Target") != target]
        host_config["Mounts"].append(data_bind(data_dir, target))
        host_config["Tmpfs"] = {k: v for k, v in (host_config.get("Tmpfs") or {}).items() if k != target}
        config["Volumes"] = {k: v for k, v in (config.get("Volumes") or {}).items() if k != target} or None
        networks = attrs.get("NetworkSettings", {}).get("Networks") or {}
        networking = None
        if host_config.get("NetworkMode") not in ("host", "none") and networks:
            networking = {
                "EndpointsConfig": {
                    net: {"Aliases": info.get("Aliases"), "IPAMConfig": info.get("IPAMConfig")}
                    for net, info in networks.items()
                }
            }
        name = old.name
        was_running = old.status == "running"
        if was_running:
            old.stop(timeout=_STOP_TIMEOUT)
        aside = f"{name}-replaced-{int(time.time())}"
        old.rename(aside)
        try:
            body = {**config, "HostConfig": host_config}
            if networking:
                body["NetworkingConfig"] = networking
            failpoints.hit("docker.create", container=name, image=config.get("Image", ""))
            with engine_errors(f"recreating container {name} for {service} from {config.get('Image')}"):
                created = self.client.api.create_container_from_config(body, name)
        except Exception:
            old.rename(name)
            if was_running:
                old.start()
            raise
        old.remove(v=False)
        log.info("recreated container %s for %s with data in %s", name, service, data_dir)
        return self.client.containers.get(created["Id"])

    def _start_and_wait(self, service: str, container: Any, port: int) -> None:
        """Start the container unless it runs, and wait until the server answers. A container the
        engine keeps restarting (``unless-stopped`` after an earlier failed start, e.g. a port that was
        taken then) is stopped and started afresh: its old log lines and restart count describe that
        earlier attempt, not this one."""
        container.reload()
        if container.status == "restarting":
            container.stop(timeout=5)
            container.reload()
        restarts_before = int(container.attrs.get("RestartCount", 0))
        started_at = int(time.time()) - 1  # the engine's log timestamps have second resolution
        if container.status != "running":
            container.start()
        self._wait_ready(service, container, port, restarts_before, started_at)

    def _wait_ready(
        self, service: str, container: Any, port: int, restarts_before: int, started_at: int
    ) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            container.reload()
            if container.status in ("exited", "dead") or (
                container.status == "restarting" and container.attrs["RestartCount"] > restarts_before
            ):
                logs = container.logs(tail=15, since=started_at).decode(errors="replace").strip()
                if "address already in use" in logs.lower():
                    # The host's fault, not the data's: host_fault (docs/FAILURES.md), retried. The log line
                    # quoted is the one naming the cause (MariaDB's last line is only "Aborting").
                    line = next(x for x in logs.splitlines() if "address already in use" in x.lower())
                    raise HostFault(
                        f"{service} in container {container.name} could not listen on port {port}: it is taken by "
                        "another process (`ss -ltnp` shows which). Stop that process or choose another port in "
                        f"state.yaml; retried. Its log: {line.strip()[:300]}"
                    )
                raise CommandFailed(
                    [f"container {container.name}"], int(container.attrs["State"].get("ExitCode", 1)), logs
                )
            if container.status == "running" and self._answers(service, port):
                return
            time.sleep(0.2)
        raise TransientError(
            f"{service} in container {container.name} did not become ready in {_START_TIMEOUT:.0f} s"
        )

    def _answers(self, service: str, port: int) -> bool:
        if service == "postgres":
            path = os.path.join(self.socket_dir("postgres"), f".s.PGSQL.{port}")
            if not os.path.exists(path):
                return False
            try:
                import psycopg

                with psycopg.connect(
                    host=self.socket_dir("postgres"),
                    port=port,
                    user="postgres",
                    dbname="postgres",
                    connect_timeout=2,
                ) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                return False
        recipe = self.recipes.get(service)
        if recipe is not None:  # accepting on its socket (a socket file left by a killed server refuses)
            path = os.path.join(self.socket_dir(service), recipe.socket_name)
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1)
                sock.connect(path)
                return True
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False


_shared: dict[str, Any] = {}


def exec_process(
    container: str, argv: list[str], env: dict[str, str] | None, stdin: bool, stdout: bool, user: str
) -> ExecProcess:
    """Start ``argv`` inside ``container`` (used by the database modules for container endpoints)."""
    if "client" not in _shared:
        _shared["client"] = connect_engine()
    with engine_errors(f"running {argv[0]} in container {container}"):
        return ExecProcess(_shared["client"].api, container, argv, env or {}, stdin, stdout, user)


def streaming(
    container: str,
    argv: list[str],
    user: str,
    env: dict[str, str] | None = None,
    stdin: Any = proc.DEVNULL,
    stdout: Any = proc.DEVNULL,
) -> Any:
    """``proc.streaming`` for a program inside ``container``, streamed through the Engine API socket."""
    return proc.streaming(
        argv, start=lambda: exec_process(container, argv, env, stdin == proc.PIPE, stdout == proc.PIPE, user)
    )


def container_names(summary: dict[str, Any]) -> list[str]:
    return [str(name).lstrip("/") for name in summary.get("Names") or []]


def find_container(
    listing: list[dict[str, Any]], stack: str, service: str, name: str, configured: object
) -> dict[str, Any] | None:
    """The service's container in a ``GET /containers/json`` listing: by its name, else (unless the name
    is configured) by Compose's labels (project = stack, service = the service's name)."""
    for summary in listing:
        if name in container_names(summary):
            return summary
    if configured:
        return None
    for summary in listing:
        labels = summary.get("Labels") or {}
        if (
            labels.get("com.docker.compose.project") == stack
            and labels.get("com.docker.compose.service") == service
        ):
            return summary
    return None


def container_env(attrs: dict[str, Any]) -> dict[str, str]:
    env = {}
    for item in attrs.get("Config", {}).get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def data_mount(attrs: dict[str, Any], target: str) -> dict[str, Any] | None:
    for mount in attrs.get("Mounts") or []:
        if os.path.normpath(str(mount.get("Destination"))) == target:
            return dict(mount)
    tmpfs = (attrs.get("HostConfig", {}).get("Tmpfs") or {}).get(target)
    if tmpfs is not None:
        return {"Type": "tmpfs", "Destination": target, "Options": tmpfs}
    for mount in attrs.get("HostConfig", {}).get("Mounts") or []:
        if mount.get("Target") == target and mount.get("Type") == "tmpfs":
            return {"Type": "tmpfs", "Destination": target, "Options": str(mount.get("TmpfsOptions") or "")}
    return None


def data_bind(source: str, target: str) -> dict[str, Any]:
    """The data mount: a bind whose missing source makes the container fail to start.

    ``-v``/``Binds`` would have Docker create a missing source as an empty directory. After a reboot
    the restart policy starts the container before the reconciler runs; the RAM directory is gone, and
    the image's entrypoint would initialise an empty database in a directory Docker made up on plain
    /dev/shm. With a ``Mounts`` bind the container stays down until the reconciler restores its data.
    """
    return {"Type": "bind", "Source": source, "Target": target, "ReadOnly": False}


def creates_missing_source(attrs: dict[str, Any], target: str) -> bool:
    """The container's data at ``target`` is a ``-v`` bind, which Docker re-creates empty when missing."""
    return any(_bind_target(b) == target for b in attrs.get("HostConfig", {}).get("Binds") or [])


def _same_dir(a: str, b: str) -> bool:
    return os.path.normpath(a) == os.path.normpath(b)


def _bind_target(bind: str) -> str:
    parts = bind.split(":")
    return os.path.normpath(parts[1]) if len(parts) > 1 else ""


class ExecProcess:
    """A command running inside a container, shaped like the part of ``subprocess.Popen`` we stream with.

    The Engine multiplexes stdout and stderr on one socket in frames (8-byte header: stream, size); a
    thread demultiplexes them into a real pipe (``stdout``) and a buffer (stderr). ``stdin`` is a real
    pipe too, pumped into the socket by a thread that half-closes it at EOF, which is how the program
    inside sees the end of its input.
    """

    def __init__(
        self,
        api: Any,
        container: str,
        argv: list[str],
        env: dict[str, str],
        stdin: bool,
        stdout: bool,
        user: str,
    ) -> None:
        self.api = api
        self.argv = argv
        created = api.exec_create(
            container, argv, stdin=stdin, stdout=True, stderr=True, environment=env, user=user
        )
        self.exec_id = created["Id"]
        raw = api.exec_start(self.exec_id, socket=True)
        self._sock: socket.socket = getattr(raw, "_sock", raw)
        self._stderr: list[bytes] = []
        self.stdout: IO[bytes] | None = None
        self.stdin: IO[bytes] | None = None
        self._out_fd: int | None = None
        self._threads: list[threading.Thread] = []
        self.returncode: int | None = None
        if stdout:
            read_fd, self._out_fd = os.pipe()
            self.stdout = os.fdopen(read_fd, "rb")
        self._threads.append(threading.Thread(target=self._demux, daemon=True))
        if stdin:
            in_read, in_write = os.pipe()
            self.stdin = os.fdopen(in_write, "wb")
            self._threads.append(threading.Thread(target=self._pump, args=(in_read,), daemon=True))
        for thread in self._threads:
            thread.start()

    def _demux(self) -> None:
        try:
            while True:
                header = self._read_exact(8)
                if header is None:
                    break
                stream, size = header[0], struct.unpack(">I", header[4:])[0]
                payload = self._read_exact(size) if size else b""
                if payload is None:
                    break
                if stream == 1 and self._out_fd is not None:
                    try:
                        view = memoryview(payload)
                        while view:
                            view = view[os.write(self._out_fd, view) :]
                    except BrokenPipeError:
                        _close(self._out_fd)
                        self._out_fd = None
                elif stream == 2:
                    self._stderr.append(payload)
        except OSError:
            pass
        finally:
            if self._out_fd is not None:
                _close(self._out_fd)
                self._out_fd = None

    def _read_exact(self, size: int) -> bytes | None:
        chunks = []
        while size:
            chunk = self._sock.recv(min(size, 1024 * 1024))
            if not chunk:
                return None
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _pump(self, read_fd: int) -> None:
        try:
            while True:
                chunk = os.read(read_fd, 1024 * 1024)
                if not chunk:
                    break
                self._sock.sendall(chunk)
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            os.close(read_fd)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def wait(self) -> int:
        if self.returncode is not None:
            return self.returncode
        for thread in self._threads:
            thread.join()
        for _ in range(200):
            with engine_errors(f"waiting for {self.argv[0]} in a container"):
                info = self.api.exec_inspect(self.exec_id)
            if not info.get("Running"):
                self.returncode = int(info.get("ExitCode") or 0)
                break
            time.sleep(0.05)
        else:
            self.returncode = -1
        with contextlib.suppress(OSError):
            self._sock.close()
        return self.returncode

    def stderr_text(self) -> bytes:
        return b"".join(self._stderr)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
