"""The docker runtime against the real Docker engine and the locally built images (scripts/docker-images).

A missing engine or image fails these tests loudly: `.ci/run` starts dockerd and builds the images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import redis

from tests.conftest import Stack, free_port
from tests.integration.test_backups import seed, snapshot

pytestmark = pytest.mark.integration

PG_IMAGE = "reconciler/postgres:15"
REDIS_IMAGE = "reconciler/redis:7"


@pytest.fixture(scope="session")
def engine() -> Any:
    if not os.path.exists("/var/run/docker.sock"):
        pytest.fail("no Docker engine: start dockerd (.ci/run does)", pytrace=False)
    client = docker.from_env()
    for image in (PG_IMAGE, REDIS_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            pytest.fail(f"image {image} missing: run scripts/docker-images (.ci/run does)", pytrace=False)
    return client


@pytest.fixture
def docker_stack(stack: Stack, engine: Any) -> Iterator[Stack]:
    document = docker_document(stack)
    stack.write(document)
    try:
        yield stack
    finally:
        for service in ("postgres", "redis"):
            for container in engine.containers.list(
                all=True, filters={"name": f"{document['stack']}-{service}"}
            ):
                container.remove(force=True)


def docker_document(stack: Stack, mode: str = "ram") -> dict[str, Any]:
    document = stack.default_document(mode)
    document["runtime"] = "docker"
    document["services"]["postgres"]["image"] = PG_IMAGE
    document["services"]["redis"]["image"] = REDIS_IMAGE
    return document


def inspect(engine: Any, name: str) -> dict[str, Any]:
    return dict(engine.api.inspect_container(name))


def mounts_inside(name: str, path: str) -> str:
    out = subprocess.run(
        ["docker", "exec", name, "sh", "-c", "mount"], capture_output=True, text=True, check=True
    )
    return next(line for line in out.stdout.splitlines() if f" on {path} " in line)


def test_apply_runs_both_services_in_containers_with_data_on_tmpfs(docker_stack: Stack, engine: Any) -> None:
    stack = docker_stack
    stack.cli("apply")
    name = stack.document()["stack"]
    for service, path in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
        attrs = inspect(engine, f"{name}-{service}")
        assert attrs["State"]["Running"]
        mount = next(m for m in attrs["Mounts"] if m["Destination"] == path)
        assert mount["Type"] == "bind" and mount["Source"] == str(stack.ram_root / service)
        assert "RAM_MODE=true" in attrs["Config"]["Env"]
        assert attrs["HostConfig"]["NetworkMode"] == "host"
        assert "type tmpfs" in mounts_inside(f"{name}-{service}", path)
    status = stack.status()
    assert status["in_sync"] and all(s["on_tmpfs"] for s in status["services"].values())
    assert stack.cli("plan").returncode == 0


def test_backups_through_exec_restore_across_runtimes(
    docker_stack: Stack, tmp_path: Path, engine: Any
) -> None:
    stack = docker_stack
    stack.cli("apply")
    seed(stack, 400)
    in_docker = snapshot(stack)
    stack.cli("backup")
    docker_store = stack.dir / "data" / "backups"
    newest = max(p.name.split(".", 1)[0] for p in docker_store.iterdir())  # not apply's first set
    docker_files = sorted(
        p.name.split(".", 1)[1] for p in docker_store.iterdir() if p.name.startswith(newest)
    )
    assert docker_files == ["manifest.json", "postgres.pgdump.zst", "redis.rdb.zst"]

    # The same stack on the local runtime (other ports and directories) restores the docker set ...
    local = Stack(Path(str(stack.dir) + "-local"), Path(str(stack.ram_root) + "-local"))
    local.dir.mkdir(mode=0o755)
    os.chmod(local.dir, 0o755)
    try:
        document = local.default_document("ram")
        document["stack"] = stack.document()["stack"]
        local.write(document)
        local.cli("apply")
        local_store = local.dir / "data" / "backups"
        local_store.mkdir(parents=True, exist_ok=True)
        for path in docker_store.iterdir():
            shutil.copy2(path, local_store / path.name)
        local.cli("restore", "--latest", "--yes", "--no-safety-backup")
        assert snapshot(local) == in_docker
        manifest = json.loads(next(local_store.glob("*.manifest.json")).read_text())
        assert {m["service"] for m in manifest["members"]} == {"postgres", "redis"}

        # ... and a set taken on the local runtime restores into the containers.
        seed(local, 50)
        in_local = snapshot(local)
        local.cli("backup")
        newest = sorted(local_store.glob("*.manifest.json"))[-1].name.split(".")[0]
        for path in local_store.glob(f"{newest}.*"):
            shutil.copy2(path, docker_store / path.name)
        stack.cli("restore", newest, "--yes", "--no-safety-backup")
        assert snapshot(stack) == in_local
    finally:
        local.teardown()


def test_a_removed_or_stopped_container_is_detected_and_repaired(docker_stack: Stack, engine: Any) -> None:
    stack = docker_stack
    stack.cli("apply")
    seed(stack, 100)
    before = snapshot(stack)
    name = stack.document()["stack"]
    redis.Redis(port=stack.redis_port).save()  # a killed Redis keeps what it saved, in any runtime
    engine.containers.get(f"{name}-redis").remove(force=True)
    engine.containers.get(f"{name}-postgres").stop()
    plan = stack.cli("plan", check=2).stdout
    assert "start postgres" in plan and "start redis" in plan
    stack.cli("apply")
    assert stack.cli("plan").returncode == 0
    assert snapshot(stack) == before  # the data lived on the host tmpfs, not in the containers


def test_env_drift_is_repaired_and_a_foreign_mount_blocks_the_plan(docker_stack: Stack, engine: Any) -> None:
    stack = docker_stack
    stack.cli("apply")
    name = stack.document()["stack"]
    # Someone recreated redis with RAM_MODE=false and a label of their own: the reconciler recreates it
    # with RAM_MODE=true and keeps the label.
    old = inspect(engine, f"{name}-redis")
    engine.containers.get(f"{name}-redis").remove(force=True)
    engine.containers.run(
        REDIS_IMAGE,
        ["redis-server", "--port", str(stack.redis_port)],
        name=f"{name}-redis",
        detach=True,
        network_mode="host",
        environment={"RAM_MODE": "false", "APP_SETTING": "kept"},
        labels={"owner": "someone"},
        volumes={str(stack.ram_root / "redis"): {"bind": "/data", "mode": "rw"}},
    )
    plan = stack.cli("plan", check=2).stdout
    assert "recreate container" in plan and "RAM_MODE=false" in plan
    stack.cli("apply")
    attrs = inspect(engine, f"{name}-redis")
    assert "RAM_MODE=true" in attrs["Config"]["Env"] and "APP_SETTING=kept" in attrs["Config"]["Env"]
    assert attrs["Config"]["Labels"]["owner"] == "someone" and attrs["Id"] != old["Id"]
    # Now postgres is moved onto a named volume by hand: the planner will not guess which data is current.
    engine.containers.get(f"{name}-postgres").remove(force=True)
    volume = f"{name}-pgvolume"
    engine.containers.create(
        PG_IMAGE,
        name=f"{name}-postgres",
        network_mode="host",
        volumes={volume: {"bind": "/var/lib/postgresql/data"}},
    )
    try:
        blocked = stack.cli("plan", check=1)
        assert f"named volume {volume}" in blocked.stdout + blocked.stderr
        assert stack.cli("apply", check=1).returncode == 1
        assert inspect(engine, f"{name}-postgres")["Mounts"][0]["Name"] == volume  # untouched
    finally:
        engine.containers.get(f"{name}-postgres").remove(force=True)
        engine.volumes.get(volume).remove()


def test_engine_and_image_problems_are_clear_and_change_nothing(docker_stack: Stack, engine: Any) -> None:
    stack = docker_stack
    missing_socket = stack.cli("plan", check=1, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert "/nonexistent/docker.sock does not exist" in missing_socket.stderr
    not_answering = stack.cli("apply", check=1, env={"DOCKER_HOST": f"tcp://127.0.0.1:{free_port()}"})
    assert "does not answer" in not_answering.stderr and "is dockerd running" in not_answering.stderr
    document = stack.document()
    document["services"]["redis"]["image"] = "reconciler/absent:1"
    stack.write(document)
    absent = stack.cli("apply", check=1)
    assert "image reconciler/absent:1" in absent.stderr and "not present" in absent.stderr
    assert not engine.containers.list(all=True, filters={"name": f"{document['stack']}-redis"})


def test_containers_started_by_compose_are_found_by_their_labels(docker_stack: Stack, engine: Any) -> None:
    stack = docker_stack
    name = stack.document()["stack"]
    (stack.ram_root / "redis").mkdir(parents=True)
    engine.containers.run(
        REDIS_IMAGE,
        ["redis-server", "--port", str(stack.redis_port)],
        name=f"{name}-redis-1",  # Compose's naming: <project>-<service>-<n>
        detach=True,
        network_mode="host",
        environment={"RAM_MODE": "true"},
        labels={"com.docker.compose.project": name, "com.docker.compose.service": "redis"},
        volumes={str(stack.ram_root / "redis"): {"bind": "/data", "mode": "rw"}},
    )
    try:
        stack.cli("apply")
        assert not engine.containers.list(all=True, filters={"name": f"^/{name}-redis$"})
        status = stack.status()
        assert status["services"]["redis"]["running"] and status["in_sync"]
    finally:
        engine.containers.get(f"{name}-redis-1").remove(force=True)


def test_a_mode_switch_keeps_the_data_the_reconciler_own_and_binds_it_with_a_mount(
    docker_stack: Stack, engine: Any
) -> None:
    """Disk → RAM with backup sets present: the moved RAM data carries the marker, so it is the
    stack's data (not an image's fresh database to be replaced by a restore), and the container binds
    it with a Mounts bind that Docker would not re-create empty after a reboot."""
    stack = docker_stack
    stack.edit(mode="disk")
    stack.cli("apply")
    seed(stack, 200)
    stack.cli("backup")
    seed(stack, 10)  # newer than the set: a restore instead of the moved data would lose these
    before = snapshot(stack)
    stack.edit(mode="ram")
    stack.cli("apply")
    assert stack.cli("plan").returncode == 0
    assert snapshot(stack) == before
    name = stack.document()["stack"]
    for service, path in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
        host_config = inspect(engine, f"{name}-{service}")["HostConfig"]
        assert {"Type": "bind", "Source": str(stack.ram_root / service), "Target": path}.items() <= next(
            m for m in host_config["Mounts"] if m["Target"] == path
        ).items()
        assert not [b for b in host_config.get("Binds") or [] if b.endswith(f":{path}")]
        assert (stack.ram_root / service / ".reconciler-service.json").exists()
