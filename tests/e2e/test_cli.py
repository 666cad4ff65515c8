"""Whole scenarios through the command line, as a user runs them."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.conftest import ROOT, Stack

pytestmark = pytest.mark.e2e


def _example_in(stack: Stack) -> None:
    """The repository's own state.yaml, moved to private ports and a private RAM root."""
    yaml = YAML()
    document = yaml.load((ROOT / "state.yaml").read_text())
    document["stack"] = "e2e" + stack.dir.name[:6]
    document["ram"]["path"] = str(stack.ram_root)
    document["services"]["postgres"]["port"] = stack.pg_port
    document["services"]["redis"]["port"] = stack.redis_port
    with stack.state_file.open("w") as handle:
        yaml.dump(document, handle)


def test_readme_flow_with_the_example_state_file(stack: Stack) -> None:
    _example_in(stack)
    stack.cli("validate")
    stack.cli("apply")
    status = stack.status()
    assert all(s["running"] and s["on_tmpfs"] for s in status["services"].values())
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["reason"] == "InSync"
    text = stack.cli("status").stdout
    assert "running" in text and "tmpfs" in text
    assert "No changes" in stack.cli("plan", check=0).stdout

    postmaster = stack.ram_root / "postgres" / "postmaster.pid"
    os.kill(int(postmaster.read_text().split()[0]), signal.SIGKILL)
    assert "start postgres" in stack.cli("plan", check=2).stdout
    stack.cli("apply")
    stack.cli("plan", check=0)


def test_plan_json_is_machine_readable(stack: Stack) -> None:
    _example_in(stack)
    document = json.loads(stack.cli("plan", "-o", "json", check=2).stdout)
    assert document["in_sync"] is False
    assert [a["marker"] for a in document["actions"]] == ["+"] * 6
    assert document["counts"] == {"+": 6, "~": 0, "-": 0}
    assert json.loads(stack.cli("apply", "--dry-run", "-o", "json", check=2).stdout) == document


BROKEN = {
    "bad indentation": ("version: 1\nstack: x\n  mode: ram\n", [":3:7: (syntax)"]),
    "unknown key": (
        "version: 1\nstack: x\nmode: ram\nservices:\n  redis: {disk_dir: ./r, prot: 1}\n",
        [":5:26: services.redis.prot: unknown key 'prot' (did you mean 'port'?)"],
    ),
    "wrong type": (
        "version: 1\nstack: x\nmode: ram\nservices:\n  redis:\n    disk_dir: ./r\n    port: [1]\n",
        [":7:11: services.redis.port: Input should be a valid integer"],
    ),
    "inline password and more": (
        "version: 1\nstack: x\nmode: sideways\nservices:\n  postgres:\n    database: d\n    user: u\n"
        "    disk_dir: ./p\n    password: correct-horse\nram:\n  tmpfs_size: lots\n",
        [
            ":3:7: mode: must be one of 'ram' or 'disk'",
            ":9:5: services.postgres.password: inline secret 'password'",
            ":11:15: ram.tmpfs_size:",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_state_file_exits_64_reports_every_error_and_changes_nothing(stack: Stack, case: str) -> None:
    text, expected = BROKEN[case]
    stack.state_file.write_text(text)
    for command in (["validate"], ["plan"], ["apply"]):
        result = stack.cli(*command, check=64)
        lines = [line for line in result.stderr.splitlines() if line.startswith(str(stack.state_file))]
        assert len(lines) == len(expected), result.stderr
        for line, fragment in zip(lines, expected, strict=True):
            assert fragment in line
        assert "nothing was changed" in result.stderr
        assert "correct-horse" not in result.stdout + result.stderr
    assert sorted(os.listdir(stack.dir)) == ["state.yaml"]
    assert not stack.ram_root.exists()


def test_missing_state_file_is_invalid_input(stack: Stack) -> None:
    result = stack.cli("plan", check=64)
    assert "not found" in result.stderr


def test_colour_follows_no_color_and_the_flag(stack: Stack) -> None:
    _example_in(stack)
    forced = {"FORCE_COLOR": "1", "TERM": "xterm"}
    assert "\x1b[" in stack.cli("plan", check=2, env=forced).stdout
    assert "\x1b[" not in stack.cli("plan", check=2, env={**forced, "NO_COLOR": "1"}).stdout
    assert "\x1b[" not in stack.cli("--no-color", "plan", check=2, env=forced).stdout


def _bomb() -> str:
    lines = ["version: 1", "stack: x", "mode: ram", "services: {redis: {disk_dir: ./r}}", "a0: &a0 [x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 10)]
    return "\n".join(lines) + "\n"


def _hostile(kind: str, path: Path) -> None:
    if kind == "symlink loop":
        os.symlink(path.name, path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "endless device":
        os.symlink("/dev/zero", path)
    elif kind == "50 MB file":
        path.write_text("version: 1\n" + ("#" * 1023 + "\n") * 50 * 1024)
    elif kind == "billion laughs":
        path.write_text(_bomb())


HOSTILE = {
    "symlink loop": "symbolic link loop",
    "directory": "is a directory",
    "fifo": "not a regular file",
    "endless device": "not a regular file",
    "50 MB file": ":1:1: (file): the file is larger than 64 KiB",
    "billion laughs": "expands to more than 10000 values",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_state_file_exits_64_at_once_without_a_traceback(stack: Stack, kind: str) -> None:
    """Issue 13: exit 64 with the cause, nothing changed, no traceback, within a second of CPU time
    (CPU, not wall-clock, so a loaded machine does not make it flaky; the wall-clock timeout catches hangs)."""
    _hostile(kind, stack.state_file)
    for command in ("validate", "plan", "apply"):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(
            [sys.executable, "-m", "reconciler", "-f", str(stack.state_file), command],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            env={k: v for k, v in os.environ.items() if k != "RECONCILER_STATE"},
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert result.returncode == 64, result.stderr
        assert HOSTILE[kind] in result.stderr
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
        assert cpu < 1.0, f"{command} used {cpu:.2f} s of CPU"
    assert sorted(os.listdir(stack.dir)) == ["state.yaml"]


def test_keygen_add_recipient_writes_the_key_and_edits_state_yaml_in_place(stack: Stack) -> None:
    _example_in(stack)
    original = stack.state_file.read_text()
    os.chmod(stack.state_file, 0o640)
    result = stack.cli("keygen", "--add-recipient")
    recipient = result.stdout.strip()
    assert result.stdout == recipient + "\n" and recipient.startswith("age1")  # stdout: the recipient only
    assert "Keep a copy somewhere safe" in result.stderr and "added its recipient" in result.stderr
    key = stack.dir / ".reconciler" / "backup.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert recipient in key.read_text()
    edited = stack.state_file.read_text()
    changed = [(a, b) for a, b in zip(original.splitlines(), edited.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and f"recipients: [{recipient}]" in changed[0][1], changed
    assert stack.state_file.stat().st_mode & 0o777 == 0o640
    stack.cli("validate")
    # Without --add-recipient, state.yaml is untouched and stderr says where the recipient goes.
    other = stack.cli("keygen", "--out", str(stack.dir / "second.key"))
    assert other.stdout.startswith("age1") and "--add-recipient" in other.stderr
    assert stack.state_file.read_text() == edited


def test_restore_legacy_of_a_directory_fifo_or_device_exits_64_with_the_cause(stack: Stack) -> None:
    stack.write(stack.default_document())
    fifo = stack.dir / "legacy.fifo"
    os.mkfifo(fifo)
    for path, cause in (
        (stack.dir, "is a directory"),
        (fifo, "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (stack.dir / "missing.sql.enc", "does not exist"),
    ):
        result = stack.cli(
            "restore",
            "--legacy",
            str(path),
            "--password-env",
            "LEGACY_PW",
            "--yes",
            check=64,
            env={"LEGACY_PW": "x"},
        )
        assert (
            cause in result.stderr
            and "Traceback" not in result.stderr
            and "internal error" not in result.stderr
        )


def test_status_and_events_show_the_stack_under_the_last_valid_spec_while_state_yaml_is_invalid(
    stack: Stack,
) -> None:
    stack.write(stack.default_document())
    stack.cli("apply")
    text = stack.state_file.read_text()
    stack.state_file.write_text(text.replace("mode: ram", "mode: rma"))

    result = stack.cli("status", "-o", "json")
    document = json.loads(result.stdout)
    assert document["services"]["postgres"]["running"] and document["services"]["redis"]["running"]
    assert document["mode"] == "ram" and document["specErrors"], document
    valid = next(c for c in document["conditions"] if c["type"] == "SpecValid")
    assert valid["status"] == "False" and "mode" in valid["message"]
    assert "mode" in result.stderr and "last adopted" in result.stderr
    stack.cli("events")
    stack.cli("plan", check=64)  # commands that act on the file still refuse it

    fresh = stack.dir / "other"
    fresh.mkdir()
    (fresh / "state.yaml").write_text("version: 1\nstack: [\n")
    never = subprocess.run(
        [sys.executable, "-m", "reconciler", "-f", str(fresh / "state.yaml"), "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert never.returncode == 64  # no spec was ever adopted there: only the errors to show
