"""A service container renamed by hand (``docker rename``) while its server runs, on the docker runtime.

The runtime finds a service's container by its name. A renamed one is not found, yet its server still
runs on the data directory and answers on the shared socket directory. ``apply`` used to create a
second container on the same data directory, call it started within a second (the readiness check was
answered by the old server through the socket) and report the stack in sync: two servers on one data
directory, and status telling something else than the truth. It must refuse, name the container, and
change nothing; renamed back, the stack converges with its data intact.
"""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.integration.test_backups import seed, snapshot
from tests.integration.test_mariadb import containers, mariadb_content, mixed_stack, seed_mariadb

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("service", ["mariadb", "postgres"])
def test_a_container_renamed_by_hand_is_never_joined_by_a_second_server_on_its_data(
    stack: Stack, service: str
) -> None:
    mixed_stack(stack, runtime="docker")
    seed(stack, 50)
    seed_mariadb(stack, 100)
    expected = (snapshot(stack), mariadb_content(stack))
    name = f"{stack.document()['stack']}-{service}"
    (original,) = [c for c in containers(stack) if c.name == name]
    original.rename(f"{name}-by-hand")

    result = stack.cli("apply", check=1)

    assert f"container {name}-by-hand is running" in result.stderr, result.stderr[-2000:]
    data_dir = str(stack.ram_root / service)
    on_data = [
        c.name for c in containers(stack) if any(m.get("Source") == data_dir for m in c.attrs["Mounts"])
    ]
    assert on_data == [f"{name}-by-hand"], f"a second container on {data_dir}: {on_data}"
    original.reload()
    assert original.status == "running"

    original.rename(name)
    stack.cli("apply")
    stack.cli("plan", check=0)
    assert (snapshot(stack), mariadb_content(stack)) == expected


def test_an_application_container_sharing_the_socket_directory_does_not_block_the_server(
    stack: Stack,
) -> None:
    """An app that mounts the server's socket directory to connect over the socket is not a server: the
    server's container, removed by hand, is created again beside it."""
    import docker

    mixed_stack(stack, runtime="docker")
    seed_mariadb(stack, 50)
    expected = mariadb_content(stack)
    name = f"{stack.document()['stack']}-mariadb"
    client = docker.from_env()
    client.containers.get(name).remove(force=True)
    app = client.containers.run(
        "reconciler/app:1",
        ["sleep", "600"],
        name=f"{stack.document()['stack']}-app-on-socket",
        volumes={str(stack.dir / ".reconciler" / "run" / "mariadb"): {"bind": "/run/mysqld", "mode": "rw"}},
        detach=True,
    )
    try:
        stack.cli("apply")
        stack.cli("plan", check=0)
        assert mariadb_content(stack) == expected
    finally:
        app.remove(force=True)
