"""A hostile review of the data-safety work (issue 12): attacks that once made status lie or blocked
the fall-back to an older set, run through the real CLI against real servers."""

from __future__ import annotations

import pytest

from tests.conftest import Stack
from tests.e2e.test_offsite import offsite_stack
from tests.e2e.test_power_cut import power_cut
from tests.e2e.test_store_hostile import backups_dir
from tests.integration.test_backups import backup_records, encrypted_stack, pg, seed, sets, snapshot
from tests.support.gdrive_emulator import DriveEmulator

pytestmark = pytest.mark.e2e


def test_a_dump_the_server_refuses_is_rejected_even_when_its_rows_say_timed_out(stack: Stack) -> None:
    """A CHECK constraint whose SQL function names a table without its schema passes on the live
    server but fails in pg_restore (the dump sets ``search_path = ''``): the dump itself is refused,
    a content fault. PostgreSQL echoes the failing COPY line in ``CONTEXT``; a log row saying
    "Request timed out" once made the whole failure read as a host fault: never rejected, retried
    forever, and the machine blamed for it."""
    encrypted_stack(stack)
    with pg(stack) as conn:
        conn.execute("SET ROLE app")
        conn.execute("CREATE TABLE known_messages (msg text)")
        conn.execute("INSERT INTO known_messages VALUES ('Request timed out')")
        conn.execute(
            "CREATE FUNCTION is_known(m text) RETURNS boolean LANGUAGE sql "
            "AS $$ SELECT EXISTS (SELECT 1 FROM known_messages WHERE msg = m) $$"
        )
        conn.execute("CREATE TABLE request_log (msg text CHECK (is_known(msg)))")
        conn.execute("INSERT INTO request_log VALUES ('Request timed out')")
    stack.cli("backup")
    name = sets(stack)[0]["name"]

    result = stack.cli("verify", name, check=None)

    assert result.returncode == 1, result.stderr
    assert "problem of this host" not in result.stderr, result.stderr
    assert "does not exist" in result.stderr and "known_messages" in result.stderr, result.stderr
    record = backup_records(stack)
    assert f"local/{name}" in record.get("rejected", {}), "the dump is refused for its content"
    assert (record.get("last_verify_error") or {}).get("fault") != "host"


def test_a_set_taken_after_the_records_and_local_sets_were_lost_sorts_after_every_drive_set(
    stack: Stack, emulator: DriveEmulator
) -> None:
    """The state directory is lost (a fresh checkout, a replaced disk: backups.json and the local sets
    with it) while the data itself lives on and Drive holds the older sets. A set taken then must not
    sort below the Drive sets: restore on boot would bring back the older data and Drive retention
    would count the new set as the oldest."""
    offsite_stack(stack, emulator)
    stack.edit(daemon={"verify_new_sets": False})
    seed(stack, 100)
    for trigger in ("one", "two", "three"):
        stack.cli("backup", "--trigger", trigger)
    stack.cli("sync")

    (stack.dir / ".reconciler" / "backups.json").unlink()
    for path in backups_dir(stack).iterdir():
        path.unlink()
    with pg(stack) as conn:
        conn.execute("INSERT INTO discussions (title) VALUES ('acknowledged after the state was lost')")
    stack.cli("backup", "--trigger", "after-loss")
    expected = snapshot(stack)
    listed = [s["name"] for s in sets(stack)]
    assert listed[0].endswith("-after-loss"), listed

    power_cut(stack)
    for path in backups_dir(stack).iterdir():  # only Drive is left, as on a new machine
        path.unlink()
    stack.cli("apply")
    assert stack.status()["lastRestore"]["set"] == listed[0]
    assert snapshot(stack) == expected
