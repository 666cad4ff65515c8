"""The status file: conditions in the Kubernetes style, written atomically after every run.

Design decision: a condition's ``lastTransitionTime`` changes only when its status flips, so a reader
can tell "failing since 3 hours" from "failing again". The file is the daemon's and apply's shared
report; ``reconciler status`` reads it and adds a live observation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.system import fs

HISTORY = 20


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def set_condition(
    conditions: list[dict[str, Any]], kind: str, status: bool, reason: str, message: str
) -> list[dict[str, Any]]:
    result = [c for c in conditions if c.get("type") != kind]
    previous = next((c for c in conditions if c.get("type") == kind), None)
    value = "True" if status else "False"
    changed = previous is None or previous.get("status") != value
    result.append(
        {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_iso() if changed else previous.get("lastTransitionTime"),  # type: ignore[union-attr]
        }
    )
    return sorted(result, key=lambda c: str(c["type"]))


def load(path: str) -> dict[str, Any]:
    document = fs.read_json(path)
    return document if isinstance(document, dict) else {}


Conditions = dict[str, tuple[bool, str, str]]


def update(path: str, conditions: Conditions, **fields: Any) -> dict[str, Any]:
    """Set conditions and top-level fields; everything else in the file stays as it is."""
    document = load(path)
    current = list(document.get("conditions", []))
    for kind, (status, reason, message) in conditions.items():
        current = set_condition(current, kind, status, reason, message)
    document.update(fields)
    document["conditions"] = current
    fs.atomic_write_json(path, document)
    return document


def record_run(path: str, run: dict[str, Any], conditions: Conditions, **fields: Any) -> None:
    history = [run, *load(path).get("history", [])][:HISTORY]
    update(path, conditions, lastRun=run, history=history, **fields)


def condition(document: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in document.get("conditions", []) if c.get("type") == kind), None)
