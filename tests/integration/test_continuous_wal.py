"""Continuous WAL against a real server: pg_receivewal with a slot, segments sealed into the store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.backup import physical, walseg, walspool
from reconciler.backup.create import identity_for_restore, sealing_for
from reconciler.backup.keys import mac_key
from reconciler.engine import recovery, wal
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
        # the spool keeps only chunks of the segment in progress; shipped ones are stored compressed and
        # sealed; raw WAL is received in RAM and never on the card
        spool = Path(stack.dir / "data" / "spool" / sysid)
        wait_for(lambda: walspool.segments(str(spool)), "the segment in progress in the spool")
        assert all(p.name.endswith(walspool.SUFFIX) for p in spool.iterdir())
        assert any(
            p.name.endswith(".partial") for p in (Path(ctx.spec.ram_root) / "wal-receive" / sysid).iterdir()
        )
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
        wait_for(  # the backup's own segment switch completed the base's first segment: shipped
            lambda: any(s >= base["start_segment"] for s in walseg.listing(store)[0]),
            "the base's first segment",
        )
        stack.cli("prune")
        after = walseg.listing(store)[0]
        assert after and all(s >= base["start_segment"] for s in after)
        assert set(before) - set(after) == {s for s in before if s < base["start_segment"]} != set()
    finally:
        supervisor.stop()


def wal_position(stack: Stack) -> tuple[str, int]:
    """(segment, byte offset in it) of the server's current WAL write position."""
    with pg(stack, "postgres") as conn:
        row = conn.execute(
            "SELECT pg_walfile_name(pg_current_wal_lsn()), "
            "(pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint % (16 * 1024 * 1024)"
        ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def spooled_through(supervisor: wal.WalSupervisor, segment: str, offset: int) -> bool:
    streamer = supervisor.streamer
    spooler = streamer.shipper.spooler if streamer is not None and streamer.shipper else None
    return spooler is not None and spooler.segment == segment and spooler.end >= offset


def halt(supervisor: wal.WalSupervisor) -> None:
    """The power cut, for the streamer: its thread stops between ticks and the receiver is SIGKILLed
    (no last tick, no orderly flush)."""
    streamer = supervisor.streamer
    assert streamer is not None
    streamer._stop.set()
    assert streamer._thread is not None
    streamer._thread.join()
    streamer.process.kill()
    streamer.process.wait()
    supervisor.streamer = None


def rebuilt(ctx: StackContext, sysid: str, segment: str) -> tuple[bytes, walspool.Scan]:
    identity = identity_for_restore(ctx.spec)
    key = mac_key(identity) if identity is not None else None
    directory = os.path.join(wal.spool_root(ctx.spec), sysid)
    data, found = walspool.read(directory, key, walspool.Binding(ctx.spec.stack, sysid, segment))
    return walspool.rebuild(data, found, identity), found


def test_the_spool_holds_the_bytes_sent_up_to_the_last_tick_after_ram_is_wiped(stack: Stack) -> None:
    continuous_stack(stack)
    ctx, supervisor, sysid, _ = start_streaming(stack)
    receive = Path(wal.receive_dir(ctx.spec)) / sysid
    try:
        with pg(stack) as conn:
            conn.execute("SET ROLE app")
            conn.execute("CREATE TABLE t (n int)")
            for n in range(200):
                conn.execute("INSERT INTO t VALUES (%s)", (n,))
        segment, offset = wal_position(stack)
        wait_for(lambda: spooled_through(supervisor, segment, offset), "the last commit in the spool")
        streamer = supervisor.streamer
        assert streamer is not None and streamer.shipper is not None and streamer.shipper.spooler is not None
        end = streamer.shipper.spooler.end
        halt(supervisor)
        received = (receive / f"{segment}.partial").read_bytes()
    finally:
        supervisor.stop()
    shutil.rmtree(receive)  # the power cut wipes RAM
    # the card holds no raw WAL: only the chunk file of the segment in progress
    spool = Path(wal.spool_root(ctx.spec)) / sysid
    assert [p.name for p in spool.iterdir()] == [f"{segment}{walspool.SUFFIX}"]
    segment_bytes, found = rebuilt(ctx, sysid, segment)
    assert found.problem is None and found.end == end >= offset
    assert segment_bytes == received[:end] + bytes(16 * 1024 * 1024 - end)
    assert (spool / f"{segment}{walspool.SUFFIX}").stat().st_size < end  # compressed


def test_the_spool_resumes_after_a_restart_without_duplicating_or_skipping_bytes(stack: Stack) -> None:
    continuous_stack(stack)
    ctx, supervisor, sysid, _ = start_streaming(stack)
    spool = Path(wal.spool_root(ctx.spec)) / sysid
    try:
        with pg(stack) as conn:
            conn.execute("SET ROLE app")
            conn.execute("CREATE TABLE t (n int)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        segment, offset = wal_position(stack)
        wait_for(lambda: spooled_through(supervisor, segment, offset), "the first rows in the spool")
        supervisor.stop()  # a daemon restart: RAM stays
        spool_file = spool / f"{segment}{walspool.SUFFIX}"
        before = spool_file.stat().st_size
        with spool_file.open("ab") as handle:  # and a chunk torn by a crash mid-append
            handle.write(walspool.MAGIC + b"\0\0")
        with pg(stack) as conn:
            conn.execute("INSERT INTO t SELECT generate_series(101, 200)")
        _, supervisor, _, _ = start_streaming(stack)
        with pg(stack) as conn:
            conn.execute("INSERT INTO t SELECT generate_series(201, 300)")
        segment2, offset = wal_position(stack)
        assert segment2 == segment
        wait_for(lambda: spooled_through(supervisor, segment, offset), "the later rows in the spool")
        halt(supervisor)
        received = (Path(wal.receive_dir(ctx.spec)) / sysid / f"{segment}.partial").read_bytes()
    finally:
        supervisor.stop()
    segment_bytes, found = rebuilt(ctx, sysid, segment)
    assert found.problem is None, found.problem  # the torn tail was cut off before appending
    assert len(found.chunks) >= 2 and spool_file.stat().st_size > before
    assert segment_bytes == received[: found.end] + bytes(16 * 1024 * 1024 - found.end)
    assert found.end >= offset


def test_an_idle_database_writes_nothing_to_the_spool(stack: Stack) -> None:
    continuous_stack(stack)
    _, supervisor, _, _ = start_streaming(stack)
    try:
        with pg(stack) as conn:
            conn.execute("CREATE TABLE t (n int)")
        segment, offset = wal_position(stack)
        wait_for(lambda: spooled_through(supervisor, segment, offset), "the table in the spool")
        streamer = supervisor.streamer
        assert streamer is not None and streamer.shipper is not None
        spooler = streamer.shipper.spooler
        assert spooler is not None
        chunks, appended = spooler.chunks, spooler.appended
        ticks = [streamer.shipper.spool_partial() for _ in range(5)]  # as five ticks would
    finally:
        supervisor.stop()
    assert ticks == [0] * 5 and (spooler.chunks, spooler.appended) == (chunks, appended)


def test_a_completed_segment_is_spooled_whole_before_the_next_one_and_before_shipping(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a segment's completion and its shipping (seconds on a Pi; here shipping fails), the
    spool holds it whole, and the next segment's chunks follow it."""
    continuous_stack(stack)
    monkeypatch.setenv("RECONCILER_FAILPOINTS", "wal.ship=error")
    ctx, supervisor, sysid, store = start_streaming(stack)
    receive = Path(wal.receive_dir(ctx.spec)) / sysid
    try:
        with pg(stack) as conn:
            conn.execute("SET ROLE app")
            conn.execute("CREATE TABLE t (n int)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
            first, _ = wal_position(stack)
            conn.execute("RESET ROLE")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("INSERT INTO t VALUES (101)")
        segment, offset = wal_position(stack)
        assert segment == walchain.successor(first)
        wait_for(lambda: spooled_through(supervisor, segment, offset), "the next segment in the spool")
        halt(supervisor)
        completed = (receive / first).read_bytes()
    finally:
        supervisor.stop()
    assert walseg.listing(store) == ([], []), "shipping was to fail"
    shutil.rmtree(receive)  # the power cut
    rebuilt_first, found = rebuilt(ctx, sysid, first)
    assert found.problem is None and found.end == 16 * 1024 * 1024
    assert rebuilt_first == completed
    _, found = rebuilt(ctx, sysid, segment)
    assert found.problem is None and found.end >= offset


def test_raw_wal_planted_on_the_card_is_neither_adopted_nor_sealed_nor_replayed(stack: Stack) -> None:
    """A raw WAL file in spool_dir carries no authentication (only chunks do): it is never moved into
    the receive directory (trusted like the data directory), never sealed into the store (which would
    make it authentic), and never part of a recovery's chain (review15)."""
    continuous_stack(stack)
    ctx, supervisor, sysid, store = start_streaming(stack)
    spool = Path(wal.spool_root(ctx.spec)) / sysid
    try:
        with pg(stack) as conn:
            conn.execute("CREATE TABLE t (n int)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        segment, offset = wal_position(stack)
        wait_for(lambda: spooled_through(supervisor, segment, offset), "the rows in the spool")
        halt(supervisor)
    finally:
        supervisor.stop()
    # planted on the card: forged WAL under the names of the next segments (complete and in progress)
    forged = walchain.successor(segment)
    (spool / forged).write_bytes(os.urandom(16 * 1024 * 1024))
    (spool / f"{walchain.successor(forged)}.partial").write_bytes(os.urandom(16 * 1024 * 1024))
    assert all(d != str(spool) for d in recovery.raw_dirs(ctx, sysid))
    _, supervisor, _, _ = start_streaming(stack)
    try:
        with pg(stack) as conn:
            conn.execute("INSERT INTO t SELECT generate_series(101, 200)")
        segment2, offset = wal_position(stack)
        wait_for(lambda: spooled_through(supervisor, segment2, offset), "the later rows in the spool")
        receive = Path(wal.receive_dir(ctx.spec)) / sysid
        assert forged not in os.listdir(receive)
        assert forged not in walseg.listing(store)[0]
    finally:
        supervisor.stop()
    assert all(d != str(spool) for d in recovery.raw_dirs(ctx, sysid))


def test_a_spool_that_cannot_be_read_is_a_host_fault_not_a_gap(stack: Stack) -> None:
    """No file descriptors while recovery reads the spool: an error to retry (review15). Before, it
    was "none of the spool's chunks can be read", the chain ended before the segment in progress,
    recovery promoted without it, and the retired spool was removed once the post-restore set
    existed: the last segment's acknowledged writes lost for a host fault."""
    import resource

    continuous_stack(stack)
    ctx, supervisor, sysid, _ = start_streaming(stack)
    try:
        with pg(stack) as conn:
            conn.execute("CREATE TABLE t (n int)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
        segment, offset = wal_position(stack)
        wait_for(lambda: spooled_through(supervisor, segment, offset), "the rows in the spool")
        halt(supervisor)
    finally:
        supervisor.stop()
    identity = identity_for_restore(ctx.spec)
    key = mac_key(identity) if identity is not None else None
    assert recovery.spool_check(ctx, sysid, segment, key) is None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(n) for n in os.listdir("/proc/self/fd")) + 1, hard))
    try:
        with pytest.raises(OSError):  # every descriptor number below the limit taken
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        with pytest.raises(OSError, match="Too many open files"):
            recovery.spool_check(ctx, sysid, segment, key)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_status_says_when_no_receiver_streams_and_why(stack: Stack) -> None:
    """A receiver that cannot stream was a log line only, and its error was cleared by the next tick
    that raised nothing; with no daemon at all, nothing said the recovery point grows. ``status`` shows
    the receiver's error and the slot as the server sees it (review15)."""
    continuous_stack(stack)
    ctx, supervisor, sysid, _ = start_streaming(stack)
    segment, _ = wal_position(stack)
    supervisor.stop()
    # the receiver cannot stream: WAL planted in RAM under a name far past the server's position
    receive = Path(wal.receive_dir(ctx.spec)) / sysid
    ahead = walchain.segment_name(1, walchain.parse(segment)[1] + 50)
    (receive / f"{ahead}.partial").write_bytes(bytes(16 * 1024 * 1024))
    supervisor.follow(ctx, ctx.observe())
    try:

        def failing() -> dict[str, object] | None:
            shown = json.loads(stack.cli("status", "-o", "json").stdout)["continuousWal"]
            receiver = shown["receiver"] or {}
            return shown if receiver.get("state") == "failing" and shown["problem"] else None

        shown = wait_for(failing, "status to say the receiver is failing")
        assert "pg_receivewal exited" in str(shown["receiver"]), shown  # type: ignore[index]
        assert "no receiver is streaming" in str(shown["problem"])  # type: ignore[index]
    finally:
        supervisor.stop()
    (receive / f"{ahead}.partial").unlink()
    text = stack.cli("status").stdout
    assert "no receiver is streaming" in text and "the recovery point grows" in text
