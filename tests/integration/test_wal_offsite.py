"""Continuous WAL on Google Drive (engine/waloffsite) against a real server and the Drive emulator."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from reconciler.backup import walseg
from reconciler.engine import events, wal
from reconciler.engine.context import StackContext, load_spec
from reconciler.plan import walchain
from tests.conftest import Stack
from tests.integration.test_backups import pg, with_keys
from tests.integration.test_continuous_wal import DIAGNOSIS, slot_active, system_identifier, wait_for
from tests.integration.test_gdrive import authorized_user_file
from tests.support.gdrive_emulator import FOLDER, DriveEmulator

pytestmark = pytest.mark.integration


def drive_stack(stack: Stack, emulator: DriveEmulator, placement: str, **backup: Any) -> str:
    """A RAM-mode stack with continuous WAL and the gdrive store on the emulator; returns the folder."""
    folder = emulator.make_folder()
    recipient = with_keys(stack)
    document = stack.default_document("ram")
    document["backup"] = {
        "encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"},
        "stores": {"gdrive": gdrive_store(stack, emulator, folder)},
        "continuous": {
            "enabled": True,
            "placement": placement,
            "spool_dir": "./data/spool",
            "interval": "1s",
        },
        **backup,
    }
    document["daemon"] = {"verify_new_sets": False}
    stack.write(document)
    stack.cli("apply")
    return folder


def gdrive_store(stack: Stack, emulator: DriveEmulator, folder: str) -> dict[str, Any]:
    return {
        "enabled": True,
        "folder_id": folder,
        "credentials_file": authorized_user_file(stack.dir / "keys" / "gdrive.json", emulator),
        "api_url": emulator.url,
        "chunk_size": "256KiB",
    }


def drive_wal(emulator: DriveEmulator, folder: str, sysid: str) -> list[str]:
    """Names in ``<folder>/wal/<sysid>`` on the emulator (empty when the folders do not exist)."""
    files = emulator.state.files.values()
    wal_folders = [m["id"] for m in files if m["name"] == "wal" and folder in m["parents"]]
    clusters = [
        m["id"]
        for m in files
        if m["name"] == sysid and m.get("mimeType") == FOLDER and set(m["parents"]) & set(wal_folders)
    ]
    return sorted(n for c in clusters for n in emulator.names_in(c))


def drive_segments(emulator: DriveEmulator, folder: str, sysid: str) -> list[str]:
    """Complete segments on Drive that have their sidecar."""
    return sorted(
        n.removesuffix(".wal.json")
        for n in drive_wal(emulator, folder, sysid)
        if walchain.is_segment(n.removesuffix(".wal.json")) and n.endswith(".wal.json")
    )


def streaming(stack: Stack) -> tuple[StackContext, wal.WalSupervisor, str]:
    ctx = StackContext.build(load_spec(str(stack.state_file)), str(stack.state_file))
    supervisor = wal.WalSupervisor()
    DIAGNOSIS[:] = [supervisor]
    supervisor.follow(ctx, ctx.observe())
    wait_for(lambda: slot_active(stack), "the replication slot to be streamed")
    return ctx, supervisor, system_identifier(stack)


def switch_segments(stack: Stack, count: int) -> list[str]:
    """Write into ``count`` segments and complete each; returns their names."""
    names = []
    with pg(stack) as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE IF NOT EXISTS t (n int)")
        for _ in range(count):
            conn.execute("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
            names.append(str(conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]))  # type: ignore[index]
            conn.execute("RESET ROLE")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("SET ROLE app")
    return names


def segment_files_on_disk(stack: Stack) -> list[str]:
    """Every file under the stack's (persistent) directory that holds WAL: a segment name, raw or sealed."""
    found = []
    for root, _, files in os.walk(stack.dir):
        found += [os.path.join(root, f) for f in files if walchain.is_segment(f[:24])]
    return found


def test_offsite_ships_every_segment_to_drive_and_nothing_to_persistent_storage(
    stack: Stack, emulator: DriveEmulator
) -> None:
    folder = drive_stack(stack, emulator, "offsite")
    ctx, supervisor, sysid = streaming(stack)
    try:
        names = switch_segments(stack, 3)
        wait_for(lambda: set(names) <= set(drive_segments(emulator, folder, sysid)), "segments on Drive")
        with pg(stack) as conn:
            conn.execute("INSERT INTO t VALUES (0)")  # into the segment in progress
        wait_for(
            lambda: any(n.endswith(".walchunk") for n in drive_wal(emulator, folder, sysid)),
            "the segment in progress on Drive",
        )
        receive = Path(ctx.spec.ram_root) / "wal-receive" / sysid
        assert not [p for p in receive.iterdir() if walchain.is_segment(p.name)], "acknowledged, still in RAM"
        assert not (stack.dir / "data" / "backups" / "wal").exists(), "WAL went to the local store"
        assert segment_files_on_disk(stack) == [], "WAL on persistent storage"
        # what is on Drive authenticates and replays: a whole chain, checked like a local one
        from reconciler.engine import waloffsite

        area = waloffsite.drive_area(ctx.spec, sysid)
        complete, partial = walseg.listing(area)
        assert walchain.chain(names[0], complete, partial).gap is None
        from reconciler.backup.create import identity_for_restore
        from reconciler.backup.keys import mac_key

        identity = identity_for_restore(ctx.spec)
        assert identity is not None
        target = Path(ctx.spec.ram_root) / "fetched"
        walseg.fetch(area, names[1], str(target), identity, mac_key(identity), ctx.spec.stack, sysid)
        assert target.stat().st_size == 16 * 1024 * 1024
    finally:
        supervisor.stop()


def test_a_drive_outage_keeps_segments_in_ram_and_ships_them_when_drive_is_back(
    stack: Stack, emulator: DriveEmulator
) -> None:
    folder = drive_stack(stack, emulator, "offsite")
    ctx, supervisor, sysid = streaming(stack)
    receive = Path(ctx.spec.ram_root) / "wal-receive" / sysid
    try:
        emulator.inject("any", status=503, reason="backendError", times=10_000_000)
        names = switch_segments(stack, 3)
        waiting = wait_for(
            lambda: set(names) <= {p.name for p in receive.iterdir()} and names, "the segments kept in RAM"
        )
        behind = wait_for(
            lambda: [e for e in events.read(ctx.state_dir) if e["reason"] == "WalOffsiteBehind"], "the event"
        )
        assert behind[0]["code"] == "upload_error" and "recovery point grows" in behind[0]["message"]
        assert not set(names) & set(drive_segments(emulator, folder, sysid))
        shown = json.loads(stack.cli("status", "-o", "json").stdout)["walOffsite"]
        assert shown["state"] == "behind" and shown["code"] == "upload_error", shown
        assert "the recovery point grows" in stack.cli("status").stdout
        emulator.state.faults.clear()  # Drive is back
        wait_for(lambda: set(waiting) <= set(drive_segments(emulator, folder, sysid)), "shipped later")
        wait_for(lambda: not set(waiting) & {p.name for p in receive.iterdir()}, "RAM freed after the ack")
        complete = drive_segments(emulator, folder, sysid)
        assert walchain.chain(names[0], complete).gap is None, "a segment was lost in the outage"
        assert any(e["reason"] == "WalOffsiteCaughtUp" for e in events.read(ctx.state_dir))
        assert json.loads(stack.cli("status", "-o", "json").stdout)["walOffsite"]["state"] == "caught_up"
    finally:
        supervisor.stop()


def test_the_spool_sync_sends_wal_after_the_sets_and_drive_retention_keeps_chains(
    stack: Stack, emulator: DriveEmulator
) -> None:
    folder = drive_stack(stack, emulator, "spool", retention={"keep_last": 1})
    stack.cli("backup")
    ctx, supervisor, sysid = streaming(stack)
    try:
        names = switch_segments(stack, 3)
        local = wal.store_area(ctx.spec, sysid)
        wait_for(lambda: set(names) <= set(walseg.listing(local)[0]), "segments in the local store")
        stack.cli("sync")
        on_drive = drive_segments(emulator, folder, sysid)
        assert set(names) <= set(on_drive), "the sync did not copy the spool's segments to Drive"
        stack.cli("backup")  # a new base; keep_last 1 makes the older sets and their WAL unneeded
        newest = sorted((stack.dir / "data" / "backups").glob("*.manifest.json"))[-1]
        members = json.loads(newest.read_text())["members"]
        start = next(m["start_segment"] for m in members if m["content"] == "pg_basebackup-tar")
        wait_for(lambda: start in walseg.listing(local)[0], "the new base's first segment shipped")
        from reconciler.engine import walchunks, waloffsite

        # chunk files of an unneeded segment (a failed clean-up, a cluster given up): retention's too
        stale = walchunks.name(names[0], 0, 100)
        waloffsite.drive_area(ctx.spec, sysid).put_bytes(stale, b"chunk")
        stack.cli("sync")
        assert stale not in drive_wal(emulator, folder, sysid), "unneeded chunk files stay on Drive"
        manifests = sorted(n for n in emulator.names_in(folder) if n.endswith(".manifest.json"))
        assert manifests == [newest.name]
        after = drive_segments(emulator, folder, sysid)
        assert after and min(after) >= start, "a segment the kept base does not need is still on Drive"
        assert {s for s in on_drive if s >= start} <= set(after), "a segment the kept base needs was deleted"
        assert {s for s in on_drive if s < start}, "the test must make some segments unneeded"
    finally:
        supervisor.stop()


def test_a_cut_between_a_partial_and_its_sidecar_leaves_the_older_consistent_pair(
    tmp_path: Path, emulator: DriveEmulator
) -> None:
    from reconciler.backup.create import Sealing

    area = drive_area_on(tmp_path, emulator)
    segment, key = "000000010000000000000003", os.urandom(32)
    sealing = Sealing(None, [], key)
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(b"first" * 1000)
    new.write_bytes(b"second" * 1000)
    walseg.ship(area, str(old), segment, sealing, "s", "1", partial=True)
    # the next shipment is cut after its data reached Drive, before its sidecar did
    data_name = f"{segment}.partial.wal.zst"
    area.put_with(data_name, lambda out: out.write(walseg_bytes(new)))
    assert len(area.store.ids_named(data_name)) == 2
    out = tmp_path / "fetched"
    walseg.fetch(area, segment, str(out), None, key, "s", "1", partial=True)
    assert out.read_bytes() == old.read_bytes(), "the older consistent pair"
    # the next complete shipment commits and leaves one copy of each
    walseg.ship(area, str(new), segment, sealing, "s", "1", partial=True)
    assert len(area.store.ids_named(data_name)) == 1
    walseg.fetch(area, segment, str(out), None, key, "s", "1", partial=True)
    assert out.read_bytes() == new.read_bytes()


def drive_area_on(tmp_path: Path, emulator: DriveEmulator) -> Any:
    """A WAL area (``waloffsite.DriveArea``) in a fresh folder of the emulator."""
    from reconciler.engine import waloffsite
    from reconciler.spec.model import GdriveStoreSpec
    from reconciler.stores.gdrive import GdriveStore

    folder = emulator.make_folder()
    spec = GdriveStoreSpec(
        enabled=True,
        folder_id=folder,
        credentials_file=authorized_user_file(tmp_path / "gdrive.json", emulator),
        api_url=emulator.url,
        sub_path="wal/1",
    )
    (tmp_path / "scratch").mkdir()
    return waloffsite.DriveArea(GdriveStore(spec, str(spec.credentials_file)), str(tmp_path / "scratch"))


def walseg_bytes(path: Path) -> bytes:
    """What walseg.ship stores for ``path`` without encryption (zstd)."""
    import io

    from reconciler.backup import pipeline

    buffer = io.BytesIO()
    with path.open("rb") as handle:
        pipeline.compress_encrypt(handle, buffer, None)
    return buffer.getvalue()


def test_local_retention_keeps_the_wal_a_drive_set_needs_until_the_sync_uploaded_it(
    stack: Stack, emulator: DriveEmulator
) -> None:
    """Drive keeps more sets than the local store: local retention must not delete WAL between an
    older base only Drive keeps and the next one before the sync copied it (review15)."""
    folder = drive_stack(stack, emulator, "spool", retention={"keep_last": 1})
    document = json.loads(json.dumps(stack.document()))
    document["backup"]["stores"]["gdrive"]["retention"] = {"keep_last": 5}
    stack.write(document)
    stack.cli("apply")
    ctx, supervisor, sysid = streaming(stack)
    try:
        stack.cli("backup")
        first = sorted((stack.dir / "data" / "backups").glob("*.manifest.json"))[-1]
        members = json.loads(first.read_text())["members"]
        start = next(m["start_segment"] for m in members if m["content"] == "pg_basebackup-tar")
        local = wal.store_area(ctx.spec, sysid)
        wait_for(lambda: start in walseg.listing(local)[0], "the base's first segment shipped")
        stack.cli("sync")  # Drive holds the first set and its WAL so far
        names = switch_segments(stack, 3)
        wait_for(lambda: set(names) <= set(walseg.listing(local)[0]), "segments in the local store")
        emulator.inject("any", status=503, reason="backendError", times=10_000_000)
        stack.cli("backup", check=None)  # the set stays local: its upload fails (Drive is down)
        stack.cli("prune")  # local keep_last 1: the first set goes, before any sync copied its WAL
        emulator.state.faults.clear()  # Drive is back
        stack.cli("sync")
    finally:
        supervisor.stop()
    manifests = sorted(n for n in emulator.names_in(folder) if n.endswith(".manifest.json"))
    assert first.name in manifests, "the test needs Drive to keep the set the local store deleted"
    on_drive = drive_segments(emulator, folder, sysid)
    found = walchain.chain(start, on_drive)
    assert set(names) <= set(found.segments), f"Drive's chain from {start} has a gap at {found.gap}"


def test_a_second_sync_reads_no_local_wal_data_drive_already_holds(
    stack: Stack, emulator: DriveEmulator
) -> None:
    """A sync compares Drive's listing (sizes, the sidecars' md5) with the local store: the data of a
    segment Drive holds is never read again (review15: a week of WAL read from the SD card per sync).
    Proof: a local data file rewritten with other bytes of the same size goes unnoticed."""
    folder = drive_stack(stack, emulator, "spool")
    ctx, supervisor, sysid = streaming(stack)
    try:
        names = switch_segments(stack, 2)
        local = wal.store_area(ctx.spec, sysid)
        wait_for(lambda: set(names) <= set(walseg.listing(local)[0]), "segments in the local store")
    finally:
        supervisor.stop()
    from reconciler.engine import waloffsite

    root = str(Path(local.path).parent)
    assert waloffsite.upload_local_wal(ctx.spec, root, 3, 60) > 0
    assert set(names) <= set(drive_segments(emulator, folder, sysid))
    data = next(p for p in Path(local.path).iterdir() if p.name.startswith(f"{names[0]}.wal.zst"))
    data.write_bytes(b"\0" * data.stat().st_size)  # read back, it would differ from Drive's copy
    assert waloffsite.upload_local_wal(ctx.spec, root, 3, 60) == 0, "the second sync read and re-sent WAL"


def test_the_sync_copies_the_timeline_histories_to_drive(stack: Stack, emulator: DriveEmulator) -> None:
    """A recovery from Drive alone must also find the timelines taken before (engine/walhistory)."""
    from reconciler.backup.create import sealing_for
    from reconciler.engine import walhistory, waloffsite

    folder = drive_stack(stack, emulator, "spool")
    ctx = StackContext.build(load_spec(str(stack.state_file)), str(stack.state_file))
    sysid = "7000000000000000001"
    received = stack.ram_root / "received"
    received.mkdir()
    (received / "00000002.history").write_text("1\t0/3000000\tno recovery target specified\n")
    local = wal.store_area(ctx.spec, sysid)
    walhistory.ship_new(local, str(received), sealing_for(ctx.spec), ctx.spec.stack, sysid, set())
    assert walhistory.stored(local) == ["00000002.history"]
    waloffsite.upload_local_wal(ctx.spec, str(Path(local.path).parent), 3, 60)
    assert "00000002.history.wal.json" in drive_wal(emulator, folder, sysid)
    assert walhistory.stored(waloffsite.drive_area(ctx.spec, sysid)) == ["00000002.history"]
