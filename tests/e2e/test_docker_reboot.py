"""A reboot of a RAM-mode host on the docker runtime, with Docker's restart policy acting first.

After a real reboot the Docker engine starts the containers (restart policy) before anything runs the
reconciler. The RAM directory is gone; the bind mount of a missing source would be created empty by
Docker on the plain /dev/shm and the image's entrypoint would initialise an empty database there. These
tests reproduce that for real: the containers are killed, the RAM root wiped, the containers started
with ``docker start`` (what the engine does at boot), and only then the reconciler runs. The empty
database must never be served as "in sync", never backed up, and ``apply`` must restore the newest real
set. The daemon's SIGTERM backup must hold every write acknowledged before the apps were drained.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from typing import Any

import psycopg
import pytest

from tests.conftest import Stack, free_port
from tests.e2e import test_daemon
from tests.e2e.test_daemon import RunningDaemon, local_sets
from tests.integration import test_docker_runtime as docker_tests
from tests.integration.test_backups import pg, seed, snapshot
from tests.integration.test_docker_runtime import PG_IMAGE, REDIS_IMAGE

pytestmark = pytest.mark.e2e

engine = docker_tests.engine  # the fixtures, shared with the docker runtime's integration tests
docker_stack = docker_tests.docker_stack
daemons = test_daemon.daemons

APP_IMAGE = "reconciler/app:1"
SERVICES = ("postgres", "redis")


def reboot(client: Any, stack: Stack) -> dict[str, str]:
    """Kill the containers, lose the RAM, then start them as the engine's restart policy does at boot.

    Returns what ``docker start`` said for each container ("" when it started)."""
    name = stack.document()["stack"]
    for service in SERVICES:
        with contextlib.suppress(Exception):
            client.containers.get(f"{name}-{service}").kill()
    if os.path.ismount(stack.ram_root):  # ram.mount: auto: the dedicated tmpfs is gone too
        subprocess.run(["umount", str(stack.ram_root)], check=True)
    for entry in stack.ram_root.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    said = {}
    for service in SERVICES:
        result = subprocess.run(
            ["docker", "start", f"{name}-{service}"], capture_output=True, text=True, check=False
        )
        said[service] = result.stderr.strip() if result.returncode else ""
    return said


def legacy_containers(client: Any, stack: Stack) -> None:
    """Replace the service containers by ones whose data binds Docker creates when missing (``-v``),
    as an older reconciler or a hand-written ``docker run -v`` / Compose short syntax made them."""
    name = stack.document()["stack"]
    client.containers.get(f"{name}-postgres").remove(force=True)
    client.containers.get(f"{name}-redis").remove(force=True)
    run_dir = stack.dir / ".reconciler" / "run" / "postgres"
    client.containers.run(
        PG_IMAGE,
        ["postgres", "-p", str(stack.pg_port)],
        name=f"{name}-postgres",
        detach=True,
        network_mode="host",
        environment={"RAM_MODE": "true", "POSTGRES_USER": "postgres"},
        restart_policy={"Name": "unless-stopped"},
        volumes={
            str(stack.ram_root / "postgres"): {"bind": "/var/lib/postgresql/data", "mode": "rw"},
            str(run_dir): {"bind": "/run/postgresql", "mode": "rw"},
        },
    )
    client.containers.run(
        REDIS_IMAGE,
        ["redis-server", "--port", str(stack.redis_port), "--bind", "127.0.0.1"],
        name=f"{name}-redis",
        detach=True,
        network_mode="host",
        environment={"RAM_MODE": "true"},
        restart_policy={"Name": "unless-stopped"},
        volumes={str(stack.ram_root / "redis"): {"bind": "/data", "mode": "rw"}},
    )


def served_databases(stack: Stack, timeout: float = 60) -> set[str]:
    """The databases of the server on the stack's socket, once it answers (the entrypoint is initialising)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(**stack.pg_conninfo("postgres"), connect_timeout=5) as conn:
                return {str(r[0]) for r in conn.execute("SELECT datname FROM pg_database")}
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def assert_empty_world_is_refused(stack: Stack, sets_before: list[str]) -> None:
    """Before the reconciler ran: not in sync (a restore pending), and a backup is refused with what to do."""
    status = stack.status()
    assert not status["in_sync"], status
    assert any("restore" in step for step in status["pending"]), status["pending"]
    refused = stack.cli("backup", check=None)
    assert refused.returncode != 0, refused.stdout
    assert "reconciler apply" in refused.stderr, refused.stderr
    assert local_sets(stack) == sets_before


@pytest.mark.parametrize("mount", ["never", "auto"])
def test_docker_starting_the_containers_first_after_a_reboot_restores_the_newest_set(
    docker_stack: Stack, engine: Any, mount: str
) -> None:
    """``never``: ram.path on /dev/shm, wiped. ``auto``: the reconciler's own tmpfs at ram.path is gone,
    and a directory Docker created there would sit on plain /dev/shm."""
    stack = docker_stack
    document = stack.document()
    document["ram"]["mount"] = mount
    stack.write(document)
    stack.cli("apply")
    assert os.path.ismount(stack.ram_root) == (mount == "auto")
    seed(stack, 300)
    before = snapshot(stack)
    stack.cli("backup")
    sets_before = local_sets(stack)

    said = reboot(engine, stack)

    # The engine cannot make up a data directory: the containers stay down until the reconciler runs.
    name = stack.document()["stack"]
    assert engine.containers.get(f"{name}-postgres").status != "running", said
    assert "bind source path does not exist" in said["postgres"], said
    assert_empty_world_is_refused(stack, sets_before)
    stack.cli("apply")
    assert snapshot(stack) == before
    assert stack.cli("plan").returncode == 0
    # The restored directories are the reconciler's own: a second reboot behaves the same.
    reboot(engine, stack)
    assert_empty_world_is_refused(stack, local_sets(stack))
    stack.cli("apply")
    assert snapshot(stack) == before


def test_an_empty_database_initialised_by_the_entrypoint_is_set_aside_and_the_newest_set_restored(
    docker_stack: Stack, engine: Any
) -> None:
    stack = docker_stack
    stack.cli("apply")
    seed(stack, 300)
    before = snapshot(stack)
    stack.cli("backup")
    sets_before = local_sets(stack)
    legacy_containers(engine, stack)

    assert reboot(engine, stack) == {"postgres": "", "redis": ""}  # -v binds: Docker creates the dirs
    name = stack.document()["stack"]
    assert "app_db" not in served_databases(stack)  # the entrypoint's fresh, empty cluster is served

    assert_empty_world_is_refused(stack, sets_before)
    plan = stack.cli("plan", check=2).stdout
    assert "restore" in plan
    stack.cli("apply")
    assert snapshot(stack) == before
    assert stack.cli("plan").returncode == 0
    kept = [p for p in stack.ram_root.iterdir() if p.name.startswith("postgres.unclaimed-")]
    assert len(kept) == 1 and (kept[0] / "PG_VERSION").exists()  # set aside, never deleted
    attrs = engine.api.inspect_container(f"{name}-postgres")
    assert not any(b.endswith(":/var/lib/postgresql/data") for b in attrs["HostConfig"].get("Binds") or [])


def writer(client: Any, stack: Stack) -> Any:
    """An app container that inserts rows as fast as it can; each committed row is acknowledged."""
    with pg(stack) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ticks (id bigserial PRIMARY KEY)")
    socket_dir = stack.dir / ".reconciler" / "run" / "postgres"
    return client.containers.run(
        APP_IMAGE,
        [
            "sh",
            "-c",
            f"while true; do psql -h /run/postgresql -p {stack.pg_port} -U postgres -d app_db "
            "-Atqc 'INSERT INTO ticks DEFAULT VALUES' >/dev/null; done",
        ],
        name=f"{stack.document()['stack']}-app-{uuid.uuid4().hex[:6]}",
        detach=True,
        network_mode="host",
        stop_signal="SIGKILL",
        volumes={str(socket_dir): {"bind": "/run/postgresql", "mode": "rw"}},
    )


def ticks(stack: Stack) -> int:
    with pg(stack) as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM ticks").fetchone()
    assert row is not None
    return int(row[0])


def test_the_shutdown_backup_is_taken_after_the_apps_are_drained(
    docker_stack: Stack, engine: Any, daemons: list[RunningDaemon]
) -> None:
    stack = docker_stack
    stack.cli("apply")
    app = writer(engine, stack)
    try:
        document = stack.document()
        document["drain"] = {"containers": [app.name]}
        document["daemon"] = {
            "resync": "2s",
            "backoff_max": "4s",
            "verify_new_sets": False,
            "metrics_port": free_port(),
        }
        stack.write(document)
        daemon = RunningDaemon(stack)
        daemons.append(daemon)
        # apply took the stack's first set, so no backup is due: wait for the daemon's first pass
        daemon.wait_for(
            "the daemon's first pass", lambda: (stack.status().get("daemon") or {}).get("lastPass")
        )
        daemon.wait_for("the writer's rows", lambda: ticks(stack) > 20)
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=240) == 0, daemon.output()
        app.reload()
        assert app.status != "running", "the app still writes after the daemon's final backup"
        app.stop(timeout=0)
        acknowledged = ticks(stack)  # every write acknowledged before the drain
        final = [n for n in local_sets(stack) if n.endswith("-shutdown")]
        assert len(final) == 1 and final[0] == local_sets(stack)[-1], local_sets(stack)
        assert "FinalBackup" in daemon.reasons()

        reboot(engine, stack)
        stack.cli("apply")
        assert ticks(stack) == acknowledged
        # The drained app stays down through the reboot; the next daemon starts it once in sync.
        app.reload()
        assert app.status != "running"
        again = RunningDaemon(stack)
        daemons.append(again)
        again.wait_event("AppsResumed")
        again.wait_for("the app writing again", lambda: ticks(stack) > acknowledged)
    finally:
        app.remove(force=True)


def test_without_any_set_unmarked_data_is_kept_and_the_first_backup_adopts_it(
    docker_stack: Stack, engine: Any
) -> None:
    stack = docker_stack
    stack.cli("apply")
    for taken in (stack.dir / "data" / "backups").iterdir():  # a stack that never had a set (apply's first)
        taken.unlink()
    legacy_containers(engine, stack)
    reboot(engine, stack)  # no set exists: the entrypoint's database is the only data there is
    served_databases(stack)
    stack.cli("apply")  # kept and served (nothing better exists), not set aside
    assert not [p for p in stack.ram_root.iterdir() if ".unclaimed-" in p.name]
    seed(stack, 50)
    before = snapshot(stack)
    stack.cli("backup")
    # The backup made the data the reconciler's own: the set does not turn it into "no data".
    assert stack.cli("plan").returncode == 0, stack.cli("plan", check=None).stdout
    assert snapshot(stack) == before


def test_the_shutdown_backup_is_skipped_when_the_apps_cannot_be_drained(
    docker_stack: Stack, daemons: list[RunningDaemon]
) -> None:
    stack = docker_stack
    document = stack.document()
    document["drain"] = {"containers": [f"{document['stack']}-no-such-app"]}
    document["daemon"] = {
        "resync": "2s",
        "backoff_max": "4s",
        "verify_new_sets": False,
        "metrics_port": free_port(),
    }
    stack.write(document)
    daemon = RunningDaemon(stack)
    daemons.append(daemon)
    daemon.wait_event("BackupTaken")
    assert daemon.stop(timeout=240) == 1
    skipped = [e for e in daemon.events() if e["reason"] == "FinalBackupSkipped"]
    assert skipped and "could not be drained" in skipped[0]["message"], daemon.reasons()
    assert not [n for n in local_sets(stack) if n.endswith("-shutdown")]


def test_apps_the_daemon_cannot_start_again_are_a_failure_with_a_code(
    docker_stack: Stack, engine: Any, daemons: list[RunningDaemon]
) -> None:
    """The last shutdown drained an app container that was removed since (`docker compose down`): the
    app stays down, so the report is a failure on every channel, with its code (docs/FAILURES.md)."""
    stack = docker_stack
    stack.edit(daemon={"verify_new_sets": False, "metrics_port": free_port()})
    stack.cli("apply")
    gone = f"{stack.document()['stack']}-app-removed-since"
    (stack.dir / ".reconciler" / "shutdown-drained.json").write_text(json.dumps({"containers": [gone]}))
    daemon = RunningDaemon(stack)
    daemons.append(daemon)
    event = daemon.wait_event("AppsNotResumed")
    assert gone in event["message"] and event.get("code") == "reconcile_error", event
