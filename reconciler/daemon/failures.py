"""One place where the daemon reports a failure: event, metrics, status and webhook carry one code.

Design decision: the code is decided once (``plan.failures.failure_code``) and the same word goes to
every channel, so an alert on ``reconciler_failures_total{code="too_large"}``, a script reading
``events.jsonl`` and a webhook receiver never disagree. The counter counts failure *reports* (every
failed attempt, as events do), not distinct incidents; ``reconciler_last_failure{code}`` holds the
last one's code (one series) and ``lastFailure`` in status.json its code, event reason and message.
"""

from __future__ import annotations

import time
from typing import Any

from reconciler.daemon.metrics import Snapshot
from reconciler.daemon.notify import Notifier
from reconciler.engine import events, status
from reconciler.plan.failures import (
    FailureCode,
    Operation,
    failure_code,
    failure_fields,
    for_operation,
    parse,
)


class FailureReporter:
    def __init__(self, state_dir: str, snapshot: Snapshot, notifier: Notifier) -> None:
        self.state_dir = state_dir
        self.snapshot = snapshot
        self.notifier = notifier
        self.last: dict[str, Any] | None = None  # for status.json's ``lastFailure``

    def report(
        self,
        reason: str,
        message: str,
        exc: BaseException | None = None,
        operation: Operation = Operation.APPLY,
        code: FailureCode | str | None = None,
        notify: bool = True,
    ) -> FailureCode:
        """Emit the Warning event ``reason`` with its code (and the error's figures), count it, remember
        it for the status file, and ping the webhook's ``/fail`` unless ``notify`` is False."""
        fields: dict[str, Any] = failure_fields(exc, operation) if exc is not None else {}
        chosen = parse(code) or (
            failure_code(exc, operation) if exc is not None else for_operation(operation)
        )
        fields["code"] = chosen.value
        events.emit(self.state_dir, "Warning", reason, message, **fields)
        self.count(chosen)
        self.last = {"code": chosen.value, "reason": reason, "message": message, "time": status.now_iso()}
        if notify:
            self.notifier.fail(message, chosen.value)
        return chosen

    def count(self, code: FailureCode) -> None:
        self.snapshot.add_labelled(
            "reconciler_failures_total", {"code": code.value}, 1, "Failures reported, by failure code."
        )
        self.snapshot.set_labelled(
            "reconciler_last_failure", {"code": code.value}, 1, "The code of the last failure reported."
        )
        self.snapshot.set(
            "reconciler_last_failure_timestamp_seconds", time.time(), "When the last failure was reported."
        )
