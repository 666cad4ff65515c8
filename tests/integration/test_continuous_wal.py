"""Continuous WAL against a real server: pg_receivewal with a slot, segments sealed into the store."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.backup import physical, walseg
from reconciler.backup.create import identity_for_restore, sealing_for
from reconciler.backup.keys import mac_key
from reconciler.engine import wal
from reconciler.engine.context import StackContext, load_spec
from reconciler.plan import walchain
from reconciler.stores.local import LocalStore
from tests.conftest import Stack
from tests.integration.test_backups import pg, with_keys

pytestmark = pytest.mark.integration


def continuous_stack(stack: Stack, placement: str = "spool") -> None:
    recipient = with_keys(stack)
    document = stack.default_document("ram")
    document["backup"] = {
        "encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"},
        "continuous": {
            "enabled": True,
            "placement": placement,
            "spool_dir": "./data/spool",
            "interval": "1s",
        },
    }
    stack.write(document)
    stack.cli("apply")


def wait_for(condition, what: str, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}{diagnosis()}")


DIAGNOSIS: list[wal.WalSupervisor] = []


def diagnosis() -> str:
    streamers = [s.streamer for s in DIAGNOSIS if s.streamer is not None]
    return "".join(f"; streamer error: {s.last_error}" for s in streamers)


def slot_active(stack: Stack) -> bool:
    with pg(stack, "postgres") as conn:
        return conn.execute("SELECT active FROM pg_replication_slots").fetchall() == [(True,)]


def system_identifier(stack: Stack) -> str:
    with pg(stack, "postgres") as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    return str(row[0])


def start_streaming(stack: Stack) -> tuple[StackContext, wal.WalSupervisor, str, LocalStore]:
    """A supervisor streaming the stack's WAL (the daemon's part), once its slot is active."""
    ctx = StackContext.build(load_spec(str(stack.state_file)), str(stack.state_file))
    supervisor = wal.WalSupervisor()
    DIAGNOSIS[:] = [supervisor]
    supervisor.follow(ctx, ctx.observe())
    sysid = system_identifier(stack)
    wait_for(lambda: slot_active(stack), "the replication slot to be streamed")
    return ctx, supervisor, sysid, wal.store_area(ctx.spec, sysid)


def test_segments_are_streamed_sealed_and_checked(stack: Stack) -> None:
    continuous_stack(stack)
    ctx, supervisor, sysid, store = start_streaming(stack)
    try:
        with pg(stack) as conn:
            conn.execute("SET ROLE app")
            conn.execute("CREATE TABLE t (n int)")
            for _ in range(3):
                conn.execute("INSERT INTO t SELECT g FROM generate_series(1, 1000) g")
                conn.execute("RESET ROLE")
                conn.execute("SELECT pg_switch_wal()")
                conn.execute("SET ROLE app")
            conn.execute("INSERT INTO t VALUES (0)")  # the segment in progress
        complete = wait_for(
            lambda: len(walseg.listing(store)[0]) >= 3 and walseg.listing(store)[0], "3 segments"
        )
        with pg(stack, "postgres") as conn:
            slots = conn.execute("SELECT slot_name, active FROM pg_replication_slots").fetchall()
        assert slots == [(physical.slot_name(ctx.spec.stack), True)]
        # the spool keeps only the segment in progress; shipped ones are stored compressed and sealed
        spool = Path(stack.dir / "data" / "spool" / sysid)
        assert [p.name for p in spool.iterdir() if walchain.is_segment(p.name)] == []
        assert any(p.name.endswith(".partial") for p in spool.iterdir())
        stored = Path(store.path) / f"{complete[0]}.wal.zst.age"
        assert stored.read_bytes().startswith(b"age-encryption.org/v1") and stored.stat().st_size < 4 << 20
        assert walchain.chain(complete[0], complete).gap is None

        identity = identity_for_restore(ctx.spec)
        assert identity is not None
        key = mac_key(identity)
        (stack.dir / "fetched").mkdir()
        target = stack.dir / "fetched" / complete[-1]
        walseg.fetch(store, complete[-1], str(target), identity, key, ctx.spec.stack, sysid)
        assert target.stat().st_size == 16 * 1024 * 1024
        bindir = next(Path("/usr/lib/postgresql").glob("*/bin"))
        dumped = subprocess.run(
            [str(bindir / "pg_waldump"), str(target)], capture_output=True, text=True, check=False
        )
        assert "rmgr:" in dumped.stdout, dumped.stderr

        # corrupt: one flipped byte
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 1
        stored.write_bytes(bytes(data))
        with pytest.raises(walseg.SegmentRejected, match="corrupt"):
            walseg.fetch(store, complete[0], str(target), identity, key, ctx.spec.stack, sysid)
        # planted: sealed by someone who knows the recipient but not the identity
        planted_sealing = sealing_for(ctx.spec)
        planted_sealing = type(planted_sealing)(planted_sealing.recipients, [], os.urandom(32))
        walseg.ship(store, str(target), complete[1], planted_sealing, ctx.spec.stack, sysid)
        with pytest.raises(walseg.SegmentRejected, match="another identity"):
            walseg.check(store, complete[1], key, ctx.spec.stack, sysid)
        # another cluster's segment under this cluster's name
        with pytest.raises(walseg.SegmentRejected, match="another stack or database cluster"):
            walseg.check(store, complete[2], key, ctx.spec.stack, "1234")
    finally:
        streamer = supervisor.streamer
        supervisor.stop()
    assert streamer is not None and streamer.process is None


def test_retention_deletes_only_the_wal_no_kept_base_needs(stack: Stack) -> None:
    continuous_stack(stack)
    document = stack.document()
    document["backup"]["retention"] = {"keep_last": 1}
    document["daemon"] = {"verify_new_sets": False}
    stack.write(document)
    stack.cli("backup")
    _, supervisor, _, store = start_streaming(stack)
    try:
        with pg(stack) as conn:
            for _ in range(3):
                conn.execute("CREATE TABLE IF NOT EXISTS t (n int)")
                conn.execute("INSERT INTO t VALUES (1)")
                conn.execute("SELECT pg_switch_wal()")
        before = wait_for(
            lambda: len(walseg.listing(store)[0]) >= 3 and walseg.listing(store)[0], "3 segments"
        )
        stack.cli("backup")
        newest = sorted((stack.dir / "data" / "backups").glob("*.manifest.json"))[-1]
        base = next(
            m for m in json.loads(newest.read_text())["members"] if m["content"] == "pg_basebackup-tar"
        )
        stack.cli("prune")
        after = walseg.listing(store)[0]
        assert after and all(s >= base["start_segment"] for s in after)
        assert set(before) - set(after) == {s for s in before if s < base["start_segment"]} != set()
    finally:
        supervisor.stop()
