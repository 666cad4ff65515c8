"""The mode switch with MariaDB in the stack, under a live writer: no acknowledged write is ever lost.

The writer is an application inserting rows over TCP as the application user (password auth), one
client per write, recording a write only when the server acknowledged its commit. Failpoints make it
try to write in the dangerous windows (between the fingerprint and the stop; while the new copy runs
unverified), as the PostgreSQL tests do. Without the drain (accounts locked, connections killed) a
write acknowledged after the fingerprint fails the verification, or one acknowledged by the
unverified copy is lost by a rollback. Every scenario runs on both runtimes (``runtime``: the local
processes, and the docker runtime's containers from the locally built images).
"""

from __future__ import annotations

import subprocess
import threading
from typing import Any

import pytest

from tests.conftest import Stack
from tests.e2e.test_mode_switch import failpoints
from tests.integration import test_mariadb
from tests.integration.test_mariadb import PASSWORD, mariadb_content, mixed_stack, seed_mariadb, sql
from tests.support.mariadb_client import tcp_statement

pytestmark = pytest.mark.e2e

runtime = test_mariadb.runtime  # the fixture: local and docker


class MariadbWriter:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.acked: list[int] = []
        self.errors: list[str] = []
        self.attempts = stack.dir / "writer-mariadb.attempts"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            result = tcp_statement(
                self.stack.mariadb_port,  # type: ignore[attr-defined]
                "shop",
                "shop",
                PASSWORD,
                f"INSERT INTO writes (id) VALUES ({n});",
            )
            if result.returncode == 0:
                self.acked.append(n)
            else:
                self.errors.append(result.stderr.strip())
                self.stopping.wait(0.02)  # an app's reconnect back-off, not synchronisation
            self.attempts.write_text(str(n))

    def __enter__(self) -> MariadbWriter:
        self.attempts.write_text("0")
        self.thread.start()
        self.wait_for_acks(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)

    def wait_for_acks(self, more: int, timeout: float = 60) -> None:
        import time

        wanted = len(self.acked) + more
        deadline = time.monotonic() + timeout
        while len(self.acked) < wanted:
            assert time.monotonic() < deadline, f"the writer got no acknowledgement: {self.errors[-3:]}"
            self.stopping.wait(0.01)

    def wait_shell(self) -> str:
        path = self.attempts
        return (
            f"sh:n=$(( $(cat {path}) + 2 )); i=0; "
            f"while [ $(cat {path}) -lt $n ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done"
        )

    def assert_every_acknowledged_write_present(self) -> None:
        assert self.acked, "the writer never got an acknowledgement"
        rows = {int(r[0]) for r in sql(self.stack, "SELECT id FROM writes")}
        missing = sorted(set(self.acked) - rows)
        assert not missing, (
            f"acknowledged writes lost: {len(missing)} of {len(self.acked)} (e.g. {missing[:5]})"
        )


def prepared(stack: Stack, runtime: str) -> dict[str, Any]:
    mixed_stack(stack, runtime=runtime)
    seed_mariadb(stack, 3000)
    sql(stack, "CREATE TABLE writes (id INT PRIMARY KEY) ENGINE=InnoDB")
    stack.cli("backup", "--trigger", "before-test")
    return {k: v for k, v in mariadb_content(stack).items() if k != "writes"}


def unchanged(stack: Stack) -> dict[str, Any]:
    return {k: v for k, v in mariadb_content(stack).items() if k != "writes"}


@pytest.mark.parametrize("direction", [("ram", "disk"), ("disk", "ram")], ids=["ram-to-disk", "disk-to-ram"])
def test_a_switch_under_live_writes_keeps_every_acknowledged_mariadb_write(
    stack: Stack, runtime: str, direction: tuple[str, str]
) -> None:
    start, goal = direction
    original = prepared(stack, runtime)
    if start == "disk":
        stack.edit(mode="disk")
        stack.cli("apply")
    with MariadbWriter(stack) as writer:
        stack.edit(mode=goal)
        wait = writer.wait_shell()
        stack.cli("apply", env=failpoints(**{"switch.fingerprint.after": wait, "switch.start.after": wait}))
        writer.wait_for_acks(3)  # the new copy serves the writer again: its account is unlocked
    assert_converged(stack, writer, goal, original)


def assert_converged(stack: Stack, writer: MariadbWriter, goal: str, original: dict[str, Any]) -> None:
    writer.assert_every_acknowledged_write_present()
    status = stack.status()["services"]["mariadb"]
    expected = str(stack.ram_root / "mariadb") if goal == "ram" else str(stack.dir / "data" / "mariadb")
    assert status["running"] and status["data_dir"] == expected
    assert unchanged(stack) == original
    stack.cli("plan", check=0)


@pytest.mark.parametrize("point", ["fingerprint", "copy", "start"])
def test_a_switch_killed_under_live_writes_and_resumed_keeps_every_acknowledged_mariadb_write(
    stack: Stack, runtime: str, point: str
) -> None:
    """SIGKILL after the drain and fingerprint, after the physical copy, after the new copy started: the
    writer keeps trying while nothing runs the switch, and the next apply finishes it without losing an
    acknowledged write (the drain's account lock lives in the data directory, so both copies stay closed)."""
    original = prepared(stack, runtime)
    with MariadbWriter(stack) as writer:
        stack.edit(mode="disk")
        killed = stack.cli("apply", check=None, env=failpoints(**{f"switch.{point}.after": "kill"}))
        assert killed.returncode == -9, killed.stderr[-2000:]
        subprocess.run(writer.wait_shell()[3:], shell=True, check=True)  # it tries meanwhile
        wait = writer.wait_shell()
        stack.cli("apply", env=failpoints(**{"switch.fingerprint.after": wait, "switch.start.after": wait}))
        writer.wait_for_acks(3)
    assert_converged(stack, writer, "disk", original)


@pytest.mark.parametrize("step", ["stop", "start", "verify"])
def test_a_switch_rolled_back_under_live_writes_keeps_every_acknowledged_mariadb_write(
    stack: Stack, runtime: str, step: str
) -> None:
    original = prepared(stack, runtime)
    with MariadbWriter(stack) as writer:
        stack.edit(mode="disk")
        wait = writer.wait_shell()
        points = {
            "switch.fingerprint.after": wait,
            "switch.start.after": wait,
            f"switch.{step}.before": "error",
        }
        result = stack.cli("apply", check=1, env=failpoints(**points))
        assert "rolled back" in result.stderr
        writer.wait_for_acks(3)  # the old copy is open to the writer again
    writer.assert_every_acknowledged_write_present()
    assert unchanged(stack) == original
