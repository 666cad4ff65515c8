"""The status file: conditions in the Kubernetes style, written atomically after every run.

Design decision: a condition's ``lastTransitionTime`` changes only when its status flips, so a reader
can tell "failing since 3 hours" from "failing again". The file is the daemon's and apply's shared
report; ``reconciler status`` reads it and adds a live observation.

Design decision: a recorded condition is a claim about the moment it was written. ``Ready`` is what a
reader acts on, so whenever conditions are *shown* it is recomputed from a fresh observation
(``live_conditions``): a dead Redis next to "Ready=True InSync" was the status lying. When the
recorded and the observed status agree, the recorded condition stays (its reason is usually the more
specific one: "Stalled: the switch failed at verify", "Stopped by `reconciler down`"); when they
disagree, the observation wins and the condition is marked ``observed`` (its transition time is
then the time of the observation, because when the world changed is not known).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reconciler.plan.failures import FailureCode
from reconciler.system import fs

if TYPE_CHECKING:
    from reconciler.plan.observed import ObservedState
    from reconciler.plan.planner import Plan
    from reconciler.spec.model import StateSpec

HISTORY = 20


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    status: bool,
    reason: str,
    message: str,
    code: str | None = None,
) -> list[dict[str, Any]]:
    """Set one condition; ``code`` is the failure code of a failing one (docs/FAILURES.md)."""
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
            **({"code": code} if code else {}),
        }
    )
    return sorted(result, key=lambda c: str(c["type"]))


def load(path: str) -> dict[str, Any]:
    document = fs.read_json(path)
    return document if isinstance(document, dict) else {}


# type → (status, reason, message) or (status, reason, message, failure code)
Conditions = dict[str, tuple[bool, str, str] | tuple[bool, str, str, str | None]]


def update(path: str, conditions: Conditions, **fields: Any) -> dict[str, Any]:
    """Set conditions and top-level fields; everything else in the file stays as it is."""
    document = load(path)
    current = list(document.get("conditions", []))
    for kind, (status, reason, message, *code) in conditions.items():
        current = set_condition(current, kind, status, reason, message, *code)
    document.update(fields)
    document["conditions"] = current
    fs.atomic_write_json(path, document)
    return document


def record_run(path: str, run: dict[str, Any], conditions: Conditions, **fields: Any) -> None:
    history = [run, *load(path).get("history", [])][:HISTORY]
    update(path, conditions, lastRun=run, history=history, **fields)


def condition(document: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in document.get("conditions", []) if c.get("type") == kind), None)


def observed_ready(spec: StateSpec, observed: ObservedState, the_plan: Plan) -> tuple[bool, str, str]:
    """Ready as the world is now: every wanted service running, nothing but retention left to do."""
    from reconciler.plan.actions import PruneBackups, TakeBackup

    if the_plan.not_for_host is not None:
        return False, "NotForThisHost", f"not for this host: {the_plan.not_for_host}; nothing is done here"
    down = []
    for name in spec.services.configured():
        service = observed.services.get(name)
        if service is None or not service.running:
            died = service is not None and service.died
            down.append(f"{name} is not running" + (" (its process died)" if died else ""))
    if down:
        return False, "ServiceDown", "; ".join(down)
    if the_plan.blockers:
        return False, "Blocked", "; ".join(the_plan.blockers)
    # upkeep is not readiness: an owed backup is BackupFresh's to report, retention nobody's
    pending = [a.describe() for a in the_plan.actions if not isinstance(a, PruneBackups | TakeBackup)]
    if pending:
        return False, "OutOfSync", "still to do: " + "; ".join(pending)
    return True, "InSync", f"stack in {spec.mode} mode with every service running"


def live_conditions(
    conditions: list[dict[str, Any]], spec: StateSpec, observed: ObservedState, the_plan: Plan
) -> list[dict[str, Any]]:
    """The recorded conditions with ``Ready`` recomputed from ``observed`` (see the module docstring)."""
    ready, reason, message = observed_ready(spec, observed, the_plan)
    recorded = next((c for c in conditions if c.get("type") == "Ready"), None)
    if recorded is not None and recorded.get("status") == ("True" if ready else "False"):
        return conditions
    code = FailureCode.SERVICE_DOWN.value if reason == "ServiceDown" else None
    result = set_condition(conditions, "Ready", ready, reason, message, code)
    for condition in result:
        if condition["type"] == "Ready":
            condition["observed"] = True
    return result
