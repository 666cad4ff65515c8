"""Docker Engine failures end a command with their cause, and never end the daemon.

Real failures against the real engine: DOCKER_HOST at a unix socket nobody listens on, a foreign
container taking the service's container name between observation and creation (a failpoint runs
`docker create` at that moment, and the engine answers 409 Conflict itself), the service's port held
by another process, an image tag removed while its container still exists (the recreate asks the
engine for an image it no longer has).
"""

from __future__ import annotations

import socket
import subprocess
from typing import Any

from tests.conftest import Stack
from tests.e2e.test_daemon import RunningDaemon, daemons  # noqa: F401 (fixture)
from tests.integration.test_docker_runtime import REDIS_IMAGE, docker_stack, engine, inspect  # noqa: F401


def assert_clear(result: subprocess.CompletedProcess[str], *causes: str) -> None:
    """Exit 1 (error, documented in README), the cause named, no traceback, no 'internal error'."""
    assert result.returncode == 1, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    for cause in causes:
        assert cause in result.stderr, result.stderr


def foreign_container_at_create(stack: Stack) -> dict[str, str]:
    """Once: a container of someone else's takes the name the reconciler is about to create."""
    flag = stack.dir / "foreign-created"
    command = (
        f'[ -e {flag} ] || {{ touch {flag}; docker create --name "$FAILPOINT_CONTAINER" '
        "--network none reconciler/app:1 sleep infinity >/dev/null; }"
    )
    return {"RECONCILER_FAILPOINTS": f"docker.create=sh:{command}"}


def test_engine_failures_end_plan_and_apply_with_their_cause(docker_stack: Stack, engine: Any) -> None:  # noqa: F811
    stack = docker_stack
    name = stack.document()["stack"]

    # An engine socket nobody listens on (dockerd died and left its socket behind).
    dead = stack.dir / "dead-docker.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(dead))
    for command in ("plan", "apply", "status"):
        result = stack.cli(command, check=None, env={"DOCKER_HOST": f"unix://{dead}"})
        assert_clear(result, "does not answer", "is dockerd running")

    # A foreign container takes the name between observation and creation: the engine refuses (409).
    conflict = stack.cli("apply", check=None, env=foreign_container_at_create(stack))
    assert_clear(conflict, "is already taken by another container", "docker rm")
    holder = engine.containers.get(f"{name}-postgres")
    assert holder.attrs["Config"]["Image"] == "reconciler/app:1"  # theirs, untouched
    plan = stack.cli("plan", check=1)  # and now observed as a container that is not ours
    assert "refusing to guess" in plan.stdout + plan.stderr
    holder.remove(force=True)
    stack.cli("apply")

    # Another process took Redis's port while its container was gone.
    engine.containers.get(f"{name}-redis").remove(force=True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack.redis_port))
        squatter.listen()
        taken = stack.cli("apply", check=None)
    assert_clear(taken, f"could not listen on port {stack.redis_port}", "taken by another process")
    stack.cli("apply")


def test_recreating_a_container_whose_image_was_removed_names_the_image(
    docker_stack: Stack,  # noqa: F811
    engine: Any,  # noqa: F811
) -> None:
    stack = docker_stack
    name = stack.document()["stack"]
    stack.cli("apply")
    # Someone recreated redis by hand (RAM_MODE=false) from a tag that was removed since: repairing the
    # drift recreates the container from its own configuration, and the engine has no such image.
    tag = f"reconciler-test/{name}:gone"
    engine.images.get(REDIS_IMAGE).tag(tag)
    engine.containers.get(f"{name}-redis").remove(force=True)
    engine.containers.run(
        tag,
        ["redis-server", "--port", str(stack.redis_port), "--bind", "127.0.0.1"],
        name=f"{name}-redis",
        detach=True,
        network_mode="host",
        environment={"RAM_MODE": "false"},
        volumes={str(stack.ram_root / "redis"): {"bind": "/data", "mode": "rw"}},
    )
    engine.images.remove(tag, force=True)  # untags only: the container still runs from the image's id
    missing = stack.cli("apply", check=None)
    assert_clear(missing, f"image {tag} is not present", "docker pull")
    assert inspect(engine, f"{name}-redis")["Config"]["Image"] == tag  # the old one is put back, not lost


def test_the_daemon_survives_an_engine_refusal_and_converges_once_it_is_resolved(
    docker_stack: Stack,  # noqa: F811
    engine: Any,  # noqa: F811
    daemons: list[RunningDaemon],  # noqa: F811
) -> None:
    stack = docker_stack
    name = stack.document()["stack"]
    stack.edit(daemon={"resync": "2s", "backoff_max": "4s", "verify_new_sets": False, "metrics_port": None})
    daemon = RunningDaemon(stack, env=foreign_container_at_create(stack))
    daemons.append(daemon)

    def refused() -> dict[str, Any] | None:
        return next(
            (e for e in daemon.events() if "is already taken by another container" in e["message"]), None
        )

    event = daemon.wait_for("the name conflict reported as an event", refused)
    assert event["type"] == "Warning" and "internal error" not in event["message"]
    engine.containers.get(f"{name}-postgres").remove(force=True)  # a human resolves it
    daemon.wait_for("the stack to converge", lambda: stack.status()["in_sync"])
    assert daemon.process.poll() is None
    assert daemon.stop() == 0
