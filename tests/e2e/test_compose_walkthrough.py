"""compose/README.md's walkthrough, as a new user runs it: Debian's docker-compose brings the reference
stack up on its disk directories, `keygen` and `plan` show the move into RAM, `apply` makes it, and
the stand-in application keeps writing afterwards, in RAM mode.

The user's copy of compose/ gets free ports and its own project name (and so its own stack name and
RAM directory); nothing else of the files is changed. The walkthrough's tools are installed by
`scripts/dockerd` (docker.io, docker-compose) and the images by `scripts/docker-images`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from ruamel.yaml import YAML

from tests.conftest import RAM_BASE, ROOT, TEST_BASE, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


class Walkthrough:
    def __init__(self, base: Path, project: str, pg_port: int) -> None:
        self.base = base
        self.pg_port = pg_port
        self.dir = base / "compose"
        self.project = project
        self.state = self.dir / "state.docker.yaml"
        self.env = {**os.environ, "RECONCILER_DIR": str(base), "LOOMIO_DB_PASSWORD": uuid.uuid4().hex}
        self.env.pop("RECONCILER_STATE", None)

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        if not shutil.which("docker-compose"):
            pytest.fail(
                "docker-compose is missing: scripts/dockerd installs it (.ci/run does)", pytrace=False
            )
        return subprocess.run(
            ["docker-compose", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )

    def reconciler(self, *args: str, check: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "reconciler", "-f", str(self.state), *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == check, (
            f"reconciler {' '.join(args)} exited {result.returncode}, expected {check}\n{result.stdout}\n{result.stderr}"
        )
        return result

    def container(self, service: str) -> Any:
        client = docker.from_env()
        found = client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.project}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )
        assert len(found) == 1, [c.name for c in found]
        return found[0]

    def ticks(self) -> int:
        out = self.container("postgres").exec_run(
            [
                "psql",
                "-p",
                str(self.pg_port),
                "-U",
                "postgres",
                "-d",
                "loomio_production",
                "-Atc",
                "SELECT count(*) FROM ticks",
            ]
        )
        return int(out.output.decode().strip()) if out.exit_code == 0 else -1


@pytest.fixture
def walkthrough(servers_installed: None) -> Iterator[Walkthrough]:
    TEST_BASE.mkdir(mode=0o755, exist_ok=True)
    RAM_BASE.mkdir(mode=0o755, exist_ok=True)
    name = uuid.uuid4().hex[:8]
    base = TEST_BASE / f"compose-{name}"
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    shutil.copytree(ROOT / "compose", base / "compose", ignore=shutil.ignore_patterns("data", ".reconciler"))
    project = f"w{name}"
    pg_port, redis_port = free_port(), free_port()
    compose_file = base / "compose" / "docker-compose.yml"
    compose_file.write_text(
        compose_file.read_text()
        .replace("55432", str(pg_port))
        .replace("56379", str(redis_port))
        .replace("container_name: loomio-app", f"container_name: {project}-app")
    )
    (base / "compose" / ".env").write_text(f"COMPOSE_PROJECT_NAME={project}\n")
    yaml = YAML()
    state_file = base / "compose" / "state.docker.yaml"
    document = yaml.load(state_file.read_text())
    document["stack"] = project
    document["services"]["postgres"]["port"] = pg_port
    document["services"]["redis"]["port"] = redis_port
    document["drain"]["containers"] = [f"{project}-app"]
    document["ram"]["path"] = str(RAM_BASE / name)
    document["daemon"]["metrics_port"] = free_port()
    with state_file.open("w") as handle:
        yaml.dump(document, handle)
    flow = Walkthrough(base, project, pg_port)
    try:
        yield flow
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            flow.compose("down", "--timeout", "5")
        subprocess.run(["umount", "-l", str(RAM_BASE / name)], capture_output=True, check=False)
        shutil.rmtree(RAM_BASE / name, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


def test_the_compose_walkthrough_moves_a_running_stack_into_ram(walkthrough: Walkthrough) -> None:
    flow = walkthrough
    flow.compose("up", "-d", "postgres", "redis", "app")
    assert flow.container("postgres").status in ("running", "created")

    recipient = flow.reconciler("keygen", "--add-recipient").stdout.strip()
    assert recipient.startswith("age1"), recipient
    assert YAML(typ="safe").load(flow.state.read_text())["backup"]["encryption"]["recipients"] == [recipient]

    plan = flow.reconciler("plan", check=2).stdout
    assert "switch postgres and redis from disk to ram mode" in plan
    flow.reconciler("apply")
    assert "No changes" in flow.reconciler("plan").stdout

    for service, target in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
        attrs = flow.container(service).attrs
        assert "RAM_MODE=true" in attrs["Config"]["Env"]
        mount = next(m for m in attrs["Mounts"] if m["Destination"] == target)
        assert mount["Source"].startswith(str(RAM_BASE)), mount
    # The application was drained and resumed: it writes again, now into RAM.
    before = flow.ticks()
    deadline = time.monotonic() + 60
    while flow.ticks() <= before and time.monotonic() < deadline:
        time.sleep(0.5)  # polling the application's own writes, with a deadline
    assert flow.ticks() > before, "the application did not write again after the switch:\n" + flow.container(
        "app"
    ).logs(tail=20).decode(errors="replace")
    assert flow.container("app").status == "running"
