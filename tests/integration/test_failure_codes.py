"""Each failure code (docs/FAILURES.md) produced for real, through the CLI, against real servers.

The CLI's stderr is JSON lines when it is not a terminal; the error line carries ``code``. The daemon's
channels (events, metrics, status, webhook) are covered in ``tests/e2e/test_failure_codes_daemon.py``.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
from typing import Any

import pytest

from tests.conftest import Stack
from tests.e2e.test_power_cut import power_cut
from tests.integration.test_backups import (
    backup_records,
    encrypted_stack,
    member_file,
    pg,
    seed,
    sets,
    with_keys,
)
from tests.integration.test_gdrive import authorized_user_file
from tests.support.gdrive_emulator import DriveEmulator

pytestmark = pytest.mark.integration


def error_code(result: subprocess.CompletedProcess[str]) -> str | None:
    """The ``code`` of the CLI's error line on stderr (JSON lines), or None."""
    code = None
    for line in result.stderr.splitlines():  # log lines may say "error" too: the CLI's own line is last
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("level") == "error" and "logger" not in entry:
            code = entry.get("code")
    return code


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs and needs root (CI runs as root)")


def random_table(stack: Stack, mb: int) -> None:
    """About ``mb`` MB of text that zstd cannot squeeze much (md5 hex: ~2x at best)."""
    with pg(stack) as conn:
        conn.execute("SET ROLE app")
        conn.execute(
            "CREATE TABLE runaway AS SELECT g, (SELECT string_agg(md5(random()::text || g || x), '') "
            "FROM generate_series(1, 32) x) AS junk FROM generate_series(1, %s) g",
            (mb * 1000,),
        )


def test_too_large_stops_at_the_limit_before_the_store_fills_and_keeps_every_earlier_set(
    stack: Stack,
) -> None:
    """backup.max_set_size: the set is stopped at the limit (too_large), never fills the store, leaves
    nothing behind, and retention deletes nothing because of it; without the limit the same data fills
    the 2 MiB store (store_full)."""
    require_root()
    encrypted_stack(stack, keep_last=1)
    document = stack.document()
    document["daemon"] = {"verify_new_sets": False}  # retention counts unverified sets
    stack.write(document)
    store = stack.dir / "data" / "backups"
    store.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(store)], check=True)
    try:
        seed(stack, 100)
        stack.cli("backup")
        stack.cli("backup")
        earlier = sorted(s["name"] for s in sets(stack))
        assert len(earlier) == 2
        random_table(stack, 8)  # ~8 MB: several MiB after zstd, more than the whole store

        document["backup"]["max_set_size"] = "1MiB"
        stack.write(document)
        result = stack.cli("backup", check=1)
        assert error_code(result) == "too_large", result.stderr
        assert "backup.max_set_size" in result.stderr and "every earlier set is still there" in result.stderr
        assert sorted(s["name"] for s in sets(stack)) == earlier
        assert not [name for name in os.listdir(store) if name.startswith(".partial")]
        assert sorted({name.split(".")[0] for name in os.listdir(store)}) == earlier, "partial set left"
        attempt = backup_records(stack)["last_attempt"]
        assert attempt["result"] == "failed" and attempt["code"] == "too_large"
        # keep_last: 1 would delete the older set; the newest backup failed, so nothing goes
        stack.cli("prune")
        assert sorted(s["name"] for s in sets(stack)) == earlier

        del document["backup"]["max_set_size"]
        stack.write(document)
        full = stack.cli("backup", check=1)
        assert error_code(full) == "store_full", full.stderr
        assert sorted(s["name"] for s in sets(stack)) == earlier
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


def test_a_store_that_belongs_to_someone_else_is_store_error_and_a_held_lock_is_busy(stack: Stack) -> None:
    require_root()
    encrypted_stack(stack)
    store = stack.dir / "data" / "backups"
    store.mkdir(parents=True, exist_ok=True)
    os.chown(store, 65534, 65534)  # nobody
    result = stack.cli("backup", check=1)
    assert error_code(result) == "store_error", result.stderr
    os.chown(store, 0, 0)
    with open(stack.dir / ".reconciler" / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = stack.cli("apply", check=1)
    assert error_code(busy) == "busy", busy.stderr


def test_a_dump_pg_dump_refuses_is_dump_error(stack: Stack) -> None:
    encrypted_stack(stack)
    document = stack.document()
    document["services"]["postgres"]["dump_options"] = ["--extra-float-digits=99"]  # pg_dump: -15..3
    stack.write(document)
    before = sets(stack)  # the first set apply took
    result = stack.cli("backup", check=1)
    assert error_code(result) == "dump_error", result.stderr
    assert "extra-float-digits" in result.stderr
    assert [s["name"] for s in sets(stack)] == [s["name"] for s in before]


def test_tampered_and_wrong_key_sets_are_restore_verify_and_auth_errors(stack: Stack) -> None:
    encrypted_stack(stack)
    seed(stack, 200)
    stack.cli("backup")
    name = sets(stack)[0]["name"]
    path = member_file(stack, name, "postgres")
    pristine = path.read_bytes()
    for listed in sets(stack):  # this one and the first set apply took
        member = member_file(stack, listed["name"], "postgres")
        data = bytearray(member.read_bytes())
        data[len(data) // 2] ^= 0x40
        member.write_bytes(bytes(data))

    power_cut(stack)  # the RAM is gone and every set is damaged
    boot = stack.cli("apply", check=1)
    assert error_code(boot) == "restore_error", boot.stderr
    assert "stay down instead of starting empty" in boot.stderr
    again = stack.cli("apply", check=1)  # now a blocker (the set is rejected): still a restore_error
    assert error_code(again) == "restore_error", again.stderr

    verify = stack.cli("verify", name, check=1)
    assert error_code(verify) == "verify_error", verify.stderr
    assert json.loads(stack.cli("verify", name, "-o", "json", check=1).stdout)["code"] == "verify_error"

    path.write_bytes(pristine)
    key = stack.dir / "keys" / "backup.key"
    key.unlink()
    with_keys(stack)  # another identity at the same path
    wrong = stack.cli("verify", name, check=1)
    assert error_code(wrong) == "auth_error", wrong.stderr
    assert "another identity" in wrong.stderr


def test_a_failed_switch_is_switch_error_and_a_blocked_plan_is_plan_blocked(stack: Stack) -> None:
    document = stack.default_document("ram")
    stack.write(document)
    stack.cli("apply")
    seed(stack, 50)
    stack.edit(mode="disk")
    failed = stack.cli("apply", check=1, env={"RECONCILER_FAILPOINTS": "switch.start.before=error"})
    assert error_code(failed) == "switch_error", failed.stderr
    assert "rolled back" in failed.stderr
    # a foreign, non-empty directory where the disk copy must go: the plan refuses to act
    foreign = stack.dir / "data" / "postgres"
    foreign.mkdir(parents=True, exist_ok=True)
    (foreign / "someone-elses-file").write_text("not ours")
    blocked = stack.cli("apply", check=1)
    assert error_code(blocked) == "plan_blocked", blocked.stderr


def test_a_service_that_cannot_start_is_reconcile_error(stack: Stack) -> None:
    stack.write(stack.default_document("ram"))
    with socket.socket() as taken:  # something else listens on Redis's port
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", stack.redis_port))
        taken.listen()
        result = stack.cli("apply", check=1)
    assert error_code(result) == "reconcile_error", result.stderr


def _drive_stack(stack: Stack, emulator: DriveEmulator) -> dict[str, Any]:
    recipient = with_keys(stack)
    document = stack.default_document("ram")
    document["backup"] = {
        "encryption": {"recipients": [recipient], "identity_file": "./keys/backup.key"},
        "stores": {
            "gdrive": {
                "enabled": True,
                "folder_id": emulator.make_folder(),
                "credentials_file": authorized_user_file(stack.dir / "keys" / "gdrive.json", emulator),
                "api_url": emulator.url,
            }
        },
    }
    stack.write(document)
    stack.cli("apply")
    return document


def test_drive_failures_are_upload_error_and_download_error(stack: Stack, emulator: DriveEmulator) -> None:
    _drive_stack(stack, emulator)
    seed(stack, 200)
    stack.cli("backup")  # uploaded as well
    emulator.state.quota_limit = 1024  # Drive is full now
    stack.cli("backup")
    upload = stack.cli("sync", check=1)
    assert error_code(upload) == "upload_error", upload.stderr
    assert "free space on Drive" in upload.stderr
    emulator.state.quota_limit = 15 * 1024**3
    stack.cli("sync")
    assert backup_records(stack)["last_upload"]["result"] == "success"

    # No local set left and the RAM gone: restore on boot must fetch from Drive, which refuses.
    for entry in (stack.dir / "data" / "backups").iterdir():
        entry.unlink()
    power_cut(stack)
    emulator.inject("download", status=403, reason="insufficientFilePermissions", times=1000)
    boot = stack.cli("apply", check=1)
    assert error_code(boot) == "download_error", boot.stderr


def test_a_dead_service_is_service_down_in_status(stack: Stack) -> None:
    stack.write(stack.default_document("ram"))
    stack.cli("apply")
    pid = int((stack.dir / ".reconciler" / "run" / "redis" / "redis.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    ready = next(c for c in stack.status()["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["code"] == "service_down", ready


def test_an_invalid_state_file_is_spec_invalid(stack: Stack) -> None:
    document = stack.default_document("ram")
    document["backup"]["max_set_size"] = "1KiB"  # below the 64KiB floor
    stack.write(document)
    result = stack.cli("plan", check=64)
    assert error_code(result) == "spec_invalid", result.stderr
    assert "max_set_size" in result.stderr and "nothing was changed" in result.stderr
