"""Continuous WAL on Google Drive end to end: a machine that lost its RAM and its disk recovers from
Drive to within one interval; a bad segment on Drive stops recovery honestly."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
from typing import Any

import pytest

from tests.conftest import Stack
from tests.e2e.test_continuous import (
    Writer,
    events_with,
    kill_everything,
    rows,
    rows_around_a_moment,
    start_streaming,
)
from tests.e2e.test_daemon import RunningDaemon, daemon_stack, daemons  # noqa: F401 (fixture)
from tests.integration.test_backups import pg, with_keys
from tests.integration.test_wal_offsite import drive_segments, gdrive_store, segment_files_on_disk
from tests.support.gdrive_emulator import DriveEmulator

pytestmark = pytest.mark.e2e

INTERVAL = 2.0


def offsite_stack(stack: Stack, emulator: DriveEmulator) -> tuple[str, dict[str, Any]]:
    """A RAM-mode stack streaming WAL to Drive only, with a table and a set (on Drive too)."""
    folder = emulator.make_folder()
    recipient = with_keys(stack)
    document = daemon_stack(stack)
    document["backup"] = {
        "cadence": "1h",
        "encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"},
        "stores": {"gdrive": gdrive_store(stack, emulator, folder)},
        "continuous": {"enabled": True, "placement": "offsite", "interval": f"{INTERVAL:.0f}s"},
    }
    stack.write(document)
    stack.cli("apply")
    with pg(stack) as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE numbers (n bigint PRIMARY KEY)")
    stack.cli("backup")
    return folder, document


def system_identifier(stack: Stack) -> str:
    with pg(stack, "postgres") as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_an_off_site_power_cut_that_takes_the_disk_too_recovers_base_and_wal_from_drive(
    stack: Stack,
    emulator: DriveEmulator,
    daemons: list[RunningDaemon],  # noqa: F811
    seed: int,
) -> None:
    offsite_stack(stack, emulator)
    daemon = start_streaming(stack, daemons)
    writer = Writer(stack)
    writer.start()
    time.sleep(random.Random(seed).uniform(4.0, 7.0))  # the random moment of the cut (not a synchronisation)
    cut = time.monotonic()
    kill_everything(stack, daemon)  # the RAM is gone: the receive directory with it
    writer.stop.set()
    writer.join(10)
    assert len(writer.acknowledged) > 100
    assert segment_files_on_disk(stack) == [], "off-site placement wrote WAL to persistent storage"
    shutil.rmtree(stack.dir / "data" / "backups")  # and the disk: only Drive is left

    drive_names = sorted(m["name"] for m in emulator.state.files.values() if ".wal" in m["name"])
    plan = stack.cli("plan", check=2).stdout
    assert "WAL segment(s)" in plan and "from the store on Google Drive" in plan, plan
    # the segment in progress went up as delta chunks, not as whole re-uploads (engine/walchunks)
    assert "as chunks" in plan and not [n for n in drive_names if ".partial." in n], (plan, drive_names)
    stack.cli("apply")
    log = [(e["reason"], e["message"]) for e in events_with_any(stack)]
    present = rows(stack)
    assert present == list(range(1, len(present) + 1)), "a gap: rows lost in the middle"
    assert len(present) <= writer.attempted, "rows that were never written"
    # the segment in progress is shipped every interval, checked on the supervisor's half-second tick
    bound = INTERVAL + 1.0 + 1.0  # interval + tick + the time one shipment takes on a loaded machine
    safe = [n for n, at in writer.acknowledged.items() if at <= cut - bound]
    assert safe and max(safe) <= len(present), (
        f"acknowledged {bound} s before the cut but lost: {log} {drive_names} {plan}"
    )
    folders = [m for m in emulator.state.files.values() if m["name"] == "wal"]
    assert len(folders) == 1, "two WAL folders on Drive: one of them is never read"
    recovered = events_with(stack, "PhysicalRecovery")
    assert recovered and "Google Drive" in recovered[-1]["message"], recovered


def events_with_any(stack: Stack) -> list[dict[str, Any]]:
    import json

    path = stack.dir / ".reconciler" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def corrupt_on_drive(emulator: DriveEmulator, name: str) -> None:
    """Flip a byte of a file stored on the emulator (its md5 follows: Drive holds what it was given)."""
    meta = next(m for m in emulator.state.files.values() if m["name"] == name)
    path = emulator.state.blob(meta["id"])
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    data[len(data) // 2] ^= 0x10
    with open(path, "wb") as handle:
        handle.write(bytes(data))
    meta["md5Checksum"] = hashlib.md5(bytes(data)).hexdigest()


def plant_on_drive(stack: Stack, segment: str, sysid: str) -> None:
    """Someone who knows only the public recipient replaces the segment on Drive with WAL of their own."""
    from reconciler.backup import keys, walseg
    from reconciler.backup.create import Sealing
    from reconciler.engine import waloffsite
    from reconciler.engine.context import load_spec

    recipient = stack.document()["backup"]["encryption"]["recipients"][0]
    forged = stack.ram_root / "forged"
    forged.write_bytes(os.urandom(16 * 1024 * 1024))
    sealing = Sealing(keys.parse_recipients([recipient]), [recipient], os.urandom(32))
    area = waloffsite.drive_area(load_spec(str(stack.state_file)), sysid)
    walseg.ship(area, str(forged), segment, sealing, stack.document()["stack"], sysid)


@pytest.mark.parametrize(("damage", "reason"), [("corrupt", "corrupt"), ("planted", "another identity")])
def test_a_bad_segment_on_drive_stops_recovery_at_the_last_consistent_point(
    stack: Stack,
    emulator: DriveEmulator,
    daemons: list[RunningDaemon],  # noqa: F811
    damage: str,
    reason: str,
) -> None:
    folder, _ = offsite_stack(stack, emulator)
    daemon = start_streaming(stack, daemons)
    sysid = system_identifier(stack)
    segments = []
    with pg(stack) as conn:
        for first in (1, 101, 201, 301):
            conn.execute(
                "INSERT INTO numbers SELECT generate_series(%s::bigint, %s::bigint)", (first, first + 99)
            )
            segments.append(str(conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]))  # type: ignore[index]
            conn.execute("SELECT pg_switch_wal()")
    daemon.wait_for(
        "the batches' segments on Drive",
        lambda: set(segments) <= set(drive_segments(emulator, folder, sysid)),
    )
    if damage == "corrupt":
        corrupt_on_drive(emulator, f"{segments[2]}.wal.zst.age")  # the segment holding rows 201-300
    else:
        plant_on_drive(stack, segments[2], sysid)
    kill_everything(stack, daemon)

    stack.cli("apply")
    assert rows(stack) == list(range(1, 201))  # up to the last consistent point, nothing after the gap
    gap = events_with(stack, "WalGap")
    assert gap and segments[2] in gap[-1]["message"] and reason in gap[-1]["message"], gap


def test_restore_to_a_time_with_the_local_store_lost_reads_the_set_and_wal_from_drive(
    stack: Stack,
    emulator: DriveEmulator,
    daemons: list[RunningDaemon],  # noqa: F811
) -> None:
    offsite_stack(stack, emulator)
    daemon = start_streaming(stack, daemons)
    chosen = rows_around_a_moment(stack)
    assert daemon.stop() == 0  # ships what it streamed (the segment in progress too) on the way out
    shutil.rmtree(stack.dir / "data" / "backups")  # the disk's sets and WAL are gone; Drive remains

    result = stack.cli("restore", "--to", chosen.isoformat(), "--yes")
    assert "restored PostgreSQL to" in result.stdout
    assert rows(stack) == list(range(1, 51))
