"""The ``local`` runtime: PostgreSQL and Redis as processes started from the system's binaries.

Design decisions:
- The services outlive the reconciler (``pg_ctl start`` and ``redis-server --daemonize``): apply
  converges and exits; the daemon is optional. The truth about a running service is therefore read
  back from the world every time (postmaster.pid, the Redis pid file, /proc), never remembered.
- PostgreSQL refuses to run as root, so as root both servers run as their Debian system users
  (``postgres``, ``redis``) and their data directories are owned by them with mode 0700, on tmpfs and
  on disk alike.
- PostgreSQL listens on 127.0.0.1 (password auth, scram-sha-256) and on a unix socket in a 0700
  directory owned by the service user, where the superuser connects without a password: only root and
  the service user can reach that socket, which is what peer authentication would give us.
- Run directories (sockets, pid files, server logs) live in ``<state_dir>/run`` when the service
  users can reach it. A root user's checkout often cannot be reached (``/root`` is mode 0700): then
  they live in ``/run/reconciler/<stack>-<hash of state_dir>`` (root-owned, mode 0755, on the
  host's /run tmpfs, so they vanish at reboot like the servers do). The choice is a pure function of
  the directories' modes, so every command (plan, apply, status, the daemon) finds the same place.
  Data directories are the user's choice and are never moved: one the service user cannot reach is
  refused by the planner with what to change.
- A marker file in each data directory names the stack and service that own it. A non-empty directory
  without it (or without PG_VERSION) is "foreign" and never initialised over.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Mapping

from reconciler.errors import CommandFailed, PermanentError
from reconciler.runtimes.base import Endpoint, ServerRecipe
from reconciler.system import fs, host, proc

log = logging.getLogger(__name__)

MARKER = ".reconciler-service.json"
SERVICE_USERS = {"postgres": "postgres", "redis": "redis"}
_START_TIMEOUT = 60.0
_PRIVATE_RUN_BASE = "/run/reconciler"
_MAX_SOCKET_DIR = 90  # unix socket paths are limited to 107 bytes, ".s.PGSQL.NNNNN" included


def postgres_bindir() -> str:
    """Directory of initdb/pg_ctl/postgres: $RECONCILER_PG_BINDIR, Debian's newest, or PATH."""
    configured = os.environ.get("RECONCILER_PG_BINDIR")
    if configured:
        return configured
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]), reverse=True
    )
    if candidates:
        return os.path.dirname(candidates[0])
    found = shutil.which("pg_ctl")
    if found:
        return os.path.dirname(found)
    raise PermanentError(
        "PostgreSQL server binaries not found: install them (apt-get install postgresql) "
        "or set RECONCILER_PG_BINDIR to the directory holding pg_ctl"
    )


class LocalRuntime:
    name = "local"

    def __init__(self, stack: str, state_dir: str, recipes: Mapping[str, ServerRecipe] | None = None) -> None:
        self.stack = stack
        self.state_dir = state_dir
        # Servers of engines on the interface (databases/engine.py), given by the engine layer.
        self.recipes = dict(recipes or {})

    # -- layout ---------------------------------------------------------------------------------

    def account(self, service: str) -> tuple[str | None, int, int]:
        recipe = self.recipes.get(service)
        return host.service_account(recipe.account if recipe else SERVICE_USERS[service])

    def recipe(self, service: str) -> ServerRecipe:
        if service not in self.recipes:
            raise PermanentError(f"the local runtime does not know how to run {service}")
        return self.recipes[service]

    def pidfile(self, service: str) -> str:
        """Where a recipe's server writes its pid (Redis: ``redis_pidfile``)."""
        return os.path.join(self.run_dir(service), f"{service}.pid")

    def data_markers(self, service: str) -> tuple[str, ...] | None:
        recipe = self.recipes.get(service)
        return recipe.data_markers if recipe else None

    def run_root(self) -> str:
        """``<state_dir>/run``, or a directory under /run when a service user cannot reach it."""
        preferred = os.path.join(self.state_dir, "run")
        accounts = [self.account(service)[1:] for service in [*SERVICE_USERS, *self.recipes]]
        if all(host.reachable_by(os.path.join(preferred, "x"), uid, gid) for uid, gid in accounts):
            return preferred
        digest = hashlib.sha256(os.path.abspath(self.state_dir).encode()).hexdigest()[:12]
        return os.path.join(_PRIVATE_RUN_BASE, f"{self.stack}-{digest}")

    def run_dir(self, service: str) -> str:
        return os.path.join(self.run_root(), service)

    def socket_dir(self, service: str) -> str:
        preferred = self.run_dir(service)
        if len(preferred) <= _MAX_SOCKET_DIR:
            return preferred
        digest = hashlib.sha256(preferred.encode()).hexdigest()[:12]
        # As root, never a name in world-writable /tmp that another user could have created first.
        return os.path.join(_PRIVATE_RUN_BASE if os.geteuid() == 0 else "/tmp", f"reconciler-{digest}")

    def log_file(self, service: str) -> str:
        return os.path.join(self.run_dir(service), f"{service}.log")

    def redis_pidfile(self) -> str:
        return os.path.join(self.run_dir("redis"), "redis.pid")

    def endpoint(self, service: str, port: int) -> Endpoint:
        if service == "postgres":
            return Endpoint(self.socket_dir("postgres"), port, "postgres")
        if service in self.recipes:
            return self.recipes[service].endpoint(self.socket_dir(service), port)
        return Endpoint("127.0.0.1", port, "default")

    def ensure_run_dir(self, service: str) -> None:
        _, uid, gid = self.account(service)
        root, sockets = self.run_root(), self.socket_dir(service)
        if _PRIVATE_RUN_BASE + "/" in (
            root[: len(_PRIVATE_RUN_BASE) + 1],
            sockets[: len(_PRIVATE_RUN_BASE) + 1],
        ):
            fs.ensure_dir(_PRIVATE_RUN_BASE, 0o755, (0, 0))
        fs.ensure_dir(root, 0o755)
        fs.ensure_dir(self.run_dir(service), 0o700, (uid, gid))
        if sockets != self.run_dir(service):
            fs.ensure_dir(sockets, 0o700, (uid, gid))

    # -- RAM root -------------------------------------------------------------------------------

    def prepare_ram_root(self, path: str, mount: bool, size_option: str) -> None:
        os.makedirs(path, mode=0o755, exist_ok=True)
        if mount:
            if not fs.is_empty_dir(path):
                raise PermanentError(f"refusing to mount a tmpfs over {path}: the directory is not empty")
            proc.run(
                [
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={size_option},mode=0755",
                    f"reconciler-{self.stack}",
                    path,
                ]
            )
            log.info("mounted tmpfs at %s (size %s)", path, size_option)

    def resize_ram_root(self, path: str, size_option: str) -> None:
        proc.run(["mount", "-o", f"remount,size={size_option}", path])

    # -- lifecycle ------------------------------------------------------------------------------

    def init_service(self, service: str, data_dir: str) -> None:
        user, uid, gid = self.account(service)
        parent = os.path.dirname(data_dir)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if not fs.is_empty_dir(data_dir):
            raise PermanentError(f"refusing to initialise {data_dir}: it is not empty")
        fs.ensure_dir(data_dir, 0o700, (uid, gid))
        if service == "postgres":
            proc.run(
                [
                    os.path.join(postgres_bindir(), "initdb"),
                    "-D",
                    data_dir,
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--no-instructions",
                ],
                user=user,
                timeout=300,
                inherit_env=False,
            )
        elif service in self.recipes:
            proc.run(self.recipes[service].init_argv(data_dir), user=user, timeout=300, inherit_env=False)
        marker = os.path.join(data_dir, MARKER)
        fs.atomic_write_json(marker, {"stack": self.stack, "service": service}, 0o600)
        os.chown(marker, uid, gid)
        log.info("initialised %s data directory %s", service, data_dir)

    def start_service(self, service: str, data_dir: str, port: int) -> None:
        self.ensure_run_dir(service)
        user, _, _ = self.account(service)
        if service == "postgres":
            self._start_postgres(user, data_dir, port)
        elif service in self.recipes:
            self._start_detached(self.recipes[service], user, data_dir, port)
        else:
            self._start_redis(user, data_dir, port)
        log.info("started %s on port %d from %s", service, port, data_dir)

    def _wait_for_dead_instance(self, data_dir: str, port: int) -> None:
        """After a crash, wait until the killed postmaster is reaped and its orphaned backends are gone.

        PostgreSQL refuses to start while a pid named in postmaster.pid or in the socket's lock file
        (``.s.PGSQL.<port>.lock``, which survives even when the data directory was wiped, as after a
        reboot of a RAM-mode host) still exists, even as a zombie, or while old backends run.
        """
        lock = os.path.join(self.socket_dir("postgres"), f".s.PGSQL.{port}.lock")
        pids = {pid for pid in (read_pid(os.path.join(data_dir, "postmaster.pid")), read_pid(lock)) if pid}
        if any(host.process_alive(pid) and self._is_postgres(pid) for pid in pids):
            return  # a live server: pg_ctl will say so
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if not any(os.path.exists(f"/proc/{pid}") for pid in pids) and not host.processes_in(data_dir):
                return
            time.sleep(0.05)
        raise PermanentError(
            f"processes of a crashed postgres still hold {data_dir} or port {port} after {_START_TIMEOUT:.0f} s: "
            f"{sorted(pids | host.processes_in(data_dir))}; stop them, then apply again"
        )

    @staticmethod
    def _is_postgres(pid: int) -> bool:
        cmdline = host.process_cmdline(pid)
        return bool(cmdline) and "postgres" in os.path.basename(cmdline[0])

    def _start_postgres(self, user: str | None, data_dir: str, port: int) -> None:
        self._wait_for_dead_instance(data_dir, port)
        # WAL on tmpfs costs RAM, and recycled segments are copied by every mode switch: keep it small.
        options = (
            f"-c port={port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.socket_dir('postgres')} "
            "-c max_wal_size=256MB -c min_wal_size=64MB"
        )
        try:
            proc.run(
                [
                    os.path.join(postgres_bindir(), "pg_ctl"),
                    "-D",
                    data_dir,
                    "-l",
                    self.log_file("postgres"),
                    "-w",
                    "-t",
                    str(int(_START_TIMEOUT)),
                    "-o",
                    options,
                    "start",
                ],
                user=user,
                timeout=_START_TIMEOUT + 10,
                inherit_env=False,
            )
        except CommandFailed as exc:
            raise PermanentError(
                f"postgres did not start from {data_dir}: {exc}. Its log: {self.log_file('postgres')}"
            ) from None

    def _start_redis(self, user: str | None, data_dir: str, port: int) -> None:
        pidfile = self.redis_pidfile()
        proc.run(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "yes",
                "--dir",
                data_dir,
                "--daemonize",
                "yes",
                "--pidfile",
                pidfile,
                "--logfile",
                self.log_file("redis"),
                "--save",
                "3600 1 300 100 60 10000",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
                "--enable-debug-command",
                "local",
            ],
            user=user,
            inherit_env=False,
        )
        if not _listening_soon(pidfile, port):
            raise PermanentError(
                f"redis did not start listening on {port}; its log: {self.log_file('redis')}"
            )

    def _start_detached(self, recipe: ServerRecipe, user: str | None, data_dir: str, port: int) -> None:
        service = recipe.service
        pidfile = self.pidfile(service)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)  # a stale one (a crash) would be taken for the new server
        log_file = self.log_file(service)
        argv = recipe.start_argv(data_dir, port, self.socket_dir(service), pidfile, log_file)
        proc.detach(argv, user=user, log_path=log_file)
        if not _listening_soon(pidfile, port):
            raise PermanentError(
                f"{service} did not start listening on {port} from {data_dir}; its log: {log_file}"
            )

    def stop_service(self, service: str, data_dir: str) -> None:
        user, _, _ = self.account(service)
        if service == "postgres":
            if not os.path.exists(os.path.join(data_dir, "postmaster.pid")):
                return
            proc.run(
                [
                    os.path.join(postgres_bindir(), "pg_ctl"),
                    "-D",
                    data_dir,
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "120",
                    "stop",
                ],
                user=user,
                timeout=130,
                check=False,
            )
        else:
            # redis saves its RDB on SIGTERM, mariadbd shuts down cleanly (InnoDB flushed), then they exit
            pid = read_pid(self.redis_pidfile() if service == "redis" else self.pidfile(service))
            if pid and host.process_alive(pid) and _serves(pid, data_dir, service):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 120
                while host.process_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if host.process_alive(pid):
                    raise PermanentError(f"{service} (pid {pid}) did not stop within 120 s")
        log.info("stopped %s", service)


def _listening_soon(pidfile: str, port: int) -> bool:
    """Whether the process named in ``pidfile`` listens on ``port`` within the start timeout."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        pid = read_pid(pidfile)
        if pid and port in host.listening_ports(pid):
            return True
        time.sleep(0.02)
    return False


def _serves(pid: int, data_dir: str, service: str) -> bool:
    """Redis's pid file is per stack; a recipe's server is stopped only from the directory it serves."""
    if service == "redis":
        return True
    cwd = host.process_cwd(pid)
    return cwd is None or os.path.normpath(cwd) == os.path.normpath(data_dir)


def read_pid(path: str) -> int | None:
    try:
        with open(path) as handle:
            first = handle.readline().strip()
    except (FileNotFoundError, PermissionError):
        return None
    return int(first) if first.isdigit() else None


def holds_service_data(service: str, data_dir: str, markers: tuple[str, ...] | None = None) -> bool:
    """The directory holds data of ``service``: PostgreSQL's PG_VERSION; for Redis our marker or a
    snapshot/AOF (a directory Compose or an image's entrypoint created has no marker of ours); for an
    engine on the interface, its recipe's ``markers``."""
    names = markers or (("PG_VERSION",) if service == "postgres" else (MARKER, "dump.rdb", "appendonlydir"))
    return any(os.path.exists(os.path.join(data_dir, name)) for name in names)


def read_marker(data_dir: str) -> dict[str, str] | None:
    try:
        with open(os.path.join(data_dir, MARKER)) as handle:
            data = json.load(handle)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, PermissionError):
        return None
    return data if isinstance(data, dict) else None
