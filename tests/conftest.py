"""Shared test fixtures: throw-away stacks on real PostgreSQL and Redis servers.

Every stack lives in its own directory under /tmp/reconciler-tests (world-searchable, so the
unprivileged ``postgres``/``redis`` users can reach it) and its own RAM root under /dev/shm, on free
ports. Teardown stops whatever is still running, unmounts, and removes everything, even when the test
failed half-way. A missing server binary fails the test loudly: nothing here skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from ruamel.yaml import YAML

from tests.support.ports import free_port

# No per-example deadline: the suite runs four workers beside real servers on two cores, where one
# example of a pure test can take 300 ms for reasons that have nothing to do with it. Speed is
# measured in bench/, not asserted by hypothesis.
settings.register_profile("reconciler", deadline=None)
settings.load_profile("reconciler")

ROOT = Path(__file__).resolve().parents[1]
TEST_BASE = Path("/tmp/reconciler-tests")
RAM_BASE = Path("/dev/shm/reconciler-tests")


def _require(binary: str, hint: str) -> None:
    if not shutil.which(binary) and not any(Path("/usr/lib/postgresql").glob(f"*/bin/{binary}")):
        pytest.fail(f"{binary} is missing: {hint}", pytrace=False)


class Stack:
    """A stack on disk: a state.yaml, and the CLI run against it as a real subprocess."""

    def __init__(self, directory: Path, ram_root: Path) -> None:
        self.dir = directory
        self.ram_root = ram_root
        self.state_file = directory / "state.yaml"
        self.pg_port = free_port()
        self.redis_port = free_port()
        self.env: dict[str, str] = {}
        self.command_prefix: list[str] = []  # e.g. unshare ... (tests/e2e/test_hosts.py: another hostname)

    def write(self, document: dict[str, Any]) -> None:
        yaml = YAML()
        with self.state_file.open("w") as handle:
            yaml.dump(document, handle)

    def default_document(self, mode: str = "ram", mount: str = "never") -> dict[str, Any]:
        return {
            "version": 1,
            "stack": "t" + uuid.uuid4().hex[:8],
            "runtime": "local",
            "mode": mode,
            "services": {
                "postgres": {
                    "database": "app_db",
                    "user": "app",
                    "port": self.pg_port,
                    "disk_dir": "./data/postgres",
                    "dump_options": ["--no-owner", "--no-acl"],
                },
                "redis": {"port": self.redis_port, "disk_dir": "./data/redis"},
            },
            "ram": {
                "path": str(self.ram_root),
                "mount": mount,
                "tmpfs_size": "256MiB",
                "min_headroom": "64MiB",
            },
            "backup": {"encryption": "none"},
        }

    def document(self) -> dict[str, Any]:
        return dict(YAML(typ="safe").load(self.state_file.read_text()))

    def edit(self, **changes: Any) -> None:
        document = self.document()
        document.update(changes)
        self.write(document)

    def cli(
        self, *args: str, check: int | None = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **self.env, **(env or {})}
        full_env.pop("RECONCILER_STATE", None)
        result = subprocess.run(
            [*self.command_prefix, sys.executable, "-m", "reconciler", "-f", str(self.state_file), *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=300,
            check=False,
        )
        if check is not None and result.returncode != check:
            raise AssertionError(
                f"reconciler {' '.join(args)} exited {result.returncode}, expected {check}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("status", "-o", "json").stdout))

    def pg_conninfo(self, dbname: str = "postgres") -> dict[str, Any]:
        state_dir = self.dir / ".reconciler" / "run" / "postgres"
        return {"host": str(state_dir), "port": self.pg_port, "user": "postgres", "dbname": dbname}

    def teardown(self) -> None:
        if self.state_file.exists():
            self.cli("down", check=None)
        # Belt and braces: whatever a failed test left running is stopped by pid.
        for pidfile in [
            *self.dir.rglob("postmaster.pid"),
            *self.ram_root.rglob("postmaster.pid"),
            *self.dir.rglob("redis.pid"),
            *self.dir.rglob("mariadb.pid"),
        ]:
            with contextlib.suppress(ValueError, ProcessLookupError, FileNotFoundError, IndexError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        self._remove_containers()
        subprocess.run(["umount", "-l", str(self.ram_root)], capture_output=True, check=False)
        shutil.rmtree(self.ram_root, ignore_errors=True)

    def _remove_containers(self) -> None:
        """`down` stops containers and keeps them, as a user expects; a test's are removed too: with
        the vfs storage driver each one is a full copy of its image (~375 MB), and a suite leaves
        dozens, enough to fill the disk under the tests that follow."""
        if not os.path.exists("/var/run/docker.sock"):
            return
        with contextlib.suppress(Exception):
            # hostile-input tests leave state files of any size or kind (a sparse terabyte, /dev/zero)
            if not self.state_file.is_file() or self.state_file.stat().st_size > 1 << 20:
                return
            stack_name = str(self.document().get("stack"))
            import docker

            client = docker.from_env(timeout=30)
            try:
                ours = [
                    *client.containers.list(all=True, filters={"label": f"io.reconciler.stack={stack_name}"}),
                    *client.containers.list(all=True, filters={"name": f"^{stack_name}-"}),  # made by a test
                ]
                for container in ours:
                    with contextlib.suppress(Exception):
                        container.remove(force=True)
            finally:
                client.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def servers_installed() -> None:
    _require("redis-server", "install it with apt-get install redis-server (.ci/run does)")
    _require("pg_ctl", "install it with apt-get install postgresql (.ci/run does)")


@pytest.fixture
def stack(servers_installed: None) -> Iterator[Stack]:
    TEST_BASE.mkdir(mode=0o755, exist_ok=True)
    os.chmod(TEST_BASE, 0o755)
    RAM_BASE.mkdir(mode=0o755, exist_ok=True)
    name = uuid.uuid4().hex[:10]
    directory = TEST_BASE / name
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    created = Stack(directory, RAM_BASE / name)
    try:
        yield created
    finally:
        created.teardown()


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Any]:
    """A Google Drive v3 emulator on 127.0.0.1 (tests/support/gdrive_emulator.py), stopped afterwards."""
    from tests.support.gdrive_emulator import DriveEmulator

    drive = DriveEmulator(str(tmp_path / "drive"))
    try:
        yield drive
    finally:
        drive.stop()
