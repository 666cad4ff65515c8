"""The mode switch under fire: SIGKILL at every step boundary and mid-step, in both directions.

Every time: a plain `reconciler apply` afterwards converges to the desired mode, the data equals the
original (row counts and checksums of every table, every Redis key), and no backup set was lost.
Also the failures that must roll back: a full disk during the copy, PostgreSQL refusing to start on
the new data directory, and a pre-switch backup that fails.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import psycopg
import pytest
import redis

from reconciler.databases.postgres import table_stats
from reconciler.plan.actions import SWITCH_STEPS
from tests.conftest import Stack

pytestmark = pytest.mark.e2e

KILL_POINTS = [
    "switch.preflight.before",
    *[f"switch.{name}.after" for name, _ in SWITCH_STEPS],
    "backup.between-members",  # in the middle of the pre-switch backup
    "copy.halfway",  # in the middle of copying a data directory
    "switch.copy.between-services",  # postgres copied, redis not yet
]


def prepare(stack: Stack, mode: str) -> dict[str, Any]:
    stack.write(stack.default_document(mode))
    stack.cli("apply")
    with psycopg.connect(**stack.pg_conninfo("app_db"), autocommit=True) as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric)")
        conn.execute(
            "INSERT INTO accounts SELECT g, 'ünïcödé ✓ ' || g, g * 1.5 FROM generate_series(1, 20000) g"
        )
        conn.execute("CREATE TABLE events (id bigserial, payload jsonb)")
        conn.execute(
            "INSERT INTO events (payload) SELECT jsonb_build_object('n', g) FROM generate_series(1, 5000) g"
        )
    client = redis.Redis(port=stack.redis_port)
    for i in range(300):
        client.set(f"session:{i}", os.urandom(32))
    client.rpush("queue", *[f"job-{i}" for i in range(100)])
    stack.cli("backup", "--trigger", "before-test")
    return fingerprint(stack)


def fingerprint(stack: Stack) -> dict[str, Any]:
    with psycopg.connect(**stack.pg_conninfo("app_db")) as conn:
        tables = table_stats(conn)
    client = redis.Redis(port=stack.redis_port)
    return {"tables": tables, "redis": {k: client.dump(k) for k in sorted(client.scan_iter())}}


def set_names(stack: Stack) -> set[str]:
    return {s["name"] for s in json.loads(stack.cli("backups", "-o", "json").stdout)["sets"] if s["complete"]}


def assert_converged(stack: Stack, mode: str, original: dict[str, Any], sets_before: set[str]) -> None:
    status = stack.status()
    for name in ("postgres", "redis"):
        service = status["services"][name]
        expected_dir = str(stack.ram_root / name) if mode == "ram" else str(stack.dir / "data" / name)
        assert service["running"] and service["data_dir"] == expected_dir, (name, service)
        assert service["on_tmpfs"] == (mode == "ram")
    assert fingerprint(stack) == original
    assert sets_before <= set_names(stack), "a backup set was lost"
    stack.cli("plan", check=0)
    assert not (stack.dir / ".reconciler" / "journal.json").exists()


@pytest.mark.parametrize("point", KILL_POINTS)
@pytest.mark.parametrize("direction", [("ram", "disk"), ("disk", "ram")], ids=["ram-to-disk", "disk-to-ram"])
def test_killed_at_any_point_the_next_apply_converges_with_the_same_data(
    stack: Stack, direction: tuple[str, str], point: str
) -> None:
    start, goal = direction
    original = prepare(stack, start)
    sets_before = set_names(stack)
    stack.edit(mode=goal)
    killed = stack.cli("apply", check=None, env={"RECONCILER_FAILPOINTS": f"{point}=kill"})
    assert killed.returncode == -9, f"the failpoint {point} was not reached:\n{killed.stderr[-2000:]}"
    if point != "switch.preflight.before" and not point.startswith("switch.backup-after"):
        plan = stack.cli("plan", check=2).stdout
        assert "resume the interrupted mode switch" in plan or "No changes" in plan
    stack.cli("apply")
    assert_converged(stack, goal, original, sets_before)


def test_a_state_file_changed_mid_switch_waits_for_the_safe_point(stack: Stack) -> None:
    original = prepare(stack, "ram")
    stack.edit(mode="disk")
    stack.cli("apply", check=None, env={"RECONCILER_FAILPOINTS": "switch.copy.after=kill"})
    stack.edit(mode="ram")  # the user changes their mind while the switch is half done
    plan = stack.cli("plan", check=2).stdout
    assert "resume the interrupted mode switch" in plan and "planned after it" in plan
    stack.cli("apply")  # finishes the switch to disk, then obeys state.yaml: back to ram
    assert_converged(stack, "ram", original, set())
    history = list((stack.dir / ".reconciler" / "journal-history").iterdir())
    statuses = sorted(json.loads(p.read_text())["status"] for p in history)
    assert statuses == ["done", "done"]


def _rolled_back(stack: Stack, original: dict[str, Any], result: subprocess.CompletedProcess[str]) -> None:
    assert "rolled back" in result.stderr
    assert_converged_in_ram = stack.status()["services"]
    for name in ("postgres", "redis"):
        assert assert_converged_in_ram[name]["running"] and assert_converged_in_ram[name]["on_tmpfs"]
    assert fingerprint(stack) == original
    history = [json.loads(p.read_text()) for p in (stack.dir / ".reconciler" / "journal-history").iterdir()]
    assert [h["status"] for h in history] == ["rolled-back"]


def test_disk_full_during_the_copy_rolls_back(stack: Stack) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs as the disk and needs root (CI runs as root)")
    original = prepare(stack, "ram")
    disk = stack.dir / "data"  # the "disk" is an 8 MiB filesystem: the backups fit, the data does not
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        stack.edit(mode="disk")
        result = stack.cli("apply", check=1)
        assert "failed at step precopy" in result.stderr and "No space left on device" in result.stderr
        stack.edit(mode="ram")
        _rolled_back(stack, original, result)
        assert sorted(os.listdir(disk)) == ["backups"], "the partial copy is removed"
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_postgres_refusing_to_start_on_the_new_directory_rolls_back(stack: Stack) -> None:
    original = prepare(stack, "ram")
    target = stack.dir / "data" / "postgres"
    stack.edit(mode="disk")
    breakage = f"sh:echo \"shared_buffers = 'plenty'\" >> {target}/postgresql.auto.conf"
    result = stack.cli("apply", check=1, env={"RECONCILER_FAILPOINTS": f"switch.start.before={breakage}"})
    assert "postgres did not start" in result.stderr
    stack.edit(mode="ram")
    _rolled_back(stack, original, result)
    assert not target.exists()


def test_a_failing_pre_switch_backup_moves_nothing(stack: Stack) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs as the backup store and needs root (CI runs as root)")
    original = prepare(stack, "ram")
    store = stack.dir / "data" / "backups"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(store)], check=True)
    try:
        stack.edit(mode="disk")
        result = stack.cli("apply", check=1)
        assert "failed at step backup" in result.stderr and "full" in result.stderr
        stack.edit(mode="ram")
        _rolled_back(stack, original, result)
        assert not (stack.dir / "data" / "postgres").exists()
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


@pytest.mark.parametrize("point", ["switch.fingerprint.after", "switch.stop.after", "copy.halfway"])
def test_ram_lost_in_the_middle_of_a_switch_to_disk_is_restored_from_the_pre_switch_set(
    stack: Stack, point: str
) -> None:
    from tests.e2e.test_power_cut import power_cut

    original = prepare(stack, "ram")
    stack.edit(mode="disk")
    killed = stack.cli("apply", check=None, env={"RECONCILER_FAILPOINTS": f"{point}=kill"})
    assert killed.returncode == -9
    power_cut(stack)  # the machine reboots: every process gone, RAM empty
    stack.cli("apply")
    assert_converged(stack, "disk", original, set())
    history = [json.loads(p.read_text()) for p in (stack.dir / ".reconciler" / "journal-history").iterdir()]
    assert sorted((h["kind"], h["status"]) for h in history) == [
        ("mode switch", "abandoned"),
        ("restore on boot", "done"),
    ]
    assert stack.status()["lastRestore"]["set"].endswith("-pre-switch")
