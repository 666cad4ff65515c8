"""Redis between sets (``backup.continuous.redis_every``): a power cut loses at most one snapshot
interval of Redis, not a backup cadence; a bad snapshot is refused; snapshots never cost a set."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import Stack
from tests.e2e.test_continuous import (
    continuous_stack,
    events_with,
    kill_everything,
    receivers,
    start_streaming,
)
from tests.e2e.test_daemon import RunningDaemon, daemons, local_sets  # noqa: F401 (fixture)
from tests.e2e.test_power_cut import power_cut
from tests.e2e.test_restore_crash import kill_at

pytestmark = pytest.mark.e2e


def snapshot_stack(stack: Stack, **retention: int) -> dict[str, Any]:
    document = continuous_stack(stack)  # takes the first set
    document["backup"]["continuous"]["redis_every"] = "5s"
    if retention:
        document["backup"]["retention"] = retention
    stack.write(document)
    return document


def area(stack: Stack) -> Path:
    return stack.dir / "data" / "backups" / "redis" / stack.document()["stack"]


def counters(stack: Stack) -> list[int]:
    return sorted(int(p.name.split(".")[0]) for p in area(stack).glob("*.rdb.json"))


def sidecar(stack: Stack, counter: int) -> dict[str, Any]:
    return dict(json.loads((area(stack) / f"{counter:012d}.rdb.json").read_text()))


def write_batch(stack: Stack, batch: str, n: int = 1000) -> None:
    client = redis.Redis(port=stack.redis_port)
    with client.pipeline(transaction=False) as pipe:
        for i in range(n):
            pipe.set(f"{batch}:{i}", i)
        pipe.execute()


def batch_present(stack: Stack, batch: str, n: int = 1000) -> bool:
    found = len(redis.Redis(port=stack.redis_port).keys(f"{batch}:*"))
    assert found in (0, n), f"batch {batch} half there ({found} of {n} keys)"
    return found == n


def snapshots_after(daemon: RunningDaemon, count: int) -> int:
    """Wait for ``count`` snapshots taken from now on; the counter of the last. The second one began
    after this call, so it holds everything written before it."""
    start = len(daemon.events())
    event: dict[str, Any] = {}
    for _ in range(count):
        event = daemon.wait_event("RedisSnapshotTaken", after=start)
        start = daemon.events().index(event) + 1
    return int(event["message"].split()[2])


def batch_snapshotted(stack: Stack, daemons: list[RunningDaemon], batch: str) -> tuple[RunningDaemon, int]:  # noqa: F811
    """Start the daemon, write ``batch`` and wait until a snapshot holds it; (daemon, its counter)."""
    daemon = start_streaming(stack, daemons)
    write_batch(stack, batch)
    return daemon, snapshots_after(daemon, 2)


def test_keys_written_after_the_last_set_come_back_from_the_newest_snapshot_after_a_power_cut(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811
) -> None:
    snapshot_stack(stack)
    write_batch(stack, "in-set")
    stack.cli("backup")
    daemon, _ = batch_snapshotted(stack, daemons, "after-set")  # lost on old main (cadence 1h)
    kill_everything(stack, daemon)

    plan = stack.cli("plan", check=2).stdout
    assert "redis: snapshot" in plan and "instead of" in plan, plan
    stack.cli("apply")
    assert batch_present(stack, "in-set") and batch_present(stack, "after-set")
    assert events_with(stack, "RedisSnapshotRestored")
    assert not events_with(stack, "RedisSnapshotRejected")


@pytest.mark.parametrize("damage", ["corrupt", "planted", "renamed"])
def test_a_bad_snapshot_is_refused_reported_and_the_older_one_loaded(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811
    damage: str,
) -> None:
    snapshot_stack(stack)
    daemon, good = batch_snapshotted(stack, daemons, "a")
    write_batch(stack, "b")
    newest = snapshots_after(daemon, 2)  # holds batch b
    kill_everything(stack, daemon)
    later = [c for c in counters(stack) if c > good]
    assert newest in later
    if damage == "corrupt":  # bit rot in every snapshot after the good one
        for counter in later:
            victim = area(stack) / sidecar(stack, counter)["file"]
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0x10
            victim.write_bytes(bytes(data))
        expected, reason = "a", "corrupt"
    elif damage == "planted":  # someone with only the public key makes one that looks newest
        plant(stack, newest + 100, source=good)
        expected, reason = "b", "does not authenticate"
    else:  # an old, genuine snapshot renamed to look newest (replayed out of order)
        for suffix in (".rdb.json", ".rdb.zst.age"):
            os.link(area(stack) / f"{good:012d}{suffix}", area(stack) / f"{newest + 100:012d}{suffix}")
        expected, reason = "b", "another snapshot"

    stack.cli("apply")
    assert batch_present(stack, "a")
    assert batch_present(stack, "b") == (expected == "b")
    rejected = events_with(stack, "RedisSnapshotRejected")
    assert rejected and all(reason in e["message"] for e in rejected), rejected
    assert rejected[0]["code"] == "verify_error"


def plant(stack: Stack, counter: int, source: int) -> None:
    """A snapshot sealed for the stack's public recipient, its sidecar signed with another key."""
    from reconciler.backup import manifest

    document = {k: v for k, v in sidecar(stack, source).items() if k != "mac"}
    document["counter"] = counter
    document["file"] = f"{counter:012d}.rdb.zst.age"
    (area(stack) / document["file"]).write_bytes((area(stack) / f"{source:012d}.rdb.zst.age").read_bytes())
    signed = manifest.sign(document, os.urandom(32))
    (area(stack) / f"{counter:012d}.rdb.json").write_bytes(manifest.encode(signed))


def test_snapshots_never_cost_a_set_and_those_before_the_newest_set_are_pruned(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811
) -> None:
    snapshot_stack(stack, keep_last=3)
    stack.cli("backup")
    sets = local_sets(stack)
    assert len(sets) == 3  # the first set of apply, continuous_stack's and this one
    daemon = start_streaming(stack, daemons)
    snapshots_after(daemon, 5)
    assert len(counters(stack)) <= 3, "at most a few snapshots are kept"
    stack.cli("prune")
    assert local_sets(stack) == sets, "a set was deleted because of snapshots"

    stack.cli("backup")  # a newer set: every snapshot before it is useless
    newest_set = local_sets(stack)[-1]
    snapshots_after(daemon, 1)
    remaining = counters(stack)
    assert remaining and all(sidecar(stack, c)["after_set"] == newest_set for c in remaining), [
        sidecar(stack, c)["after_set"] for c in remaining
    ]
    assert newest_set in local_sets(stack)


@pytest.mark.parametrize("point", ["restore.boot.redis.rdb", "restore.boot.redis.start"])
def test_a_restore_on_boot_killed_after_loading_a_snapshot_is_redone_by_the_next_apply(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811
    point: str,
) -> None:
    snapshot_stack(stack)
    daemon, _ = batch_snapshotted(stack, daemons, "after-set")
    kill_everything(stack, daemon)

    kill_at(stack, point, "apply")
    stack.cli("apply")
    assert batch_present(stack, "after-set")
    history = [json.loads(p.read_text()) for p in (stack.dir / ".reconciler" / "journal-history").iterdir()]
    assert sorted(h["status"] for h in history) == ["done", "rolled-back"]
    stack.cli("plan", check=0)


@pytest.mark.parametrize(
    ("point", "committed"), [("restore.backup-after.before", True), ("restore.stage-redis.before", False)]
)
def test_a_deliberate_restore_supersedes_the_snapshots_taken_before_it_unless_rolled_back(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811
    point: str,
    committed: bool,
) -> None:
    """The Redis data the user chose to discard must not come back from a snapshot at the next boot,
    even when the machine goes down before the post-restore set is taken; a restore rolled back
    before its point of no return leaves the snapshots as they were."""
    snapshot_stack(stack)
    chosen = local_sets(stack)[-1]
    daemon, _ = batch_snapshotted(stack, daemons, "kept-unless-restored")  # taken after the chosen set
    for pid in [daemon.process.pid, *receivers(stack)]:  # no shutdown backup: the daemon just dies
        os.kill(pid, signal.SIGKILL)
    daemon.process.wait()

    kill_at(stack, point, "restore", chosen, "--yes", "--no-safety-backup")
    power_cut(stack)
    stack.cli("apply")
    assert batch_present(stack, "kept-unless-restored") == (not committed)
    assert bool(events_with(stack, "RedisSnapshotRestored")) == (not committed)


def drive_snapshots(emulator: Any) -> list[str]:
    """Names of the Redis snapshot files on the emulated Drive, wherever they are."""
    return sorted(m["name"] for m in emulator.state.files.values() if ".rdb." in m["name"])


def test_off_site_placement_keeps_redis_snapshots_on_drive_and_writes_none_locally(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811
    emulator: Any,
) -> None:
    from tests.e2e.test_wal_offsite import offsite_stack

    _, document = offsite_stack(stack, emulator)  # offsite needs the Drive store from the start
    document["backup"]["continuous"]["redis_every"] = "5s"
    stack.write(document)
    daemon, _ = batch_snapshotted(stack, daemons, "after-set")
    kill_everything(stack, daemon)
    assert not area(stack).exists(), "off-site placement wrote Redis snapshots to persistent storage"
    on_drive = drive_snapshots(emulator)
    assert any(n.endswith(".rdb.json") for n in on_drive) and any(n.endswith(".age") for n in on_drive)

    stack.cli("apply")
    assert batch_present(stack, "after-set")
    assert events_with(stack, "RedisSnapshotRestored")
    assert not list((stack.ram_root / ".redis-snapshots").iterdir()), "the RAM staging was not emptied"
