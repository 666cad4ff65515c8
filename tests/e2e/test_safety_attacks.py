"""A hostile review of the data-safety work (issue 12): attacks that once made status lie or blocked
the fall-back to an older set, run through the real CLI against real servers."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import Stack
from tests.e2e.test_offsite import offsite_stack
from tests.e2e.test_power_cut import power_cut
from tests.e2e.test_store_hostile import ONLY_LAST, backups_dir, local_sets, plant_on_drive
from tests.integration.test_backups import (
    backup_records,
    encrypted_stack,
    member_file,
    pg,
    seed,
    sets,
    snapshot,
)
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


def test_with_verification_off_a_newest_set_with_flipped_bytes_does_not_make_the_good_set_go(
    stack: Stack,
) -> None:
    """Bit rot keeps a member's size: the manifest authenticates and every size matches, so the set
    is vouched for from its manifest alone. With ``verify_new_sets: false`` it counted, and
    ``keep_last: 1`` deleted the good older set: the next restore found nothing it could use."""
    encrypted_stack(stack, **ONLY_LAST)
    stack.edit(daemon={"verify_new_sets": False})
    seed(stack, 300)
    stack.cli("backup", "--trigger", "good")
    expected = snapshot(stack)
    seed(stack, 50)
    stack.cli("backup", "--trigger", "rotten")
    good, rotten = (s["name"] for s in reversed(sets(stack)[:2]))  # after apply's first set
    assert rotten.endswith("-rotten") and good.endswith("-good")
    path = member_file(stack, rotten, "postgres")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))

    stack.cli("prune")
    assert good in local_sets(stack), "the only set that restores must not be deleted"
    power_cut(stack)
    stack.cli("apply")
    assert snapshot(stack) == expected
    assert stack.status()["lastRestore"]["set"] == good


def test_a_set_planted_on_drive_with_a_huge_sequence_does_not_fill_the_disk_before_its_manifest_is_checked(
    stack: Stack, emulator: DriveEmulator
) -> None:
    """Someone with write access to the shared Drive folder plants a set whose name sorts first (a
    huge sequence) with a large member. Restore on boot tries it first; its members were downloaded
    before its manifest was checked, so the local disk filled up: a host fault, retried on every
    boot, and the real sets were never tried."""
    folder = offsite_stack(stack, emulator)
    stack.edit(daemon={"verify_new_sets": False})
    seed(stack, 100)
    stack.cli("backup", "--trigger", "real")
    stack.cli("sync")
    expected = snapshot(stack)
    planted = f"{stack.document()['stack']}-20991231T235959Z-999999999999-x"
    plant_on_drive(emulator, folder, f"{planted}.postgres.dump.zst.age", b"\0" * (24 * 1024 * 1024))
    plant_on_drive(emulator, folder, f"{planted}.manifest.json", b"garbage\n")

    power_cut(stack)
    store = backups_dir(stack)
    for path in store.iterdir():
        path.unlink()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "small-store", str(store)], check=True)
    try:
        result = stack.cli("apply", check=None)
        assert result.returncode == 0, result.stderr[-3000:]
        assert snapshot(stack) == expected
        restore = stack.status()["lastRestore"]
        assert [r["set"] for r in restore["rejected"]] == [planted]
        assert not any(p.name.startswith(planted) for p in store.iterdir())
    finally:
        subprocess.run(["umount", str(store)], check=True)


def test_a_full_local_disk_while_fetching_from_drive_names_the_cause_and_rejects_nothing(
    stack: Stack, emulator: DriveEmulator
) -> None:
    """The local store fills up while a real set is fetched from Drive for a restore on boot: the
    host's fault (the set stays a candidate), reported as errno's words, not as "failed: OSError"."""
    offsite_stack(stack, emulator)
    stack.edit(daemon={"verify_new_sets": False})
    with pg(stack) as conn:
        conn.execute("SET ROLE app")
        conn.execute(
            "CREATE TABLE blobs AS SELECT md5(g::text) || md5((g * 7)::text) AS b FROM generate_series(1, 60000) g"
        )
    stack.cli("backup")
    stack.cli("sync")
    name = sets(stack)[0]["name"]

    power_cut(stack)
    store = backups_dir(stack)
    for path in store.iterdir():
        path.unlink()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tiny-store", str(store)], check=True
    )
    try:
        result = stack.cli("apply", check=None)
    finally:
        subprocess.run(["umount", str(store)], check=True)
    assert result.returncode != 0
    assert "No space left on device" in result.stderr, result.stderr[-3000:]
    assert "problem of this host" in result.stderr
    assert f"gdrive/{name}" not in backup_records(stack).get("rejected", {})
