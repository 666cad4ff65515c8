"""Failure codes (plan/failures.py): one code per failure, a fixed vocabulary, documented once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.backup.restore import SetRejected, classified
from reconciler.daemon.failures import FailureReporter
from reconciler.daemon.metrics import Snapshot
from reconciler.daemon.notify import Notifier
from reconciler.engine import events, status
from reconciler.errors import (
    CommandFailed,
    HostFault,
    InvalidInput,
    LockHeld,
    PermanentError,
    PlanBlocked,
    ReconcilerError,
    SpecInvalid,
    TransientError,
    coded,
)
from reconciler.plan.failures import (
    STAYS_DOWN,
    TABLE,
    FailureCode,
    Operation,
    failure_code,
    failure_fields,
    for_stage,
    markdown_table,
    operation_for_command,
)
from reconciler.plan.faults import Stage
from tests.support.webhook import webhook_receiver

DOCS = Path(__file__).resolve().parents[2] / "docs" / "FAILURES.md"

# Factories: a fresh exception per example (a code attached to one must not leak into the next).
ERRORS: list[Callable[[], BaseException]] = [
    lambda: ReconcilerError("x"),
    lambda: PermanentError("x"),
    lambda: TransientError("x"),
    lambda: HostFault("x"),
    lambda: InvalidInput("x"),
    lambda: SpecInvalid([]),
    lambda: PlanBlocked(["foreign data"]),
    lambda: PlanBlocked([f"none of the sets can be restored. {STAYS_DOWN}."]),
    lambda: LockHeld("x"),
    lambda: CommandFailed(["pg_dump"], 1, "boom"),
    lambda: SetRejected("s", "bad", Stage.CHECKSUM),
    lambda: SetRejected("s", "bad", Stage.AUTHENTICATE),
    lambda: OSError(28, "No space left on device"),
    lambda: ValueError("a bug"),
]


def test_every_code_is_documented_once_and_the_docs_show_the_table() -> None:
    assert set(TABLE) == set(FailureCode)
    assert all(row.meaning and row.action for row in TABLE.values())
    assert len({code.value for code in FailureCode}) == len(FailureCode)
    assert markdown_table() in DOCS.read_text(), "docs/FAILURES.md is stale: paste markdown_table()"
    readme = (DOCS.parents[1] / "README.md").read_text()
    assert "docs/FAILURES.md" in readme


@given(st.sampled_from(ERRORS), st.sampled_from(list(Operation)))
def test_every_failure_gets_exactly_one_code_from_the_vocabulary(
    make: Callable[[], BaseException], op: Operation
) -> None:
    exc = make()
    code = failure_code(exc, op)
    assert isinstance(code, FailureCode)
    assert failure_code(exc, op) is code  # deterministic, no state
    assert failure_fields(exc, op)["code"] == code.value


@given(
    st.sampled_from(ERRORS),
    st.sampled_from(list(Operation)),
    st.sampled_from(list(FailureCode)),
    st.sampled_from(list(FailureCode)),
)
def test_the_code_a_raising_site_attached_wins(
    make: Callable[[], BaseException], op: Operation, deeper: FailureCode, outer: FailureCode
) -> None:
    exc = make()
    if isinstance(exc, SetRejected):  # carries its own code from the stage
        assert failure_code(coded(exc, outer), op) is for_stage(exc.stage)
        return
    assert failure_code(coded(exc, deeper), op) is deeper
    assert failure_code(coded(exc, outer), op) is deeper, "an outer site never replaces a deeper code"


def test_the_kind_of_error_decides_before_the_operation() -> None:
    for op in Operation:
        assert failure_code(SpecInvalid([]), op) is FailureCode.SPEC_INVALID
        assert failure_code(PlanBlocked(["x"]), op) is FailureCode.PLAN_BLOCKED
        assert failure_code(PlanBlocked(["a", f"b. {STAYS_DOWN}"]), op) is FailureCode.RESTORE_ERROR
        assert failure_code(LockHeld("x"), op) is FailureCode.BUSY
        assert failure_code(HostFault("x"), op) is FailureCode.HOST_FAULT
    assert failure_code(PermanentError("x"), Operation.BACKUP) is FailureCode.DUMP_ERROR
    assert failure_code(PermanentError("x"), Operation.UPLOAD) is FailureCode.UPLOAD_ERROR
    assert failure_code(PermanentError("x"), Operation.APPLY) is FailureCode.RECONCILE_ERROR
    assert failure_code(ValueError("x"), Operation.VERIFY) is FailureCode.VERIFY_ERROR


@pytest.mark.parametrize("stage", list(Stage))
def test_a_rejected_set_is_auth_error_for_its_authenticity_else_verify_error(stage: Stage) -> None:
    assert for_stage(stage) is (
        FailureCode.AUTH_ERROR if stage is Stage.AUTHENTICATE else FailureCode.VERIFY_ERROR
    )
    fault = classified("s", stage, "message", "pg_restore: error: not a valid archive")
    if isinstance(fault, SetRejected):
        assert failure_code(fault, Operation.RESTORE) is for_stage(stage)
    else:
        assert failure_code(fault, Operation.RESTORE) is FailureCode.HOST_FAULT


def test_cli_commands_map_to_their_operation() -> None:
    assert operation_for_command("backup") is Operation.BACKUP
    assert operation_for_command("sync") is Operation.UPLOAD
    assert operation_for_command("verify") is Operation.VERIFY
    assert operation_for_command("restore") is Operation.RESTORE
    assert operation_for_command("apply") is Operation.APPLY
    assert operation_for_command(None) is Operation.APPLY


def test_a_condition_carries_its_code_and_loses_it_when_it_recovers() -> None:
    failing = status.set_condition([], "BackupFresh", False, "Stale", "too big", "too_large")
    assert failing[0]["code"] == "too_large"
    healthy = status.set_condition(failing, "BackupFresh", True, "Fresh", "ok")
    assert "code" not in healthy[0]


def test_the_reporter_puts_one_code_on_the_event_the_metrics_and_the_webhook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with webhook_receiver() as hook:
        monkeypatch.setenv("TEST_HOOK", hook.url("/p"))
        snapshot = Snapshot()
        reporter = FailureReporter(str(tmp_path), snapshot, Notifier("TEST_HOOK"))
        error = coded(PermanentError("set too big"), FailureCode.TOO_LARGE)
        error.facts = {"limit_bytes": 65536, "reached_bytes": 70000}
        assert reporter.report("BackupFailed", "backup failed: set too big", error, Operation.BACKUP) is (
            FailureCode.TOO_LARGE
        )
        reporter.report("BackupFailed", "again", error, Operation.BACKUP, notify=False)
        reporter.report("OffsiteSyncFailed", "drive down", PermanentError("x"), Operation.UPLOAD)
    logged = events.read(str(tmp_path))
    assert [e["code"] for e in logged] == ["too_large", "too_large", "upload_error"]
    assert logged[0]["limit_bytes"] == 65536 and logged[0]["reached_bytes"] == 70000
    text = snapshot.render()
    assert 'reconciler_failures_total{code="too_large"} 2' in text
    assert 'reconciler_failures_total{code="upload_error"} 1' in text
    assert 'reconciler_last_failure{code="upload_error"} 1' in text
    assert 'reconciler_last_failure{code="too_large"}' not in text
    assert hook.pings == [
        ("/p/fail", "[too_large] backup failed: set too big", "too_large"),
        ("/p/fail", "[upload_error] drive down", "upload_error"),
    ]
    assert reporter.last is not None and reporter.last["code"] == "upload_error"
    assert json.dumps(reporter.last)
