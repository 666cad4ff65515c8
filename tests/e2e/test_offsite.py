"""Off-site copies through the CLI: a real stack, the real Drive client, the Drive emulator."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Stack
from tests.e2e.test_power_cut import power_cut
from tests.integration.test_backups import seed, snapshot, with_keys
from tests.integration.test_gdrive import authorized_user_file
from tests.support.gdrive_emulator import DriveEmulator

pytestmark = pytest.mark.e2e


def offsite_stack(stack: Stack, emulator: DriveEmulator, **gdrive: Any) -> str:
    folder = emulator.make_folder()
    recipient = with_keys(stack)
    credentials = authorized_user_file(stack.dir / "keys" / "gdrive.json", emulator)
    document = stack.default_document("ram")
    document["backup"] = {
        "encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"},
        "stores": {
            "gdrive": {
                "enabled": True,
                "folder_id": folder,
                "credentials_file": credentials,
                "api_url": emulator.url,
                "chunk_size": "256KiB",
                **gdrive,
            }
        },
    }
    stack.write(document)
    stack.cli("apply")
    return folder


def listing(stack: Stack) -> list[dict[str, Any]]:
    return list(json.loads(stack.cli("backups", "-o", "json").stdout)["sets"])


def test_backups_go_off_site_and_the_listing_says_where(stack: Stack, emulator: DriveEmulator) -> None:
    folder = offsite_stack(stack, emulator)
    seed(stack, 200)
    stack.cli("backup")
    entry = listing(stack)[0]
    names = [n for n in emulator.names_in(folder) if n.startswith(entry["name"] + ".")]
    suffixes = sorted(n.split(".", 1)[1] for n in names)
    assert suffixes == ["manifest.json", "postgres.pgdump.zst.age", "redis.rdb.zst.age"]
    assert entry["stores"] == ["local", "gdrive"]
    local = (stack.dir / "data" / "backups" / f"{entry['name']}.manifest.json").read_bytes()
    assert emulator.content(folder, f"{entry['name']}.manifest.json") == local


def test_a_crash_between_member_uploads_leaves_an_incomplete_set_the_next_sync_completes(
    stack: Stack, emulator: DriveEmulator
) -> None:
    folder = offsite_stack(stack, emulator)
    seed(stack, 200)
    stack.cli("backup", env={"RECONCILER_FAILPOINTS": "gdrive.between-members=kill"}, check=None)
    on_drive = emulator.names_in(folder)
    name = on_drive[0].split(".")[0]  # sync goes oldest first: apply's first set is the one cut short
    assert on_drive and not any(n.endswith(".manifest.json") for n in on_drive), "the manifest must go last"
    assert [e["stores"] for e in listing(stack) if e["name"] == name] == [["local"]]
    received = emulator.state.bytes_received
    stack.cli("sync")
    assert f"{name}.manifest.json" in emulator.names_in(folder)
    first_member = (stack.dir / "data" / "backups" / on_drive[0]).stat().st_size
    assert (
        emulator.state.bytes_received - received
        < sum(p.stat().st_size for p in (stack.dir / "data" / "backups").glob(f"{name}.*"))
        - first_member
        + 64 * 1024
    ), "members already on Drive are not sent again"


def test_with_every_local_set_gone_a_power_cut_restores_from_drive(
    stack: Stack, emulator: DriveEmulator
) -> None:
    offsite_stack(stack, emulator)
    seed(stack, 700)
    stack.cli("backup")
    expected = snapshot(stack)
    power_cut(stack)
    for path in (stack.dir / "data" / "backups").iterdir():
        path.unlink()
    plan = stack.cli("plan", check=2).stdout
    assert "(gdrive store)" in plan
    stack.cli("apply")
    assert snapshot(stack) == expected
    restore = stack.status()["lastRestore"]
    assert (restore["store"], restore["rejected"]) == ("gdrive", []), "no local set existed to restore"


def test_a_corrupt_local_copy_is_replaced_by_the_good_drive_copy_of_the_same_set(
    stack: Stack, emulator: DriveEmulator
) -> None:
    """Flipped bytes of the same size in the newest local set: its Drive copy is downloaded and
    restored, instead of checking the corrupt local file again and falling back to an older set."""
    folder = offsite_stack(stack, emulator)
    seed(stack, 300)
    stack.cli("backup", "--trigger", "older")
    seed(stack, 300)
    stack.cli("backup", "--trigger", "newer")
    expected = snapshot(stack)
    newest = listing(stack)[0]
    assert newest["stores"] == ["local", "gdrive"] and newest["name"].endswith("-newer")
    member = next((stack.dir / "data" / "backups").glob(f"{newest['name']}.postgres.*"))
    data = bytearray(member.read_bytes())
    data[len(data) // 2] ^= 0x01
    member.write_bytes(bytes(data))
    assert emulator.content(folder, member.name) != bytes(data), "the Drive copy is intact"
    power_cut(stack)

    stack.cli("apply")
    assert snapshot(stack) == expected
    restore = stack.status()["lastRestore"]
    assert (restore["set"], restore["store"]) == (newest["name"], "gdrive")
    assert [(r["set"], r["store"]) for r in restore["rejected"]] == [(newest["name"], "local")]
    assert member.read_bytes() == emulator.content(folder, member.name), "the local copy was repaired"


def test_a_drive_outage_keeps_the_backup_local_and_the_next_sync_catches_up(
    stack: Stack, emulator: DriveEmulator
) -> None:
    folder = offsite_stack(stack, emulator)
    seed(stack, 100)
    emulator.inject("any", status=503, reason="backendError", times=10_000)
    result = stack.cli("backup")  # the local set is written; only the upload failed
    assert "upload to Google Drive failed" in result.stderr
    assert local_sets(stack) == 2  # apply's first set and this one
    assert not any(n.endswith(".manifest.json") for n in emulator.names_in(folder)), (
        "nothing complete on Drive"
    )
    emulator.state.faults.clear()
    stack.cli("sync")
    assert any(n.endswith(".manifest.json") for n in emulator.names_in(folder))


def local_sets(stack: Stack) -> int:
    return len(list((stack.dir / "data" / "backups").glob("*.manifest.json")))


def test_nothing_on_drive_is_deleted_because_it_is_missing_locally(
    stack: Stack, emulator: DriveEmulator
) -> None:
    folder = offsite_stack(stack, emulator)
    seed(stack, 50)
    stack.cli("backup", "--trigger", "one")
    stack.cli("backup", "--trigger", "two")
    for path in (stack.dir / "data" / "backups").glob("*-one.*"):
        path.unlink()
    stack.cli("sync")
    assert sum(n.endswith(".manifest.json") for n in emulator.names_in(folder)) == 3  # with apply's first
