"""The docker runtime's cheap observation reports the same facts as docker-py and `docker exec` did.

Observation (`plan`, `status`, every daemon pass) reads the Engine API with plain GETs on the socket
(runtimes/engine.py) and asks PostgreSQL through the host's psql on the bind-mounted socket; docker-py
and exec remain for changes and for what the host cannot reach. These tests compare both paths on a
real stack and real engine, and check the cheap path is the one `plan` takes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.integration.test_docker_runtime import docker_stack, engine  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

_PROBE = """
import json, sys
from reconciler.engine.context import StackContext, load_spec
ctx = StackContext.build(load_spec(sys.argv[1]), sys.argv[1])
observed = ctx.observe()
print(json.dumps({
    "docker_imported": "docker" in sys.modules or "requests" in sys.modules,
    "execs": sys.modules["reconciler.runtimes.docker"]._shared.get("client") is not None,
    "running": {n: s.running for n, s in observed.services.items()},
}))
"""


def _stable(observation: Any) -> dict[str, Any]:
    """What an observation says about a service, without figures that move between two reads (sizes)."""
    facts = asdict(observation)
    for key in ("size_bytes",):
        facts.pop(key)
    for location in ("ram", "disk"):
        facts[location].pop("size_bytes")
        facts[location]["filesystem"] = None if facts[location]["filesystem"] is None else "present"
    return facts


def _sorted_mounts(attrs: dict[str, Any]) -> dict[str, Any]:
    """The engine lists a container's mounts in map order, which differs from one request to the next."""
    return {**attrs, "Mounts": sorted(attrs.get("Mounts") or [], key=lambda m: str(m.get("Destination")))}


def test_observation_reads_the_same_facts_as_docker_py_and_exec(
    docker_stack: Stack,  # noqa: F811
    engine: Any,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reconciler.engine.context import StackContext, load_spec
    from reconciler.runtimes.engine import DockerPyReader

    stack = docker_stack
    document = stack.document()
    document["services"]["postgres"]["password_env"] = "APP_DB_PASSWORD"
    stack.write(document)
    stack.env["APP_DB_PASSWORD"] = "s3cret-for-the-role"
    stack.cli("apply")
    monkeypatch.setenv("APP_DB_PASSWORD", "s3cret-for-the-role")
    state = str(stack.state_file)

    fast_ctx = StackContext.build(load_spec(state), state)
    fast = fast_ctx.observe()
    assert fast_ctx.runtime.reader.requests == 3  # one listing, one inspect per service container

    # The old path: docker-py for the Engine API, psql inside the container through exec.
    monkeypatch.setenv("RECONCILER_PG_BINDIR", str(stack.dir / "no-host-psql"))
    slow_ctx = StackContext.build(load_spec(state), state)
    slow_ctx.runtime._reader = DockerPyReader(engine)
    slow = slow_ctx.observe()

    assert set(fast.services) == set(slow.services) == {"postgres", "redis"}
    for name in fast.services:
        assert _stable(fast.services[name]) == _stable(slow.services[name]), name
    pg = fast.services["postgres"]
    assert pg.running and pg.container == f"{document['stack']}-postgres"
    assert pg.databases is not None and "app_db" in pg.databases and pg.roles and "app" in pg.roles
    assert pg.version and pg.size_bytes
    assert pg.role_password == ""  # the stored verifier matches the configured password, on both paths
    assert fast.services["redis"].version == slow.services["redis"].version

    # The documents themselves: what the reader gets is what docker-py gets.
    for name in ("postgres", "redis"):
        container = f"{document['stack']}-{name}"
        assert _sorted_mounts(fast_ctx.runtime.reader.inspect(container)) == _sorted_mounts(
            engine.api.inspect_container(container)
        )
    ours = {c["Id"]: c["Names"] for c in fast_ctx.runtime.reader.containers()}
    theirs = {c["Id"]: c["Names"] for c in engine.api.containers(all=True)}
    assert {k: ours.get(k) for k in theirs} == theirs

    # No socket on the host (a container adopted from Compose without the bind): psql runs in the
    # container, with the same facts.
    monkeypatch.delenv("RECONCILER_PG_BINDIR")
    sockets = Path(fast_ctx.runtime.socket_dir("postgres"))
    hidden = sockets.parent / (sockets.name + ".hidden")
    os.rename(sockets, hidden)  # the bind follows the directory: the container keeps its socket
    try:
        sockets.mkdir()
        adopted = StackContext.build(load_spec(state), state).observe().services["postgres"]
    finally:
        sockets.rmdir()
        os.rename(hidden, sockets)
    assert _stable(adopted) == _stable(pg)


def test_plan_observes_without_docker_py_or_exec(docker_stack: Stack, engine: Any) -> None:  # noqa: F811
    stack = docker_stack
    stack.cli("apply")
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, str(stack.state_file)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **stack.env},
    )
    result = json.loads(probe.stdout)
    assert result["running"] == {"postgres": True, "redis": True}
    assert not result["docker_imported"], "observation imported docker-py/requests"
    assert not result["execs"], "observation ran psql through docker exec although the host has psql"
