"""Restore under fire: SIGKILL at every step boundary of restore on boot and of `reconciler restore`.

Every time, a plain `reconciler apply` afterwards serves the newest good data (never an empty database
reported in sync), leaves no `<db>__restoring` behind, loses no backup set, and what the stack serves
is what the next boot would restore (checked with a second power cut).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
import redis

from tests.conftest import Stack
from tests.e2e.test_power_cut import power_cut
from tests.integration.test_backups import encrypted_stack, seed, sets, snapshot

pytestmark = pytest.mark.e2e

BOOT_KILL_POINTS = [
    "restore.boot.postgres.init",  # just after initdb
    "restore.boot.postgres.start",  # the fresh server is up, empty
    "restore.pg_restore.streamed",  # pg_restore is still loading the side database
    "restore.postgres.before-swap",  # the side database is checked, not swapped in yet
    "restore.boot.redis.rdb",  # postgres restored, redis's RDB written, redis not started
    "restore.boot.done",  # everything restored, the journal not closed yet
]

RESTORE_STEPS = [
    "safety-backup",
    "supersede",
    "stage-postgres",
    "stage-redis",
    "commit-postgres",
    "commit-redis",
]
RESTORE_KILL_POINTS = [
    *[f"restore.{step}.after" for step in RESTORE_STEPS],
    "restore.backup-after.after",
    "backup.between-members",  # in the middle of the pre-restore backup
    "restore.pg_restore.streamed",  # pg_restore is loading the side database
]


def kill_at(stack: Stack, point: str, *args: str) -> None:
    killed = stack.cli(*args, check=None, env={"RECONCILER_FAILPOINTS": f"{point}=kill"})
    assert killed.returncode == -9, f"the failpoint {point} was not reached:\n{killed.stderr[-2000:]}"


def databases(stack: Stack) -> set[str]:
    with psycopg.connect(**stack.pg_conninfo(), autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")}


def set_names(stack: Stack) -> set[str]:
    return {s["name"] for s in sets(stack) if s["complete"]}


def assert_serves(stack: Stack, expected: Any, sets_before: set[str]) -> None:
    """In sync, serving ``expected``, nothing lost, nothing left over; and a reboot brings back the same."""
    stack.cli("plan", check=0)
    assert snapshot(stack) == expected
    assert databases(stack) == {"postgres", "app_db"}, "a side database was left behind"
    assert sets_before <= set_names(stack), "a backup set was lost"
    assert not (stack.dir / ".reconciler" / "journal.json").exists()
    power_cut(stack)
    stack.cli("apply")
    assert snapshot(stack) == expected, "the next boot restores other data than the stack served"


def two_generations(stack: Stack) -> tuple[Any, Any]:
    """An older set and a newer one with different content; returns (older, newer) snapshots."""
    encrypted_stack(stack)
    client = redis.Redis(port=stack.redis_port)
    seed(stack, 3000)
    client.set("generation", "older")  # seed writes the same keys each time: Redis must differ too
    stack.cli("backup", "--trigger", "older")
    older = snapshot(stack)
    seed(stack, 500)
    client.set("generation", "newer")
    stack.cli("backup", "--trigger", "newer")
    return older, snapshot(stack)


@pytest.mark.parametrize("point", BOOT_KILL_POINTS)
def test_restore_on_boot_killed_at_any_point_serves_the_newest_set(stack: Stack, point: str) -> None:
    _, newest = two_generations(stack)
    sets_before = set_names(stack)
    power_cut(stack)
    kill_at(stack, point, "apply")
    plan = stack.cli("plan", check=2).stdout
    assert "No changes" not in plan
    stack.cli("apply")
    assert stack.status()["lastRestore"]["set"].endswith("-newer")
    assert_serves(stack, newest, sets_before)


@pytest.mark.parametrize("point", ["restore.boot.postgres.start", "restore.pg_restore.streamed"])
def test_no_backup_is_taken_of_a_restore_that_did_not_complete(stack: Stack, point: str) -> None:
    """The empty (or half-loaded) database of an interrupted restore is never backed up."""
    _, newest = two_generations(stack)
    sets_before = set_names(stack)
    power_cut(stack)
    kill_at(stack, point, "apply")
    refused = stack.cli("backup", "--trigger", "empty", check=1)
    assert "restore" in refused.stderr and "apply" in refused.stderr
    assert set_names(stack) == sets_before
    # nor does a deliberate restore start on top of it: the interrupted one reaches a safe point first
    other = stack.cli("restore", "--latest", "--yes", check=1)
    assert "run `reconciler apply`" in other.stderr
    stack.cli("apply")
    assert_serves(stack, newest, sets_before)


def kill_while_pg_restore_runs(stack: Stack, *args: str) -> None:
    """SIGKILL the CLI while its pg_restore child runs, with no failpoint (works on any version)."""
    env = {**os.environ, **stack.env}
    env.pop("RECONCILER_STATE", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "-f", str(stack.state_file), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not _child_named(child.pid, "pg_restore"):
            assert child.poll() is None, "the command finished before pg_restore was seen"
            assert time.monotonic() < deadline, "pg_restore never started"
            time.sleep(0.01)  # polling a condition with a deadline, not a synchronising sleep
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()


def test_apply_killed_while_pg_restore_runs_does_not_report_an_empty_database_in_sync(stack: Stack) -> None:
    """Issue 12 item 1 as reported: SIGKILL the apply while pg_restore loads the side database."""
    encrypted_stack(stack)
    seed(stack, 200_000)
    stack.cli("backup")
    expected = snapshot(stack)
    sets_before = set_names(stack)
    power_cut(stack)
    kill_while_pg_restore_runs(stack, "apply")
    assert stack.cli("plan", check=None).returncode == 2, "an interrupted restore was reported in sync"
    stack.cli("backup", "--trigger", "empty", check=1)
    stack.cli("apply")
    assert_serves(stack, expected, sets_before)


def test_restore_killed_while_pg_restore_runs_is_rolled_back_whole(stack: Stack) -> None:
    """Issue 12 item 11 as reported: no mixed state, no `<db>__restoring` left in RAM."""
    encrypted_stack(stack)
    seed(stack, 200_000)
    stack.cli("backup", "--trigger", "older")
    seed(stack, 10)
    stack.cli("backup", "--trigger", "newer")
    newer = snapshot(stack)
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    sets_before = set_names(stack)
    kill_while_pg_restore_runs(stack, "restore", chosen, "--yes")
    stack.cli("apply")
    assert_serves(stack, newer, sets_before)


def _child_named(pid: int, name: str) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as handle:
                comm = handle.read().strip()
        except OSError:
            continue
        if comm == name and int(fields[1]) == pid:
            return True
    return False


@pytest.mark.parametrize("point", RESTORE_KILL_POINTS)
def test_restore_killed_at_any_point_is_completed_or_rolled_back(stack: Stack, point: str) -> None:
    older, newer = two_generations(stack)
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    sets_before = set_names(stack)
    kill_at(stack, point, "restore", chosen, "--yes")
    stack.cli("apply")
    served = snapshot(stack)
    committed = point.startswith(("restore.commit-", "restore.backup-after"))
    assert served == (older if committed else newer), "mixed or unexpected data after the interrupted restore"
    history = [json.loads(p.read_text()) for p in (stack.dir / ".reconciler" / "journal-history").iterdir()]
    assert [h["status"] for h in history] == ["done" if committed else "rolled-back"]
    assert_serves(stack, served, sets_before)


def test_a_deliberate_restore_survives_a_power_cut(stack: Stack) -> None:
    """Issue 12 item 6: the data the user chose to discard must not come back at the next boot."""
    older, _ = two_generations(stack)
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    stack.cli("restore", chosen, "--yes")
    assert snapshot(stack) == older
    power_cut(stack)
    stack.cli("apply")
    assert snapshot(stack) == older
    # the pre-restore set is still there to undo the restore by hand
    assert any(s["trigger"] == "pre-restore" for s in sets(stack))


def test_a_power_cut_after_the_commit_of_a_restore_brings_back_the_chosen_set(stack: Stack) -> None:
    """Killed between the commit and the post-restore backup, then the machine reboots."""
    older, _ = two_generations(stack)
    chosen = next(s["name"] for s in sets(stack) if s["trigger"] == "older")
    kill_at(stack, "restore.commit-redis.after", "restore", chosen, "--yes")
    power_cut(stack)
    stack.cli("apply")
    assert snapshot(stack) == older
    assert stack.status()["lastRestore"]["set"] == chosen
