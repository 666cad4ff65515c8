"""A checkout in a private directory (mode 0700, like /root) works, or is refused with what to change.

README command 1 is run by root from wherever the checkout lives; ``/root`` is mode 0700, so the
``postgres`` and ``redis`` users cannot reach anything below it. The run directories (sockets, pid
files, logs) must then live where they can reach them, and a data directory below it is refused with
a message that says what to change.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from reconciler.runtimes.local import LocalRuntime
from tests.conftest import RAM_BASE, TEST_BASE, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def private_stack(servers_installed: None) -> Iterator[Stack]:
    """Like ``stack``, but the state file lives in a directory that only root can enter."""
    TEST_BASE.mkdir(mode=0o755, exist_ok=True)
    RAM_BASE.mkdir(mode=0o755, exist_ok=True)
    home = TEST_BASE / f"home-{uuid.uuid4().hex[:8]}"
    home.mkdir(mode=0o700)
    os.chmod(home, 0o700)
    checkout = home / "checkout"
    checkout.mkdir(mode=0o755)
    created = Stack(checkout, RAM_BASE / home.name)
    try:
        yield created
    finally:
        created.teardown()
        shutil.rmtree(home, ignore_errors=True)


def test_a_stack_in_a_0700_directory_comes_up_and_serves(private_stack: Stack) -> None:
    stack = private_stack
    assert os.geteuid() == 0, "this test is about what a root user sees; run the suite as root"
    assert stat.S_IMODE(os.stat(stack.dir.parent).st_mode) == 0o700
    document = stack.default_document("ram")
    stack.write(document)
    stack.cli("apply")
    stack.cli("plan", check=0)

    runtime = LocalRuntime(document["stack"], str(stack.dir / ".reconciler"))
    for service in ("postgres", "redis"):
        run_dir = Path(runtime.run_dir(service))
        assert not run_dir.is_relative_to(stack.dir.parent), run_dir  # reachable by the service user
        assert Path(runtime.log_file(service)).stat().st_size > 0
    with psycopg.connect(
        host=runtime.socket_dir("postgres"), port=stack.pg_port, user="postgres", dbname="app_db"
    ) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("app_db",)
    assert redis.Redis(port=stack.redis_port).ping()

    stack.cli("backup")
    stack.cli("down")
    stack.cli("apply")
    assert redis.Redis(port=stack.redis_port).ping()

    # Data directories are never moved behind the user's back: disk mode below /root is refused.
    stack.edit(mode="disk")
    plan = stack.cli("plan", check=1)
    assert "cannot reach" in plan.stdout + plan.stderr and "o+x" in plan.stdout + plan.stderr
