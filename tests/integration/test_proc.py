"""The streaming subprocess helper: stderr drained, failures surfaced, no hang when the caller fails."""

from __future__ import annotations

import pytest

from reconciler.errors import CommandFailed
from reconciler.system import proc

pytestmark = pytest.mark.integration


def test_a_failing_child_raises_with_its_stderr() -> None:
    with (
        pytest.raises(CommandFailed, match="exited 3: boom"),
        proc.streaming(["sh", "-c", "echo boom >&2; exit 3"]),
    ):
        pass


def test_output_streams_through() -> None:
    with proc.streaming(["sh", "-c", "printf hello"], stdout=proc.PIPE) as child:
        assert child.stdout is not None
        assert child.stdout.read() == b"hello"


def test_a_child_that_stops_reading_is_judged_by_its_exit_code() -> None:
    with proc.streaming(["sh", "-c", "exit 0"], stdin=proc.PIPE) as child:
        assert child.stdin is not None
        with pytest.raises(BrokenPipeError):
            for _ in range(10_000):
                child.stdin.write(b"x" * 65536)
                child.stdin.flush()
        raise BrokenPipeError  # what a feeding loop sees: tolerated, exit code 0 decides


def test_when_the_caller_fails_a_child_reading_stdin_is_killed_not_waited_for_forever() -> None:
    with (
        pytest.raises(ValueError, match="decryption failed"),
        proc.streaming(["cat"], stdin=proc.PIPE) as child,
    ):
        assert child.stdin is not None
        child.stdin.write(b"partial")
        raise ValueError("decryption failed")
    assert child.returncode is not None
