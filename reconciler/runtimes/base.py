"""What every runtime (local processes, Docker containers) offers the engine.

Design decision: the engine speaks to this small protocol only, so a mode switch or a restore is
written once and works on both runtimes. A runtime knows how to run a service; it knows nothing
about backups or plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Endpoint:
    """How to reach a service: a unix socket directory or 127.0.0.1, a port, a superuser."""

    host: str
    port: int
    user: str = "postgres"
    container: str | None = None  # docker runtime: client programs run inside this container (exec)
    container_host: str | None = None  # the server's address as seen from inside that container


class Runtime(Protocol):
    name: str

    def prepare_ram_root(self, path: str, mount: bool, size_option: str) -> None: ...

    def resize_ram_root(self, path: str, size_option: str) -> None: ...

    def init_service(self, service: str, data_dir: str) -> None: ...

    def start_service(self, service: str, data_dir: str, port: int) -> None: ...

    def stop_service(self, service: str, data_dir: str) -> None: ...

    def endpoint(self, service: str, port: int) -> Endpoint: ...


class ServerRecipe(Protocol):
    """How the local runtime runs one engine's server, for engines on the interface
    (``databases/engine.py``): the engine module provides it, the runtime receives it (no import upward).

    The server is started detached (``proc.detach``), writes its pid to ``pidfile``, changes into its
    data directory (so ``/proc/<pid>/cwd`` tells which copy it serves) and stops cleanly on SIGTERM.
    """

    service: str
    account: str  # the system user it runs as when the reconciler runs as root
    data_markers: tuple[str, ...]  # entries of a data directory that hold this engine's data
    mapped_files: tuple[str, ...]  # written through mmap: unchanged mtime proves nothing (fs.refresh_copy)
    process_names: tuple[str, ...]  # basename of its argv[0] in /proc/<pid>/cmdline

    def init_argv(self, data_dir: str) -> list[str]: ...

    def start_argv(
        self, data_dir: str, port: int, socket_dir: str, pidfile: str, log_file: str
    ) -> list[str]: ...

    def endpoint(self, socket_dir: str, port: int) -> Endpoint: ...

    # The docker runtime: the image's entrypoint initialises an empty data directory on first start and
    # runs the server as its own user; the runtime binds the host's socket directory at
    # ``container_socket_dir`` (so ``endpoint`` works from the host unchanged) and the data directory at
    # ``container_data_dir``.
    container_data_dir: str
    container_socket_dir: str
    socket_name: str  # the server's socket file in its socket directory (readiness: it accepts)

    def container_command(self, port: int) -> list[str]:
        """The container's command (the entrypoint adds the data directory)."""
        ...
