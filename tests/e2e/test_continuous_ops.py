"""Continuous protection in operation: ``verify`` replays the WAL, the mode switch keeps the chain."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconciler.plan import walchain
from tests.conftest import Stack
from tests.e2e.test_continuous import (
    continuous_stack,
    events_with,
    kill_everything,
    receivers,
    rows,
    slot_active,
    start_streaming,
    streamed,
)
from tests.e2e.test_daemon import RunningDaemon, _status_file, daemons  # noqa: F401 (fixture)
from tests.e2e.test_mode_switch import WRITER_PASSWORD
from tests.integration.test_backups import pg
from tests.integration.test_docker_runtime import PG_IMAGE, REDIS_IMAGE, engine  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


def system_identifier(stack: Stack) -> str:
    with pg(stack, "postgres") as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    return str(row[0])


def fill_segments(stack: Stack, batches: int, first: int = 1) -> list[str]:
    """``batches`` batches of 100 numbered rows, each in a segment of its own (switched after it)."""
    segments = []
    with pg(stack) as conn:
        for batch in range(batches):
            low = first + batch * 100
            conn.execute(
                "INSERT INTO numbers SELECT g FROM generate_series(%s::bigint, %s::bigint) g", (low, low + 99)
            )
            row = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
            assert row is not None
            segments.append(str(row[0]))
            conn.execute("SELECT pg_switch_wal()")
    return segments


def wal_area(stack: Stack, sysid: str) -> Path:
    return stack.dir / "data" / "backups" / "wal" / sysid


def shipped(area: Path, segments: list[str]) -> bool:
    return all((area / f"{s}.wal.json").exists() for s in segments)


def verify(stack: Stack, *args: str, check: int = 0) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stack.cli("verify", *args, "-o", "json", check=check).stdout)
    return result


def test_verify_replays_the_wal_after_the_base_and_reports_a_corrupt_segment_by_name(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811
) -> None:
    continuous_stack(stack)
    daemon = start_streaming(stack, daemons)
    sysid = system_identifier(stack)
    segments = fill_segments(stack, 4)
    area = wal_area(stack, sysid)
    daemon.wait_for("the batches' segments shipped", lambda: shipped(area, segments))

    result = verify(stack)
    wal = result["base"]["wal"]
    assert result["ok"] and result["base"]["ok"], result
    assert wal["ok"] and "gap" not in wal, wal
    assert wal["segments"] >= len(segments), wal  # every shipped segment after the base was replayed
    assert wal["until"] == "the end of the chain"
    assert last_replayed(wal, segments[0]) >= segments[-1], f"the replay ended before {segments[-1]}"

    victim = area / f"{segments[2]}.wal.zst.age"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))

    result = verify(stack)
    wal = result["base"]["wal"]
    assert result["ok"] and result["base"]["ok"], "a WAL gap rejected the set: its base is still good"
    assert not wal["ok"] and wal["code"] == "wal_gap" and wal["gap"] == segments[2], wal
    assert "corrupt" in wal["reason"] and wal["after_gap"] >= 1, wal
    assert last_replayed(wal, segments[0]) < segments[2], "replayed past the corrupt segment"
    gap = events_with(stack, "WalGap")
    assert gap and segments[2] in gap[-1]["message"] and "verify of" in gap[-1]["message"]


def test_verify_of_an_older_set_replays_up_to_the_next_base(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811
) -> None:
    continuous_stack(stack)
    daemon = start_streaming(stack, daemons)
    sysid = system_identifier(stack)
    first = _newest_set(stack)
    segments = fill_segments(stack, 2)
    stack.cli("backup")
    later = fill_segments(stack, 2, first=201)
    daemon.wait_for("the segments shipped", lambda: shipped(wal_area(stack, sysid), segments + later))
    second = _newest_set(stack)
    assert second != first

    wal = verify(stack, first)["base"]["wal"]
    assert wal["ok"] and wal["until"] == f"the next base ({second})", wal
    assert segments[-1] <= last_replayed(wal, segments[0]) < later[0], wal


def _newest_set(stack: Stack) -> str:
    listing = json.loads(stack.cli("backups", "-o", "json").stdout)
    sets = listing["sets"] if isinstance(listing, dict) else listing
    return str(sets[0]["name"])


def last_replayed(wal: dict[str, Any], like: str) -> str:
    """The segment holding the last byte the scratch server replayed (on ``like``'s timeline: the
    live one; the scratch server's own promotion starts the next)."""
    from reconciler.backup.physical import lsn_value

    end = lsn_value(str(wal["end_lsn"])) - 1  # a segment switch ends at the next segment's first byte
    return walchain.segment_name(walchain.parse(like)[0], end // (16 * 1024 * 1024))


class SteadyWriter(threading.Thread):
    """An application committing numbered rows one by one over TCP as the app role (the drain closes
    TCP; the superuser's unix socket stays open to the reconciler) and going on through a mode switch:
    a refused connection or a terminated session is retried with the same number, so the numbers stay
    contiguous whatever the switch did to the attempt in flight (``ON CONFLICT``: it may have
    committed)."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.acknowledged: dict[int, float] = {}
        self.attempted = 0
        self.stop = threading.Event()

    def run(self) -> None:
        n = 1
        while not self.stop.is_set():
            try:
                with psycopg.connect(
                    host="127.0.0.1",
                    port=self.stack.pg_port,
                    user="app",
                    password=WRITER_PASSWORD,
                    dbname="app_db",
                    autocommit=True,
                    connect_timeout=3,
                ) as conn:
                    while not self.stop.is_set():
                        self.attempted = max(self.attempted, n)
                        conn.execute("INSERT INTO numbers VALUES (%s) ON CONFLICT DO NOTHING", (n,))
                        self.acknowledged[n] = time.monotonic()
                        n += 1
                        time.sleep(0.005)  # ~100-200 transactions/s
            except psycopg.Error:
                self.stop.wait(0.05)  # the server is closed for the switch: try again

    def longest_pause(self) -> float:
        times = sorted(self.acknowledged.values())
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def switch(stack: Stack, daemon: RunningDaemon, mode: str) -> float:
    """Edit the mode; the daemon switches. Returns the seconds from the end of the switch until the
    WAL stream is active again."""
    mark = len(daemon.events())
    stack.edit(mode=mode)

    def converged() -> bool:
        stalled = [e for e in daemon.events()[mark:] if e["reason"] == "Stalled"]
        assert not stalled, f"the switch to {mode} failed: {stalled[0]['message']}"
        return any(e["reason"] == "Converged" for e in daemon.events()[mark:])

    daemon.wait_for(f"the switch to {mode}", converged, timeout=240)
    assert _status_file(stack).get("mode") == mode
    switched = time.monotonic()
    daemon.wait_for("the WAL stream to resume", lambda: slot_active(stack), timeout=120)
    return time.monotonic() - switched


def test_the_mode_switch_keeps_the_wal_chain_and_a_power_cut_after_it_loses_nothing(
    stack: Stack,
    daemons: list[RunningDaemon],  # noqa: F811
) -> None:
    continuous_stack(stack)
    # A switch whose server stays down for 12 s, as copying a large database to the SD card does
    # (a scenario, not a synchronisation): the receiver fails meanwhile and backs off.
    daemon = RunningDaemon(stack, env={"RECONCILER_FAILPOINTS": "switch.start.before=sh:sleep 12"})
    daemons.append(daemon)
    daemon.wait_for("the WAL stream to be active", lambda: slot_active(stack))
    sysid = system_identifier(stack)
    with pg(stack) as conn:
        conn.execute(f"ALTER ROLE app PASSWORD '{WRITER_PASSWORD}'")
    writer = SteadyWriter(stack)
    writer.start()
    daemon.wait_for("rows before the switch", lambda: len(writer.acknowledged) > 50)
    resumed = [switch(stack, daemon, "disk"), switch(stack, daemon, "ram")]
    assert system_identifier(stack) == sysid, "the switch made a new cluster: a new chain"
    # the stream resumes at once after a switch, not after the receiver's back-off (up to 30 s): rows
    # written meanwhile would be only in RAM, past the switch's last base
    assert all(t < 5.0 for t in resumed), f"the stream resumed {resumed} s after the switches"
    count = len(writer.acknowledged)
    daemon.wait_for("rows after the switch", lambda: len(writer.acknowledged) > count + 100)
    with pg(stack, "postgres") as conn:
        daemon.wait_for("the stream to catch up", lambda: streamed(conn))
    cut = time.monotonic()
    kill_everything(stack, daemon)
    writer.stop.set()
    writer.join(10)

    stack.cli("apply")
    present = rows(stack)
    assert present == list(range(1, len(present) + 1)), "a gap: rows lost in the middle"
    assert len(present) <= writer.attempted, "rows that were never written"
    safe = [n for n, at in writer.acknowledged.items() if at <= cut - 1.0]
    assert max(safe) <= len(present), f"acknowledged more than 1 s before the cut but lost: {max(safe)}"
    assert events_with(stack, "PhysicalRecovery") and not events_with(stack, "WalGap")
    # one chain across both switches: every segment from the first base on, none missing
    complete = [p.name.removesuffix(".wal.json") for p in wal_area(stack, sysid).glob("*.wal.json")]
    names = sorted(n for n in complete if walchain.is_segment(n))
    found = walchain.chain(names[0], names)
    assert found.gap is None and len(found.segments) == len(names), f"the chain breaks at {found.gap}"
    print(f"switch: longest write pause {writer.longest_pause():.2f} s, stream resumed after {resumed} s")


def test_continuous_wal_on_docker_restores_to_a_time_and_survives_a_power_cut(
    stack: Stack,
    engine: Any,  # noqa: F811
    daemons: list[RunningDaemon],  # noqa: F811
) -> None:
    """pg_receivewal and pg_basebackup run on the host against the container's socket (bind-mounted);
    recovery extracts the base into the container's bind-mounted data directory."""
    name = ""
    try:
        name = continuous_stack(stack, images={"postgres": PG_IMAGE, "redis": REDIS_IMAGE})["stack"]
        daemon = start_streaming(stack, daemons)
        sysid = system_identifier(stack)
        segments = fill_segments(stack, 3)
        with pg(stack) as conn:
            chosen = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
            while conn.execute("SELECT clock_timestamp() > %s + interval '200 ms'", (chosen,)).fetchone() != (
                True,
            ):
                pass
            conn.execute("INSERT INTO numbers SELECT g FROM generate_series(301, 350) g")
            daemon.wait_for("the stream to catch up", lambda: streamed(conn))
        daemon.wait_for("the segments shipped", lambda: shipped(wal_area(stack, sysid), segments))
        assert daemon.stop() == 0

        result = stack.cli("restore", "--to", chosen.isoformat(), "--yes")
        assert "restored PostgreSQL to" in result.stdout
        assert rows(stack) == list(range(1, 301))

        daemon = start_streaming(stack, daemons)
        with pg(stack) as conn:
            conn.execute("INSERT INTO numbers VALUES (1000)")
            daemon.wait_for("the write to reach the spool", lambda: streamed(conn))
        # the power cut: the daemon and its receiver, the containers, the RAM
        for pid in [daemon.process.pid, *receivers(stack)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        daemon.process.wait()
        for service in ("postgres", "redis"):
            engine.containers.get(f"{name}-{service}").kill()
        for entry in stack.ram_root.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

        stack.cli("apply")
        assert rows(stack) == [*range(1, 301), 1000], "a row streamed before the cut is lost"
        assert events_with(stack, "PhysicalRecovery"), "restore on boot did not replay the WAL"
        assert verify(stack)["base"]["wal"]["ok"]
    finally:
        name = name or stack.document()["stack"]
        for service in ("postgres", "redis"):
            for container in engine.containers.list(all=True, filters={"name": f"{name}-{service}"}):
                container.remove(force=True)
