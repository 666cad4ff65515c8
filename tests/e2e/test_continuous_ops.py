"""Continuous protection in operation: ``verify`` replays the WAL, the mode switch keeps the chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tests.e2e.test_continuous import continuous_stack, events_with, start_streaming
from tests.e2e.test_daemon import RunningDaemon, daemons  # noqa: F401 (fixture)
from tests.integration.test_backups import pg

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
    from reconciler.plan import walchain

    end = lsn_value(str(wal["end_lsn"])) - 1  # a segment switch ends at the next segment's first byte
    return walchain.segment_name(walchain.parse(like)[0], end // (16 * 1024 * 1024))
