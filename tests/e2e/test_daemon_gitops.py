"""GitOps means commit, not save: in a git repository the daemon follows state.yaml as committed at
HEAD; an edit that is only saved is reported (once) and not applied; `plan` says the file differs from
the commit; the commit is what gets applied, and status names it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.e2e.test_daemon import RunningDaemon, daemon_stack, daemons, start

pytestmark = pytest.mark.e2e
__all__ = ["daemons"]  # the fixture, shared with test_daemon.py


def git(directory: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(directory), "-c", "user.name=test", "-c", "user.email=test@example.org", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_the_daemon_follows_the_commit_not_the_saved_file(stack: Stack, daemons: list[RunningDaemon]) -> None:
    daemon_stack(stack)
    git(stack.dir, "init", "-q")
    git(stack.dir, "add", "state.yaml")
    git(stack.dir, "commit", "-qm", "ram mode")
    first = git(stack.dir, "rev-parse", "HEAD")
    daemon = start(stack, daemons)
    assert stack.status()["lastAppliedRevision"] == first

    mark = len(daemon.events())
    stack.edit(mode="disk")  # saved, not committed
    noted = daemon.wait_event("UncommittedEdit", after=mark)
    assert first[:12] in noted["message"]
    # The pass that noticed the edit applied nothing: the committed spec is still in force.
    assert "Reconciling" not in daemon.reasons()[mark:]
    assert stack.status()["services"]["postgres"]["data_dir"] == str(stack.ram_root / "postgres")
    plan = stack.cli("plan", check=2)
    assert "not committed" in plan.stderr and "switch postgres and redis from ram to disk" in plan.stdout

    mark = len(daemon.events())
    git(stack.dir, "commit", "-qam", "disk mode")
    second = git(stack.dir, "rev-parse", "HEAD")
    adopted = daemon.wait_event("SpecChanged", after=mark)
    assert second[:12] in adopted["message"]
    daemon.wait_event("Converged", after=mark, timeout=180)
    status = stack.status()
    assert status["mode"] == "disk" and status["lastAppliedRevision"] == second, status
    assert "not committed" not in stack.cli("plan", check=0).stderr
    assert daemon.stop() == 0
