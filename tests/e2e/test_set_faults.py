"""The daemon and a host fault while verifying: the set is not blamed, and it is verified once the
host is healthy again (it used to be recorded as failed and never tried again)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from tests.conftest import Stack
from tests.e2e.test_daemon import RunningDaemon, daemon_stack, daemons  # noqa: F401 (fixture)
from tests.integration.test_backups import seed

pytestmark = pytest.mark.e2e
HARD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # only root with CAP_SYS_RESOURCE may raise it


class LimitedDaemon(RunningDaemon):
    """``reconciler daemon`` started with a soft RLIMIT_NOFILE too low for a scratch PostgreSQL
    (it needs 58 free descriptors); ``prlimit`` execs the daemon, so the pid is the daemon's."""

    def __init__(self, stack: Stack, nofile: int) -> None:
        self.stack = stack
        self.log = open(stack.dir / "daemon.log", "w")  # noqa: SIM115 (closed in stop)
        env = {**os.environ, **stack.env}
        env.pop("RECONCILER_STATE", None)
        self.process = subprocess.Popen(
            [
                "prlimit",
                f"--nofile={nofile}:{HARD_LIMIT}",
                sys.executable,
                "-m",
                "reconciler",
                "-f",
                str(stack.state_file),
                "daemon",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def test_the_daemon_verifies_again_a_set_a_host_fault_kept_from_verifying(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811 (the fixture)
) -> None:
    daemon_stack(stack, verify_new_sets=True)
    stack.cli("apply")
    seed(stack, 100)
    stack.cli("backup")
    name = json.loads(stack.cli("backups", "-o", "json").stdout)["sets"][0]["name"]

    daemon = LimitedDaemon(stack, nofile=48)
    daemons.append(daemon)
    failed = daemon.wait_event("SetVerificationFailed", timeout=120)
    assert "problem of this host" in failed["message"] and "file descriptors" in failed["message"]
    records = json.loads((stack.dir / ".reconciler" / "backups.json").read_text())
    assert f"local/{name}" not in records.get("rejected", {}), "a host fault must not reject the set"

    # the host is fixed (the daemon gets its descriptors back): the next pass verifies the same set
    subprocess.run(
        ["prlimit", "--pid", str(daemon.process.pid), f"--nofile={HARD_LIMIT}:{HARD_LIMIT}"], check=True
    )
    verified = daemon.wait_event("SetVerified", timeout=120)
    assert name in verified["message"]
    assert daemon.stop() == 0
