"""The segment in progress on Drive as chunks (engine/walchunks), end to end: a corrupt chunk on
Drive ends the recovered segment at the last good chunk, and an event says so."""

from __future__ import annotations

import pytest

from reconciler.engine import walchunks
from tests.conftest import Stack
from tests.e2e.test_continuous import events_with, kill_everything, rows, start_streaming
from tests.e2e.test_daemon import RunningDaemon, daemons  # noqa: F401 (fixture)
from tests.e2e.test_wal_offsite import corrupt_on_drive, offsite_stack, system_identifier
from tests.integration.test_backups import pg
from tests.integration.test_wal_offsite import drive_wal
from tests.support.gdrive_emulator import DriveEmulator

pytestmark = pytest.mark.e2e

SEGMENT_BYTES = 16 * 1024 * 1024


def insert(stack: Stack, first: int) -> tuple[str, int]:
    """Rows ``first``..``first + 99`` in one transaction; (segment, offset) where its WAL ends."""
    with pg(stack) as conn:
        conn.execute(
            "INSERT INTO numbers SELECT generate_series(%s::bigint, %s::bigint)", (first, first + 99)
        )
        row = conn.execute(
            "SELECT pg_walfile_name(pg_current_wal_lsn()), "
            "(pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint %% %s",
            (SEGMENT_BYTES,),
        ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def test_a_corrupt_chunk_on_drive_ends_the_segment_in_progress_at_the_last_good_chunk(
    stack: Stack,
    emulator: DriveEmulator,
    daemons: list[RunningDaemon],  # noqa: F811
) -> None:
    folder, _ = offsite_stack(stack, emulator)
    daemon = start_streaming(stack, daemons)
    sysid = system_identifier(stack)

    def chunk_reaching(segment: str, offset: int) -> str | None:
        for name in drive_wal(emulator, folder, sysid):
            found = walchunks.parse(name)
            if found and found[0] == segment and found[1] < offset <= found[2]:
                return name
        return None

    segment, first_end = insert(stack, 1)  # committed: its WAL ends before first_end
    first = daemon.wait_for("rows 1-100 in a chunk", lambda: chunk_reaching(segment, first_end))
    second, second_end = insert(stack, 101)
    assert second == segment, "the test needs both batches in the segment in progress"
    daemon.wait_for("rows 101-200 in a later chunk", lambda: chunk_reaching(segment, second_end))
    # every byte of rows 101-200 follows the chunk that was on Drive before they were written
    after_first = walchunks.parse(first)
    assert after_first is not None
    bad = chunk_reaching(segment, after_first[2] + 1)
    assert bad is not None
    kill_everything(stack, daemon)
    corrupt_on_drive(emulator, bad)

    plan = stack.cli("plan", check=2).stdout
    assert "from the store on Google Drive, as chunks" in plan, plan  # plan reads listings only
    stack.cli("apply")
    assert rows(stack) == list(range(1, 101)), "not the rows of the chunks before the corrupt one"
    truncated = events_with(stack, "WalSpoolTruncated")
    message = truncated[-1]["message"] if truncated else ""
    assert bad in message and "does not authenticate" in message, truncated
