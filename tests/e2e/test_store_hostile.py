"""A hostile or damaged backup store, and a host clock that is behind (issue 12, items 2, 7 and 13).

Through the real CLI, real servers, real age/zstd and the Drive emulator:
- a file planted in the store (and in a shared Drive folder) named like a far-future set, holding
  garbage, makes no real set go, locally nor on Drive, and does not outrank new sets;
- with ``keep_last: 1`` a corrupt newest set does not make the good older set go, and that older set
  is the one a restore brings back;
- with the clock behind the newest set (a Raspberry Pi after a power cut: no real-time clock, no
  network time yet; faked with ``RECONCILER_TEST_CLOCK_OFFSET``, see ``system/clock.py``), the newest
  set is the one restored, and a new set sorts after it and is the one retention keeps;
- verify and Drive sync recording at the same time (daemon and CLI) lose no update.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.e2e.test_offsite import offsite_stack
from tests.e2e.test_power_cut import power_cut
from tests.integration.test_backups import encrypted_stack, member_file, seed, sets, snapshot
from tests.support.gdrive_emulator import DriveEmulator

pytestmark = pytest.mark.e2e

ONLY_LAST = {"keep_last": 1, "keep_hourly": 0, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}


def backups_dir(stack: Stack) -> Path:
    return stack.dir / "data" / "backups"


def manifests(names: list[str]) -> set[str]:
    return {n.removesuffix(".manifest.json") for n in names if n.endswith(".manifest.json")}


def local_sets(stack: Stack) -> set[str]:
    return manifests([p.name for p in backups_dir(stack).iterdir()])


def plant_on_drive(emulator: DriveEmulator, folder: str, name: str, content: bytes) -> None:
    """A file someone else with access to the shared folder put there."""
    file_id = uuid.uuid4().hex[:20]
    Path(emulator.state.blob(file_id)).write_bytes(content)
    emulator.state.files[file_id] = {
        "id": file_id,
        "name": name,
        "mimeType": "application/octet-stream",
        "parents": [folder],
        "createdTime": "2026-01-01T00:00:00.000Z",
        "size": str(len(content)),
        "md5Checksum": hashlib.md5(content).hexdigest(),
    }


def test_a_planted_far_future_set_deletes_no_real_set_locally_nor_on_drive(
    stack: Stack, emulator: DriveEmulator
) -> None:
    folder = offsite_stack(stack, emulator)
    document = stack.document()
    document["backup"]["retention"] = ONLY_LAST
    document["daemon"] = {"verify_new_sets": False}  # count unverified sets: only the planted file differs
    stack.write(document)
    seed(stack, 100)
    stack.cli("backup", "--trigger", "one")
    stack.cli("backup", "--trigger", "two")
    stack.cli("sync")
    real = sets(stack)[0]["name"]
    assert real.endswith("-two") and f"{real}.manifest.json" in emulator.names_in(folder)

    stack_name = document["stack"]
    planted = [f"{stack_name}-20991231T235959Z-x", f"{stack_name}-20991231T235959Z-999999999999-x"]
    for name in planted:
        (backups_dir(stack) / f"{name}.manifest.json").write_bytes(b"garbage\n")
        plant_on_drive(emulator, folder, f"{name}.manifest.json", b"garbage\n")

    assert real not in stack.cli("plan", check=None).stdout  # `apply` would not prune it either
    pruned = stack.cli("prune").stdout
    assert real not in pruned
    assert real in local_sets(stack) and set(planted) <= local_sets(stack)
    stack.cli("sync")
    on_drive = manifests(emulator.names_in(folder))
    assert real in on_drive, f"Drive retention deleted the real set: {sorted(on_drive)}"
    assert set(planted) <= on_drive  # what we cannot vouch for is reported, never deleted

    # a new set sorts after every set we vouch for and after the planted legacy name (a planted
    # sequence cannot push new numbers up: it is listed first, and a restore rejects it first)
    seed(stack, 10)
    stack.cli("backup", "--trigger", "three")
    names = [s["name"] for s in sets(stack)]
    newest = next(name for name in names if name not in planted)
    assert newest.endswith("-three") and names.index(newest) < names.index(planted[0]), names
    stack.cli("prune")
    stack.cli("sync")
    assert newest in local_sets(stack) and newest in manifests(emulator.names_in(folder))
    assert real not in local_sets(stack)  # superseded by a set we vouch for: now it may go


def test_drive_retention_deletes_nothing_while_the_newest_backup_failed(
    stack: Stack, emulator: DriveEmulator
) -> None:
    folder = offsite_stack(stack, emulator)
    stack.edit(daemon={"verify_new_sets": False})
    seed(stack, 50)
    stack.cli("backup", "--trigger", "one")
    stack.cli("backup", "--trigger", "two")
    failed = stack.cli("backup", env={"RECONCILER_FAILPOINTS": "backup.between-members=error"}, check=None)
    assert failed.returncode != 0
    document = stack.document()
    document["backup"]["stores"]["gdrive"]["retention"] = ONLY_LAST
    stack.write(document)
    stack.cli("sync")
    # apply's first set, one and two: nothing goes while the newest backup failed
    assert len(manifests(emulator.names_in(folder))) == 3
    stack.cli("backup", "--trigger", "three")  # a success lifts the hold
    assert len(manifests(emulator.names_in(folder))) == 1


@pytest.mark.parametrize("damage", ["garbage manifest", "truncated member"])
def test_a_corrupt_newest_set_with_keep_last_1_keeps_the_good_older_set(stack: Stack, damage: str) -> None:
    encrypted_stack(stack, **ONLY_LAST)
    stack.edit(daemon={"verify_new_sets": False})
    seed(stack, 300)
    stack.cli("backup", "--trigger", "one")
    seed(stack, 200)
    stack.cli("backup", "--trigger", "good")
    expected = snapshot(stack)
    seed(stack, 50)
    stack.cli("backup", "--trigger", "corrupt")
    _oldest, good, corrupt = (s["name"] for s in reversed(sets(stack)[:3]))  # after apply's first set
    assert corrupt.endswith("-corrupt") and good.endswith("-good")
    if damage == "garbage manifest":
        (backups_dir(stack) / f"{corrupt}.manifest.json").write_bytes(b"\x00not json")
    else:
        path = member_file(stack, corrupt, "postgres")
        path.write_bytes(path.read_bytes()[:-500])

    stack.cli("prune")
    assert local_sets(stack) == {good, corrupt}, "the good older set must survive, the oldest may go"
    power_cut(stack)
    stack.cli("apply")
    assert snapshot(stack) == expected
    assert stack.status()["lastRestore"]["set"] == good


def clock(offset_seconds: int) -> dict[str, str]:
    return {"RECONCILER_TEST_CLOCK_OFFSET": str(offset_seconds)}


def test_with_the_clock_behind_the_newest_set_wins_and_a_new_set_sorts_after_it(stack: Stack) -> None:
    encrypted_stack(stack)
    stack.edit(daemon={"verify_new_sets": False})
    seed(stack, 200)
    stack.cli("backup", "--trigger", "older", env=clock(-86400))  # taken a day "earlier"
    seed(stack, 100)
    stack.cli("backup", "--trigger", "newest")
    expected = snapshot(stack)
    older, newest = (s["name"] for s in reversed(sets(stack)[:2]))  # after apply's first set
    assert newest.endswith("-newest"), (older, newest)

    # power cut; the Pi boots without network time, its clock 12 h behind the newest set
    behind = clock(-12 * 3600)
    power_cut(stack)
    stack.cli("apply", env=behind)
    assert stack.status()["lastRestore"]["set"] == newest, "the newest set must win, whatever the clock"
    assert snapshot(stack) == expected

    # a set taken now is named after the (behind) clock, yet sorts after the newest set
    seed(stack, 10)
    stack.cli("backup", "--trigger", "after-boot", env=behind)
    listed = [s["name"] for s in json.loads(stack.cli("backups", "-o", "json", env=behind).stdout)["sets"]]
    # the apply owed one set: the restored newest set is dated ahead of the clock, so it cannot be aged
    assert listed[0].endswith("-after-boot") and listed[1].endswith("-stale") and listed[2] == newest, listed
    assert listed[0].split("-")[1] < newest.split("-")[1], "named after the clock, ordered by sequence"
    document = stack.document()
    document["backup"]["retention"] = ONLY_LAST
    stack.write(document)
    stack.cli("prune", env=behind)  # keep_last 1 keeps the newest by sequence, not by time
    assert local_sets(stack) == {listed[0]}


WORKER = """
import sys
from reconciler.engine import records
from reconciler.engine.context import StackContext, load_spec

ctx = StackContext.build(load_spec(sys.argv[1]), sys.argv[1])
role, count = sys.argv[2], int(sys.argv[3])
for i in range(count):
    if role != "sync":  # what `verify` records for each set it checks
        records.record_verification(ctx, f"{role}-{i}", {"ok": i % 2 == 0, "reason": "r", "rejects": True})
    else:  # what Drive `sync` records after each run
        records.update(ctx, last_upload={"result": "success", "uploaded": [f"u{i}"]}, remote_sets=[f"r{i}"])
"""


def test_verify_and_sync_recording_at_the_same_time_lose_nothing(stack: Stack) -> None:
    document = stack.default_document("disk")
    stack.write(document)
    count = 150
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(stack.state_file), role, str(count)])
        for role in ("daemon-verify", "sync", "cli-verify")
    ]
    assert [w.wait(timeout=300) for w in workers] == [0, 0, 0]
    recorded: dict[str, Any] = json.loads((stack.dir / ".reconciler" / "backups.json").read_text())
    verifiers = ("daemon-verify", "cli-verify")
    assert sorted(recorded["verified"]) == sorted(f"{v}-{i}" for v in verifiers for i in range(count))
    assert recorded["last_upload"]["uploaded"] == [f"u{count - 1}"]
    assert sorted(recorded["rejected"]) == sorted(
        f"local/{v}-{i}" for v in verifiers for i in range(1, count, 2)
    )
