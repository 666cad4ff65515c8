"""Reboot with empty RAM: the stack comes back from its newest good backup, never empty by accident."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from typing import Any

import pytest

from tests.conftest import Stack
from tests.integration.test_backups import encrypted_stack, member_file, seed, sets, snapshot

pytestmark = pytest.mark.e2e


def power_cut(stack: Stack) -> None:
    """Every process of the stack dies at once and the tmpfs comes back empty, as after a reboot."""
    pids = []
    postmaster = stack.ram_root / "postgres" / "postmaster.pid"
    if postmaster.exists():
        pids.append(int(postmaster.read_text().split()[0]))
    redis_pid = stack.dir / ".reconciler" / "run" / "redis" / "redis.pid"
    if redis_pid.exists():
        pids.append(int(redis_pid.read_text().split()[0]))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for entry in stack.ram_root.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def status(stack: Stack) -> dict[str, Any]:
    return stack.status()


def test_power_cut_brings_the_data_back_from_the_newest_set(stack: Stack) -> None:
    encrypted_stack(stack)
    seed(stack, 1500)
    stack.cli("backup")
    expected = snapshot(stack)
    power_cut(stack)

    plan = stack.cli("plan", check=2).stdout
    assert "restore postgres and redis from backup set" in plan and "EMPTY" not in plan
    stack.cli("apply")
    assert snapshot(stack) == expected
    stack.cli("plan", check=0)
    document = status(stack)
    assert document["lastRestore"]["set"] == sets(stack)[0]["name"]
    assert document["lastRestore"]["rejected"] == []
    assert "last restore" in stack.cli("status").stdout


def test_a_corrupt_newest_set_falls_back_to_the_previous_one(stack: Stack) -> None:
    encrypted_stack(stack)
    seed(stack, 800)
    stack.cli("backup", "--trigger", "first")
    at_first = snapshot(stack)
    seed(stack, 300)
    stack.cli("backup", "--trigger", "second")
    newest = sets(stack)[0]["name"]
    assert newest.endswith("-second")
    path = member_file(stack, newest, "postgres")
    blob = bytearray(path.read_bytes())
    blob[100] ^= 0xFF
    path.write_bytes(bytes(blob))
    power_cut(stack)

    stack.cli("apply")
    assert snapshot(stack) == at_first
    restore = status(stack)["lastRestore"]
    assert restore["set"].endswith("-first")
    assert [(r["set"], "sha256" in r["reason"]) for r in restore["rejected"]] == [(newest, True)]
    # the rejected copy is not offered again, not even by the next boot's restore
    power_cut(stack)
    planned = json.loads(stack.cli("plan", "-o", "json", check=2).stdout)
    restores = [a for a in planned["actions"] if a["kind"] == "RestoreFromBackup"]
    assert len(restores) == 1
    offered = [name for _, name in restores[0]["candidates"]]
    assert offered and offered[0].endswith("-first") and newest not in offered


def test_with_every_set_corrupt_the_stack_stays_down_until_a_human_allows_empty(stack: Stack) -> None:
    encrypted_stack(stack, keep_last=1, keep_hourly=0, keep_daily=0, keep_weekly=0, keep_monthly=0)
    seed(stack, 100)
    stack.cli("backup", "--trigger", "one")
    stack.cli("backup", "--trigger", "two")
    originals = [s["name"] for s in sets(stack)]
    for name in originals:
        path = member_file(stack, name, "postgres")
        path.write_bytes(path.read_bytes()[:-500])
    power_cut(stack)

    failed = stack.cli("apply", check=1)
    for name in originals:
        assert name in failed.stderr
    assert "stay down instead of starting empty" in failed.stderr
    services = status(stack)["services"]
    assert not services["postgres"]["running"] and not services["redis"]["running"]
    assert not any((stack.ram_root / "postgres").glob("PG_VERSION"))
    blocked = stack.cli("plan", check=1)
    assert "--allow-empty" in blocked.stdout and all(name in blocked.stdout for name in originals)
    stalled = {c["type"]: c for c in status(stack)["conditions"]}["Stalled"]
    assert stalled["status"] == "True"

    stack.cli("apply", "--allow-empty")
    assert status(stack)["services"]["postgres"]["running"]
    # backups of the empty database must never rotate the real (if damaged) sets away
    for trigger in ("empty-a", "empty-b", "empty-c"):
        stack.cli("backup", "--trigger", trigger)
    stack.cli("apply")
    remaining = {s["name"] for s in sets(stack)}
    assert set(originals) <= remaining
    records = json.loads((stack.dir / ".reconciler" / "backups.json").read_text())
    assert set(originals) <= set(records["protected"])
