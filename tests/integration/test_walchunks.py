"""The segment in progress on Drive as delta chunks (engine/walchunks), against a real server and the
Drive emulator: fewer uplink bytes than whole re-uploads, nothing when idle, and a bad or missing
chunk ends the rebuilt segment at the last good one, saying so."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import pytest

from reconciler.backup import walseg, walspool
from reconciler.backup.create import Sealing
from reconciler.engine import walchunks, waloffsite
from reconciler.errors import ReconcilerError
from tests.conftest import Stack
from tests.e2e.test_wal_offsite import corrupt_on_drive
from tests.integration.test_backups import pg
from tests.integration.test_continuous_wal import wait_for
from tests.integration.test_wal_offsite import drive_area_on, drive_stack, streaming
from tests.support.gdrive_emulator import DriveEmulator

pytestmark = pytest.mark.integration

SEGMENT = "000000010000000000000003"


def received_everything(stack: Stack) -> None:
    """Wait until pg_receivewal wrote all WAL the server has (its status reports every second)."""
    with pg(stack, "postgres") as conn:
        current = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]

        def caught_up() -> bool:
            row = conn.execute(
                "SELECT write_lsn >= %s::pg_lsn FROM pg_stat_replication WHERE application_name = "
                "'pg_receivewal'",
                (current,),
            ).fetchone()
            return bool(row and row[0])

        wait_for(caught_up, "pg_receivewal to receive the writes")


def write_batch(stack: Stack, first: int) -> None:
    """A steady writer's interval: 100 small transactions."""
    with pg(stack) as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE IF NOT EXISTS t (n int, body text)")
        for n in range(first, first + 100):
            conn.execute("INSERT INTO t VALUES (%s, repeat('x', 100))", (n,))


def test_chunks_upload_fewer_bytes_than_whole_re_uploads_and_nothing_when_idle(
    stack: Stack, emulator: DriveEmulator
) -> None:
    drive_stack(stack, emulator, "offsite")
    document = stack.document()
    document["backup"]["continuous"]["interval"] = "1h"  # the test ships the segment in progress itself
    stack.write(document)
    _, supervisor, _ = streaming(stack)
    try:
        streamer = supervisor.streamer
        assert streamer is not None
        shipper = wait_for(lambda: streamer.shipper, "the shipper")
        whole = dataclasses.replace(shipper, whole_partials=True, chunks=None)
        uplink = {"chunks": 0, "whole": 0}
        for interval in range(6):  # the same intervals, shipped both ways
            write_batch(stack, interval * 100)
            received_everything(stack)
            for mode, ship in (("whole", whole.ship_partial), ("chunks", shipper.ship_partial)):
                before = emulator.state.bytes_received
                assert ship() is not None
                uplink[mode] += emulator.state.bytes_received - before
        assert 0 < uplink["chunks"] < uplink["whole"] / 2, uplink

        # idle: the received file does not change, and nothing goes up (the old code re-uploaded it)
        receive = Path(streamer.directory)
        deadline = time.monotonic() + 60
        while True:
            partial = max(receive.glob("*.partial"))
            seen = hashlib.sha256(partial.read_bytes()).digest()
            before, requests = emulator.state.bytes_received, len(emulator.state.requests)
            for _ in range(3):
                shipper.ship_partial()
            if hashlib.sha256(partial.read_bytes()).digest() == seen:
                break  # a window without WAL from the server's own background records
            assert time.monotonic() < deadline, "the server never stayed idle"
        assert emulator.state.bytes_received == before, "an idle database uploaded WAL"
        assert emulator.state.requests[requests:] == [], "an idle database called Drive"
    finally:
        supervisor.stop()


def grow(path: Path, data: bytes) -> None:
    """pg_receivewal's view: the segment file with ``data`` received, zero-filled, a new mtime."""
    path.write_bytes(data + bytes(walspool.SEGMENT_BYTES - len(data)))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def shipped_in_three_chunks(
    tmp_path: Path, emulator: DriveEmulator
) -> tuple[waloffsite.DriveArea, walspool.Binding, bytes, bytes, list[str]]:
    area = drive_area_on(tmp_path, emulator)
    key = os.urandom(32)
    chunker = walchunks.DriveSpooler.on(area, Sealing(None, [], key), "s", "1")
    received = tmp_path / f"{SEGMENT}.partial"
    data = b""
    for part in range(3):
        data += os.urandom(3000) + bytes([part + 1]) * 5000  # every page non-zero
        grow(received, data)
        assert chunker.follow(str(received), SEGMENT) > 0
    names = sorted(f.name for f in area.list() if f.name.endswith(".walchunk"))
    assert len(names) == 3, names
    return area, walspool.Binding("s", "1", SEGMENT), key, data, names


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_bad_or_missing_chunk_on_drive_ends_the_segment_at_the_last_good_one(
    tmp_path: Path, emulator: DriveEmulator, damage: str
) -> None:
    area, binding, key, data, names = shipped_in_three_chunks(tmp_path, emulator)
    good = walchunks.read(area, names, binding, key, None)
    assert good.problem is None and b"".join(good.raw) == data
    if damage == "corrupt":
        corrupt_on_drive(emulator, names[1])
    else:
        area.list()
        area.delete(names[1])
    listed = {f.name for f in area.list()}
    found = walchunks.read(area, listed, binding, key, None)
    first_end = walchunks.parse(names[0])
    assert first_end is not None
    assert found.end == first_end[2] and b"".join(found.raw) == data[: first_end[2]]
    note = found.note(SEGMENT)
    assert note is not None and f"stop at WAL byte {first_end[2]}" in note, note
    assert ("does not authenticate" if damage == "corrupt" else "is missing") in note, note
    target = tmp_path / "rebuilt"
    walchunks.stage(area, listed, binding, key, None, str(target))
    rebuilt = target.read_bytes()
    assert rebuilt == data[: first_end[2]] + bytes(walspool.SEGMENT_BYTES - first_end[2]), "zero-padded"


def test_a_whole_partial_of_the_previous_version_is_used_when_it_holds_more(
    tmp_path: Path, emulator: DriveEmulator
) -> None:
    area, binding, key, data, _ = shipped_in_three_chunks(tmp_path, emulator)
    longer = tmp_path / "older-version"
    grow(longer, data + os.urandom(4000))
    walseg.ship(area, str(longer), SEGMENT, Sealing(None, [], key), "s", "1", partial=True)
    target = tmp_path / "rebuilt"
    walchunks.stage(area, {f.name for f in area.list()}, binding, key, None, str(target))
    assert target.read_bytes() == longer.read_bytes()
    # and the chunks win when they hold more than the whole copy
    grow(longer, data[:100])
    walseg.ship(area, str(longer), SEGMENT, Sealing(None, [], key), "s", "1", partial=True)
    walchunks.stage(area, {f.name for f in area.list()}, binding, key, None, str(target))
    assert target.read_bytes() == data + bytes(walspool.SEGMENT_BYTES - len(data))


def test_an_outage_ships_every_unacknowledged_byte_next_time_and_a_restart_continues_from_drive(
    tmp_path: Path, emulator: DriveEmulator
) -> None:
    area, binding, key, data, _ = shipped_in_three_chunks(tmp_path, emulator)
    sealing = Sealing(None, [], key)
    received = tmp_path / f"{SEGMENT}.partial"
    # a restart: the position is re-derived from Drive's listing, nothing is shipped twice
    chunker = walchunks.DriveSpooler.on(area, sealing, "s", "1")
    area.store.attempts = waloffsite.STREAM_ATTEMPTS  # as the streaming shipper's: short retries
    emulator.inject("any", status=503, reason="backendError", times=10_000_000)
    grown = data
    for _ in range(2):  # two shipments during the outage: neither is acknowledged
        grown += os.urandom(2000)
        grow(received, grown)
        with pytest.raises(ReconcilerError):
            chunker.follow(str(received), SEGMENT)
    emulator.state.faults.clear()  # Drive is back: one chunk carries both intervals' bytes
    assert chunker.follow(str(received), SEGMENT) > 0
    listed = {f.name for f in area.list()}
    after = sorted(n for n in listed if n.endswith(".walchunk"))
    assert len(after) == 4 and after[-1] == walchunks.name(SEGMENT, len(data), len(grown)), after
    assert b"".join(walchunks.read(area, listed, binding, key, None).raw) == grown
    # the segment completes and is shipped whole: its chunk files go
    chunker.shipped(SEGMENT)
    assert not [f.name for f in area.list() if f.name.endswith(".walchunk")]
